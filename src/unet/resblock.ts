/**
 * The UNet's residual block (LDM `ResBlock`, diffusers `ResnetBlock2D`), NHWC:
 *
 *   h   = conv3×3(SiLU(GroupNorm(x)))                       in_layers  = [norm, SiLU, conv]
 *   h   = h + Linear(SiLU(emb))   (one shift per channel)   emb_layers = [SiLU, Linear]
 *   h   = conv3×3(SiLU(GroupNorm(h)))                       out_layers = [norm, SiLU, Dropout, conv]
 *   out = skip(x) + h      skip = identity, or a 1×1 conv when the width changes
 *
 * The time embedding enters every block as a per-channel bias, which is how the network knows how
 * much noise to expect. Dropout is 0 in SD and has no weights, so it is left out; the parameter-less
 * slots keep their numbers in the paths (`in_layers.2`, `emb_layers.1`, `out_layers.3`).
 */
import * as tf from "@tensorflow/tfjs";
import { Conv2d, GroupNorm, IndexedModules, Linear, silu } from "../nn/layers";
import { Module, type ModuleOptions } from "../nn/module";

export class ResBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly embProj: Linear;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  /** 1×1 conv on the residual path, present only when `inChannels ≠ outChannels`. */
  readonly skip: Conv2d | undefined;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    embChannels: number,
    opts: ModuleOptions = {},
    groups = 32,
  ) {
    super(opts);
    const o = this.childOptions;
    this.norm1 = new GroupNorm(groups, inChannels, 1e-5, o);
    this.conv1 = new Conv2d(inChannels, outChannels, 3, 1, 1, o);
    this.child(
      "in_layers",
      new IndexedModules([
        [0, this.norm1],
        [2, this.conv1],
      ]),
    );
    this.embProj = new Linear(embChannels, outChannels, o);
    this.child("emb_layers", new IndexedModules([[1, this.embProj]]));
    this.norm2 = new GroupNorm(groups, outChannels, 1e-5, o);
    this.conv2 = new Conv2d(outChannels, outChannels, 3, 1, 1, o);
    this.child(
      "out_layers",
      new IndexedModules([
        [0, this.norm2],
        [3, this.conv2],
      ]),
    );
    this.skip = inChannels === outChannels ? undefined : this.child("skip_connection", new Conv2d(inChannels, outChannels, 1, 1, 0, o));
  }

  /** `x`: `[B, H, W, inChannels]`; `emb`: `[B, embChannels]` → `[B, H, W, outChannels]`. */
  apply(x: tf.Tensor4D, emb: tf.Tensor2D): tf.Tensor4D {
    return tf.tidy(() => {
      let h = this.conv1.apply(this.norm1.applySilu(x) as tf.Tensor4D);
      const shift = this.embProj.apply(silu(emb)).reshape([-1, 1, 1, this.outChannels]);
      h = tf.add(h, shift);
      h = this.conv2.apply(this.norm2.applySilu(h) as tf.Tensor4D);
      const residual = this.skip ? this.skip.apply(x) : x;
      return tf.add(residual, h);
    });
  }
}
