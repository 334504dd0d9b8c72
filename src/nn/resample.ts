/**
 * Resolution changes between the levels of SD's UNet and VAE, NHWC.
 *
 * Both halve H and W with a 3×3 stride-2 convolution, but they pad differently, and the padding
 * decides which input pixels each output pixel sees, so each has its own class:
 *
 * - `DownsamplePadAllSides` (UNet, weights at `….op`): one pixel of zero padding on EVERY side,
 *   PyTorch `Conv2d(c, c, 3, stride=2, padding=1)`. tfjs's `'same'` padding would pad only the
 *   bottom/right for even sizes and shift every output pixel by half a pixel; `Conv2d` pads
 *   explicitly, so it computes exactly what the checkpoint was trained with.
 * - `DownsamplePadBottomRight` (VAE, weights at `….conv`): LDM's autoencoder pads one row at the
 *   bottom and one column at the right, then convolves with no padding.
 *
 * `Upsample` (both models, weights at `….conv`): nearest-neighbour ×2 (every pixel becomes a 2×2
 * block), then a 3×3 convolution that smooths the blocks.
 */
import * as tf from "@tensorflow/tfjs";
import { Conv2d, upsampleNearest2x } from "./layers";
import { Module, type ModuleOptions } from "./module";

/** Halve H and W (`[B, H, W, C] → [B, H/2, W/2, C]`), zero padding of one pixel all round; weights at `….op`. */
export class DownsamplePadAllSides extends Module {
  readonly op: Conv2d;
  constructor(channels: number, opts: ModuleOptions = {}) {
    super(opts);
    this.op = this.child("op", new Conv2d(channels, channels, 3, 2, 1, this.childOptions));
  }
  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => this.op.apply(x));
  }
}

/** Halve H and W, zero padding of one row at the bottom and one column at the right; weights at `….conv`. */
export class DownsamplePadBottomRight extends Module {
  readonly conv: Conv2d;
  constructor(channels: number, opts: ModuleOptions = {}) {
    super(opts);
    this.conv = this.child("conv", new Conv2d(channels, channels, 3, 2, 0, this.childOptions));
  }
  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() =>
      this.conv.apply(
        tf.pad(x, [
          [0, 0],
          [0, 1],
          [0, 1],
          [0, 0],
        ]),
      ),
    );
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
