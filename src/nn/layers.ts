/**
 * The layers every model here is built from, each a `Module` whose parameter names are PyTorch's
 * (`weight`, `bias`), so a tree of them has checkpoint keys for paths. All take NHWC (images) or
 * `[..., features]` (sequences) tensors and return new tensors; callers own `tidy`.
 */
import * as tf from "@tensorflow/tfjs";
import { Module, type ModuleOptions, type Param, zerosInit } from "./module";
import { fusedGroupNorm, fusedKernelsActive, recordingGradients } from "../backend/webgpu-fused";

/** `y = x W + b` over the last axis; PyTorch weight `[out, in]`, stored here as `[in, out]`. */
export class Linear extends Module {
  readonly weight: Param;
  readonly bias: Param | undefined;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: ModuleOptions & { bias?: boolean } = {},
  ) {
    super(opts);
    this.weight = this.param("weight", [outFeatures, inFeatures], "linear");
    this.bias = opts.bias === false ? undefined : this.param("bias", [outFeatures], "plain", zerosInit);
  }

  apply(x: tf.Tensor): tf.Tensor {
    const shape = x.shape;
    const flat = shape.length === 2 ? (x as tf.Tensor2D) : x.reshape([-1, this.inFeatures]);
    let y: tf.Tensor;
    // On webgpu the bias add rides in the matmul's epilogue (one dispatch instead of two) when no
    // gradient is recorded: tfjs's fused ops always compute every gradient, frozen weights' too.
    if (this.bias && fusedKernelsActive() && !recordingGradients())
      y = tf.fused.matMul({ a: flat as tf.Tensor2D, b: this.weight.value as tf.Tensor2D, bias: this.bias.value });
    else {
      y = tf.matMul(flat as tf.Tensor2D, this.weight.value as tf.Tensor2D);
      if (this.bias) y = tf.add(y, this.bias.value);
    }
    return shape.length === 2 ? y : y.reshape([...shape.slice(0, -1), this.outFeatures]);
  }
}

/**
 * 2-D convolution on NHWC input with PyTorch's symmetric zero padding. tfjs's `same` padding is
 * asymmetric for stride 2 (it pads only bottom/right), so padding is done explicitly here and the
 * convolution itself is `valid` — exactly what `nn.Conv2d(padding=p)` computes.
 */
export class Conv2d extends Module {
  readonly weight: Param;
  readonly bias: Param | undefined;
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    readonly stride = 1,
    readonly padding = 0,
    opts: ModuleOptions & { bias?: boolean } = {},
  ) {
    super(opts);
    this.weight = this.param("weight", [outChannels, inChannels, kernelSize, kernelSize], "conv");
    this.bias = opts.bias === false ? undefined : this.param("bias", [outChannels], "plain", zerosInit);
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    const p = this.padding;
    let inp = x;
    let pad: "valid" | "same" = "valid";
    if (p > 0) {
      // For stride 1 and "half" padding, tfjs `same` is symmetric and saves a pad copy.
      if (this.stride === 1 && 2 * p === this.kernelSize - 1) pad = "same";
      else
        inp = tf.pad(x, [
          [0, 0],
          [p, p],
          [p, p],
          [0, 0],
        ]);
    }
    if (this.bias && fusedKernelsActive() && !recordingGradients())
      return tf.fused.conv2d({ x: inp, filter: this.weight.value as tf.Tensor4D, strides: this.stride, pad, bias: this.bias.value });
    let y = tf.conv2d(inp, this.weight.value as tf.Tensor4D, this.stride, pad);
    if (this.bias) y = tf.add(y, this.bias.value);
    return y;
  }
}

/**
 * Group normalisation over NHWC: channels split into `numGroups` groups, each normalised by its
 * mean and variance over (H, W, channels-in-group), then scaled and shifted per channel.
 */
export class GroupNorm extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(
    readonly numGroups: number,
    readonly numChannels: number,
    readonly eps = 1e-5,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    if (numChannels % numGroups !== 0) throw new Error(`GroupNorm: ${numChannels} channels do not split into ${numGroups} groups`);
    this.weight = this.param("weight", [numChannels], "plain", (s) => tf.ones(s));
    this.bias = this.param("bias", [numChannels], "plain", zerosInit);
  }

  /** Works on NHWC images `[B, H, W, C]` and on sequences `[B, T, C]`. */
  apply(x: tf.Tensor): tf.Tensor {
    const shape = x.shape;
    const b = shape[0]!;
    const c = shape[shape.length - 1]!;
    const g = this.numGroups;
    if (fusedKernelsActive())
      return fusedGroupNorm(x.reshape([b, -1, c]), this.weight.value, this.bias.value, g, this.eps, false).reshape(shape);
    const grouped = x.reshape([b, -1, g, c / g]);
    const { mean, variance } = tf.moments(grouped, [1, 3], true);
    const normed = tf.div(tf.sub(grouped, mean), tf.sqrt(tf.add(variance, this.eps))).reshape(shape);
    return tf.add(tf.mul(normed, this.weight.value), this.bias.value);
  }

  /** `silu(apply(x))`, in one fused kernel on webgpu (the UNet's and the VAE's norm → SiLU pairs). */
  applySilu(x: tf.Tensor): tf.Tensor {
    if (!fusedKernelsActive()) return silu(this.apply(x));
    const c = x.shape[x.shape.length - 1]!;
    return fusedGroupNorm(x.reshape([x.shape[0]!, -1, c]), this.weight.value, this.bias.value, this.numGroups, this.eps, true).reshape(
      x.shape,
    );
  }
}

/** Layer normalisation over the last axis, with learned scale and shift. */
export class LayerNorm extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.weight = this.param("weight", [dim], "plain", (s) => tf.ones(s));
    this.bias = this.param("bias", [dim], "plain", zerosInit);
  }

  apply(x: tf.Tensor): tf.Tensor {
    return layerNorm(x, this.weight.value, this.bias.value, this.eps);
  }
}

/** `(x - mean) / sqrt(var + eps) * weight + bias` over the last axis. */
export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  if (fusedKernelsActive())
    return fusedGroupNorm(x.reshape([-1, 1, x.shape[x.shape.length - 1]!]), weight, bias, 1, eps, false).reshape(x.shape);
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, eps))), weight), bias);
}

/** A list of modules named "0", "1", … (PyTorch `nn.Sequential` / `nn.ModuleList` paths). */
export class ModuleList<M extends Module = Module> extends Module {
  readonly items: M[] = [];
  constructor(items: M[] = []) {
    super();
    for (const m of items) this.push(m);
  }
  push(m: M): M {
    this.child(String(this.items.length), m);
    this.items.push(m);
    return m;
  }
  get length(): number {
    return this.items.length;
  }
  at(i: number): M {
    const m = this.items[i];
    if (!m) throw new Error(`ModuleList: no item ${i}`);
    return m;
  }
}

/** A module list with a gap: children at explicit indices (e.g. "0" and "2" with an activation at 1). */
export class IndexedModules extends Module {
  constructor(entries: Array<[number, Module]>) {
    super();
    for (const [i, m] of entries) this.child(String(i), m);
  }
}

// ---- activations and ops shared by the models ------------------------------------------------

/** SiLU / swish: `x · σ(x)`. */
export function silu(x: tf.Tensor): tf.Tensor {
  return tf.mul(x, tf.sigmoid(x));
}

/** Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))` (PyTorch's default, used by SD's GEGLU). */
export function gelu(x: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
}

/** CLIP's quick GELU: `x · σ(1.702 x)`. */
export function quickGelu(x: tf.Tensor): tf.Tensor {
  return tf.mul(x, tf.sigmoid(tf.mul(x, 1.702)));
}

/**
 * Nearest-neighbour ×2 upsampling of NHWC images, built from two rank-4 tiles.
 * Same forward result as `resizeNearestNeighbor`, but its gradient is right on every backend
 * (the cpu backend's ResizeNearestNeighborGrad is wrong for batch > 1).
 */
export function upsampleNearest2x(x: tf.Tensor4D): tf.Tensor4D {
  const [b, h, w, c] = x.shape;
  // duplicate along W: [B,H,W,C] → [B,H,W,2C] → [B,H,2W,C]
  const wide = tf.tile(x, [1, 1, 1, 2]).reshape([b, h, w * 2, c]);
  // duplicate along H: [B,H,2W,C] → [B,H,2,2W·C]... via tile of rows
  const tall = tf.tile(wide.reshape([b, h, 1, w * 2 * c]), [1, 1, 2, 1]).reshape([b, h * 2, w * 2, c]);
  return tall as tf.Tensor4D;
}
