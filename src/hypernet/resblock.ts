/**
 * MonkeyPatch "beta" networks (Hypernetwork-MonkeyPatch-Extension, files with `skip_connection:
 * True`): each k or v module is a chain of residual blocks instead of one MLP.
 *
 * Block i maps width `n_i = trunc(dim · layer_structure[i])` to `n_{i+1}`:
 *
 *     block_i(h) = skip(h) + act(dropout(norm(W_i h + b_i)))
 *     skip(h)    = U_i h                        when upsample_linear is "Linear" (bias-free, frozen)
 *                = nearest-exact resize of h    otherwise (the identity when n_i = n_{i+1})
 *
 * and the module computes, with f the whole chain (its ends have width `dim`):
 *
 *     out = x + m · (f(x) − x)        at inference (m = the multiplier)
 *     out = f(x)                      while training
 *
 * Inside a block the Sequential children are, in this order and numbered as PyTorch numbers them:
 * the Linear, the LayerNorm (if enabled), a Dropout (if its probability, `dropout_structure[i+1]`,
 * is above 0) and the activation (unless "linear") — after every block, the last one included
 * (`activate_output` plays no part). The state-dict keys are therefore
 * `linear.<i>.upsample_layer.weight` (only with "Linear"), `linear.<i>.linear.0.weight|bias`, and
 * `linear.<i>.linear.1.weight|bias` with layer norm. The extension's optimizer sees only the
 * Linear and LayerNorm weights of the blocks: the upsample layers keep their first values forever,
 * and so they do here.
 */
import * as tf from "@tensorflow/tfjs";
import { Linear, LayerNorm } from "../nn/layers";
import { type Initializer, Module, zerosInit } from "../nn/module";
import { type ActivationName, applyActivation, insertsModule } from "./activations";
import type { ModuleStructure } from "./module";

/** One child of a block's Sequential, with its index there. */
export type BlockLayer =
  | { index: number; kind: "linear" }
  | { index: number; kind: "layernorm" }
  | { index: number; kind: "dropout"; p: number }
  | { index: number; kind: "activation"; name: ActivationName };

/** One residual block of a beta module. */
export interface ResBlockPlan {
  /** Its index in the module's `linear` Sequential. */
  index: number;
  inFeatures: number;
  outFeatures: number;
  /** Whether the skip path is a bias-free Linear (`upsample_linear: "Linear"`) rather than a resize. */
  upsample: boolean;
  layers: BlockLayer[];
}

/** Whether a structure describes MonkeyPatch residual blocks. */
export function isResidual(s: ModuleStructure): boolean {
  return s.skipConnection === true;
}

/** The blocks MonkeyPatch builds for one module of width `dim` (see the module comment). */
export function planResBlocks(dim: number, s: ModuleStructure): ResBlockPlan[] {
  const ls = s.layerStructure;
  const n = ls.length;
  if (n < 2) throw new Error(`layer_structure needs at least 2 entries, got [${ls.join(", ")}]`);
  if (ls[0] !== 1 || ls[n - 1] !== 1) throw new Error(`layer_structure must start and end with 1, got [${ls.join(", ")}]`);
  if (s.dropoutStructure.length < n)
    throw new Error(`dropout_structure [${s.dropoutStructure.join(", ")}] is shorter than layer_structure [${ls.join(", ")}]`);
  const blocks: ResBlockPlan[] = [];
  for (let i = 0; i < n - 1; i++) {
    const inFeatures = Math.trunc(dim * ls[i]!);
    const outFeatures = Math.trunc(dim * ls[i + 1]!);
    if (inFeatures < 1 || outFeatures < 1) throw new Error(`layer_structure [${ls.join(", ")}] gives a zero-width layer for dim ${dim}`);
    const layers: BlockLayer[] = [{ index: 0, kind: "linear" }];
    if (s.layerNorm) layers.push({ index: layers.length, kind: "layernorm" });
    const p = s.dropoutStructure[i + 1]!;
    if (p > 0) {
      if (!(p < 1)) throw new Error(`dropout probability ${p} in dropout_structure must be between 0 and 1`);
      layers.push({ index: layers.length, kind: "dropout", p });
    }
    if (insertsModule(s.activation)) layers.push({ index: layers.length, kind: "activation", name: s.activation });
    blocks.push({ index: i, inFeatures, outFeatures, upsample: s.upsampleLinear === "Linear", layers });
  }
  return blocks;
}

/** The state-dict keys of one beta module with their PyTorch shapes, in `state_dict()` order. */
export function resBlockShapes(dim: number, s: ModuleStructure): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const b of planResBlocks(dim, s)) {
    const at = `linear.${b.index}`;
    if (b.upsample) out.set(`${at}.upsample_layer.weight`, [b.outFeatures, b.inFeatures]);
    for (const l of b.layers) {
      if (l.kind === "linear") {
        out.set(`${at}.linear.${l.index}.weight`, [b.outFeatures, b.inFeatures]);
        out.set(`${at}.linear.${l.index}.bias`, [b.outFeatures]);
      } else if (l.kind === "layernorm") {
        out.set(`${at}.linear.${l.index}.weight`, [b.outFeatures]);
        out.set(`${at}.linear.${l.index}.bias`, [b.outFeatures]);
      } else if (l.kind === "activation" && l.name === "prelu") {
        out.set(`${at}.linear.${l.index}.weight`, [1]);
      }
    }
  }
  return out;
}

/**
 * The module paths PyTorch's `state_dict()` records versions for (its `_metadata`), in its order:
 * every submodule, parameter-free ones included.
 */
export function resBlockModulePaths(dim: number, s: ModuleStructure): string[] {
  const out = ["", "linear"];
  for (const b of planResBlocks(dim, s)) {
    const at = `linear.${b.index}`;
    out.push(at);
    if (b.upsample) out.push(`${at}.upsample_layer`);
    out.push(`${at}.linear`);
    for (const l of b.layers) out.push(`${at}.linear.${l.index}`);
  }
  return out;
}

/** Whether a parameter path is one the extension never trains (an upsample layer). */
export function isFrozenPath(name: string): boolean {
  return /(^|\.)upsample_layer\./.test(name);
}

/**
 * Source index of each output position of PyTorch's 1-D `nearest-exact` resize from `inSize` to
 * `outSize` (CPU kernel: `min(floorf((j + 0.5) · scale), inSize − 1)` with `scale = (float)in / out`).
 */
export function nearestExactIndices(inSize: number, outSize: number): Int32Array {
  const scale = Math.fround(inSize / outSize);
  const idx = new Int32Array(outSize);
  for (let j = 0; j < outSize; j++) idx[j] = Math.min(Math.floor(Math.fround((j + 0.5) * scale)), inSize - 1);
  return idx;
}

/** A container whose children sit at PyTorch's Sequential indices. */
class Children extends Module {
  constructor(entries: Array<[string, Module]>, trainable: boolean) {
    super({ trainable });
    for (const [name, m] of entries) this.child(name, m);
  }
}

/** An activation module with a weight (PReLU), built by the caller. */
export type WeightedActivation = Module & { apply(x: tf.Tensor): tf.Tensor };

/** Initialisers of a new block's weights (absent: zeros, to be loaded from a file). */
export interface ResBlockInit {
  linear: Initializer;
  layerNorm: Initializer;
  /** The upsample layer's weight (PyTorch's default Linear init in the extension). */
  upsample: Initializer;
}

/** One residual block (see the module comment). */
export class ResBlock extends Module {
  private readonly upsampleLayer: Linear | undefined;
  private readonly resize: Int32Array | undefined;
  private readonly layers: Array<{ plan: BlockLayer; module?: Linear | LayerNorm | WeightedActivation }> = [];

  constructor(
    readonly plan: ResBlockPlan,
    opts: { trainable: boolean; init?: ResBlockInit; prelu: (trainable: boolean) => WeightedActivation },
  ) {
    super({ trainable: opts.trainable });
    const { inFeatures: inF, outFeatures: outF } = plan;
    if (plan.upsample) {
      // Registered first, as in the extension (its key comes first in the state dict); never trained.
      this.upsampleLayer = this.child(
        "upsample_layer",
        new Linear(inF, outF, { trainable: false, bias: false, init: opts.init?.upsample ?? zerosInit }),
      );
    } else if (inF !== outF) {
      this.resize = nearestExactIndices(inF, outF);
    }
    const entries: Array<[string, Module]> = [];
    for (const l of plan.layers) {
      let m: Linear | LayerNorm | WeightedActivation | undefined;
      if (l.kind === "linear") m = new Linear(inF, outF, { trainable: opts.trainable, init: opts.init?.linear ?? zerosInit });
      else if (l.kind === "layernorm") {
        const ln = new LayerNorm(outF, 1e-5, { trainable: opts.trainable });
        if (opts.init) {
          const w = opts.init.layerNorm([outF], [outF]);
          ln.weight.value.assign(w);
          w.dispose();
        }
        m = ln;
      } else if (l.kind === "activation" && l.name === "prelu") m = opts.prelu(opts.trainable);
      if (m) entries.push([String(l.index), m]);
      this.layers.push(m ? { plan: l, module: m } : { plan: l });
    }
    this.child("linear", new Children(entries, opts.trainable));
  }

  /** `skip(h) + act(dropout(norm(W h + b)))`; `seed` seeds this call's dropout and rrelu. */
  apply(h: tf.Tensor, training: boolean, seed: number | undefined): tf.Tensor {
    let y = h;
    for (const { plan, module } of this.layers) {
      const s = seed === undefined ? undefined : seed * 16 + plan.index;
      if (plan.kind === "linear" || plan.kind === "layernorm") y = (module as Linear | LayerNorm).apply(y);
      else if (plan.kind === "dropout") {
        if (training) y = tf.dropout(y, plan.p, undefined, s);
      } else y = module ? module.apply(y) : applyActivation(plan.name, y, training, s);
    }
    let skip: tf.Tensor = h;
    if (this.upsampleLayer) skip = this.upsampleLayer.apply(h);
    else if (this.resize) {
      const idx = this.resize;
      skip = tf.tidy(() => tf.gather(h, tf.tensor1d(idx, "int32"), h.rank - 1));
    }
    return tf.add(skip, y);
  }
}
