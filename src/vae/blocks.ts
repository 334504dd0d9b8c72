/**
 * The building blocks of SD's autoencoder (LDM `ldm/modules/diffusionmodules/model.py`), on NHWC
 * tensors, with LDM's parameter names.
 */
import * as tf from "@tensorflow/tfjs";
import { Module, type ModuleOptions, type Param, zerosInit } from "../nn/module";
import { Conv2d, GroupNorm, silu } from "../nn/layers";

/** Normalisation settings shared by every block of one autoencoder. */
export interface NormConfig {
  /** GroupNorm groups (32 in SD). */
  groups: number;
  /** GroupNorm epsilon (1e-6 in the VAE). */
  eps: number;
}

/**
 * Residual block without time embedding:
 *   h = conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))
 *   out = shortcut(x) + h, where shortcut is `nin_shortcut` (1×1 conv) when the width changes.
 * (LDM's dropout is 0 at inference and in SD's config; it is not modelled.)
 */
export class ResnetBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly nin_shortcut: Conv2d | undefined;
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    norm: NormConfig,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    const o = this.childOptions;
    this.norm1 = this.child("norm1", new GroupNorm(norm.groups, inChannels, norm.eps, o));
    this.conv1 = this.child("conv1", new Conv2d(inChannels, outChannels, 3, 1, 1, o));
    this.norm2 = this.child("norm2", new GroupNorm(norm.groups, outChannels, norm.eps, o));
    this.conv2 = this.child("conv2", new Conv2d(outChannels, outChannels, 3, 1, 1, o));
    this.nin_shortcut =
      inChannels !== outChannels ? this.child("nin_shortcut", new Conv2d(inChannels, outChannels, 1, 1, 0, o)) : undefined;
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    let h = this.conv1.apply(silu(this.norm1.apply(x)) as tf.Tensor4D);
    h = this.conv2.apply(silu(this.norm2.apply(h)) as tf.Tensor4D);
    const skip = this.nin_shortcut ? this.nin_shortcut.apply(x) : x;
    return tf.add(skip, h);
  }
}

/**
 * Single-head self-attention over all H·W positions (the VAE's mid block):
 *   h = norm(x);  q, k, v = W_q h, W_k h, W_v h  (per-pixel projections)
 *   out = x + W_o · softmax(q kᵀ / √C) v
 * LDM stores q/k/v/proj_out as 1×1 convolutions `[C, C, 1, 1]`; they are held here as `[C, C]`
 * matrices over the channel axis (`conv1x1-as-linear`), which computes the same thing.
 */
export class AttnBlock extends Module {
  readonly norm: GroupNorm;
  readonly q: Conv1x1;
  readonly k: Conv1x1;
  readonly v: Conv1x1;
  readonly proj_out: Conv1x1;
  constructor(
    readonly channels: number,
    norm: NormConfig,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    const o = this.childOptions;
    this.norm = this.child("norm", new GroupNorm(norm.groups, channels, norm.eps, o));
    this.q = this.child("q", new Conv1x1(channels, channels, o));
    this.k = this.child("k", new Conv1x1(channels, channels, o));
    this.v = this.child("v", new Conv1x1(channels, channels, o));
    this.proj_out = this.child("proj_out", new Conv1x1(channels, channels, o));
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    const [b, hh, ww, c] = x.shape;
    const h = this.norm.apply(x).reshape([b, hh * ww, c]);
    const q = this.q.apply(h) as tf.Tensor3D;
    const k = this.k.apply(h) as tf.Tensor3D;
    const v = this.v.apply(h) as tf.Tensor3D;
    const weights = tf.softmax(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(c)), -1); // [B, HW, HW]
    const attended = tf.matMul(weights, v);
    return tf.add(x, this.proj_out.apply(attended).reshape([b, hh, ww, c]));
  }
}

/**
 * A 1×1 convolution stored as a channel matrix: PyTorch `[out, in, 1, 1]` ↔ tfjs `[in, out]`.
 * Works on any `[..., in]` tensor (pixels or flattened positions).
 */
export class Conv1x1 extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.weight = this.param("weight", [outChannels, inChannels, 1, 1], "conv1x1-as-linear");
    this.bias = this.param("bias", [outChannels], "plain", zerosInit);
  }

  apply(x: tf.Tensor): tf.Tensor {
    const flat = x.reshape([-1, this.inChannels]) as tf.Tensor2D;
    const y = tf.add(tf.matMul(flat, this.weight.value as tf.Tensor2D), this.bias.value);
    return y.reshape([...x.shape.slice(0, -1), this.outChannels]);
  }
}
