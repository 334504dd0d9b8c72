/**
 * Resolution changes between UNet levels, NHWC.
 *
 * Downsample: a 3×3 convolution with stride 2 and one pixel of zero padding on EVERY side
 * (PyTorch `Conv2d(c, c, 3, stride=2, padding=1)`). tfjs's `'same'` padding would pad only the
 * bottom/right for even sizes and shift every output pixel by half a pixel; `Conv2d` from
 * `nn/layers` pads explicitly, so it computes exactly what the checkpoint was trained with.
 *
 * Upsample: nearest-neighbour ×2 (every pixel becomes a 2×2 block), then a 3×3 convolution that
 * smooths the blocks.
 */
import * as tf from "@tensorflow/tfjs";
import { Conv2d, upsampleNearest2x } from "../nn/layers";
import { Module, type ModuleOptions } from "../nn/module";

/** Halve H and W (`[B, H, W, C] → [B, H/2, W/2, C]`); weights at `….op`. */
export class Downsample extends Module {
  readonly op: Conv2d;
  constructor(channels: number, opts: ModuleOptions = {}) {
    super(opts);
    this.op = this.child("op", new Conv2d(channels, channels, 3, 2, 1, this.childOptions));
  }
  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => this.op.apply(x));
  }
}

/** Double H and W (`[B, H, W, C] → [B, 2H, 2W, C]`); weights at `….conv`. */
export class Upsample extends Module {
  readonly conv: Conv2d;
  constructor(channels: number, opts: ModuleOptions = {}) {
    super(opts);
    this.conv = this.child("conv", new Conv2d(channels, channels, 3, 1, 1, this.childOptions));
  }
  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => this.conv.apply(upsampleNearest2x(x)));
  }
}
