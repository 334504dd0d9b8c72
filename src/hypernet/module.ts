/**
 * One hypernetwork MLP: the residual block that rewrites an attention layer's context.
 *
 *     out = x + mlp(x) · m        (m = the multiplier; forced to 1 while training)
 *
 * `mlp` is a stack of Linear layers whose widths are `dim × layer_structure[i]` (truncated to
 * integers), each optionally followed by the activation, a LayerNorm and a Dropout — in exactly
 * the order AUTOMATIC1111 appends them to its `torch.nn.Sequential` (spec §1.3). Because that
 * Sequential numbers every child, activations and dropouts included, the parameter paths here
 * (`linear.0.weight`, `linear.2.bias`, …) are the keys in an A1111 file.
 *
 * A fresh network starts with the residual branch near zero (weights ~ N(0, 0.01²) by default), so
 * attaching it barely changes the model until it is trained.
 */
import * as tf from "@tensorflow/tfjs";
import { Linear, LayerNorm } from "../nn/layers";
import { Module, type Param, type Initializer, zerosInit } from "../nn/module";
import { type ActivationName, applyActivation, insertsModule } from "./activations";
import { isFrozenPath, isResidual, planResBlocks, ResBlock, type ResBlockInit, type ResBlockPlan } from "./resblock";

/** The five weight initialisations A1111 offers (spec §1.9). */
export const WEIGHT_INITS = ["Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal"] as const;
export type WeightInit = (typeof WEIGHT_INITS)[number];

/** The structural options that decide a module's layers (and therefore its key layout). */
export interface ModuleStructure {
  layerStructure: readonly number[];
  activation: ActivationName;
  layerNorm: boolean;
  /** Effective dropout probabilities, one per layer_structure entry (entry 0 unused). */
  dropoutStructure: readonly number[];
  activateOutput: boolean;
  /** MonkeyPatch "beta" network: residual blocks instead of one MLP (resblock.ts). */
  skipConnection?: boolean;
  /** With `skipConnection`: "Linear" puts a frozen bias-free Linear on each block's skip path. */
  upsampleLinear?: string | null;
}

/** One child of A1111's Sequential, with its index. */
export type LayerPlan =
  | { index: number; kind: "linear"; inFeatures: number; outFeatures: number }
  | { index: number; kind: "activation"; name: ActivationName }
  | { index: number; kind: "layernorm"; features: number }
  | { index: number; kind: "dropout"; p: number };

/**
 * The Sequential children A1111 builds for one module of width `dim` (spec §1.3): for each
 * Linear i, then the activation (not after the last Linear unless `activateOutput`), then a
 * LayerNorm if enabled, then Dropout if `dropoutStructure[i+1] > 0`. (A residual-block structure
 * has its own plan: `planResBlocks` in resblock.ts.)
 */
export function planLayers(dim: number, s: ModuleStructure): LayerPlan[] {
  if (isResidual(s)) throw new Error("planLayers: a skip_connection (residual-block) structure is planned by planResBlocks");
  const ls = s.layerStructure;
  const n = ls.length;
  if (n < 2) throw new Error(`layer_structure needs at least 2 entries, got [${ls.join(", ")}]`);
  if (ls[0] !== 1 || ls[n - 1] !== 1) throw new Error(`layer_structure must start and end with 1, got [${ls.join(", ")}]`);
  if (s.dropoutStructure.length < n) {
    throw new Error(`dropout_structure [${s.dropoutStructure.join(", ")}] is shorter than layer_structure [${ls.join(", ")}]`);
  }
  const plan: LayerPlan[] = [];
  let idx = 0;
  for (let i = 0; i < n - 1; i++) {
    const inF = Math.trunc(dim * ls[i]!);
    const outF = Math.trunc(dim * ls[i + 1]!);
    if (inF < 1 || outF < 1) throw new Error(`layer_structure [${ls.join(", ")}] gives a zero-width layer for dim ${dim}`);
    plan.push({ index: idx++, kind: "linear", inFeatures: inF, outFeatures: outF });
    const last = i >= n - 2;
    if (insertsModule(s.activation) && (!last || s.activateOutput)) plan.push({ index: idx++, kind: "activation", name: s.activation });
    if (s.layerNorm) plan.push({ index: idx++, kind: "layernorm", features: outF });
    const p = s.dropoutStructure[i + 1]!;
    if (p > 0) {
      if (!(p < 1)) throw new Error(`dropout probability ${p} in dropout_structure must be between 0 and 1`);
      plan.push({ index: idx++, kind: "dropout", p });
    }
  }
  return plan;
}

/** PyTorch's PReLU with one shared slope (default 0.25): `max(0,x) + a·min(0,x)`. */
export class PReLU extends Module {
  readonly weight: Param;
  constructor(trainable: boolean) {
    super({ trainable });
    this.weight = this.param("weight", [1], "plain", (s) => tf.fill(s, 0.25));
  }
  apply(x: tf.Tensor): tf.Tensor {
    return tf.add(tf.relu(x), tf.mul(this.weight.value, tf.minimum(x, 0)));
  }
}

/** The Sequential itself: children at A1111's indices; parameter-free children are kept in the plan only. */
class Sequential extends Module {
  constructor(entries: Array<[number, Module]>, trainable: boolean) {
    super({ trainable });
    for (const [i, m] of entries) this.child(String(i), m);
  }
}

/** Options for running a module. */
export interface ForwardOptions {
  /**
   * Strength of the residual branch at inference (ignored, i.e. 1, while training): one number, or
   * one per batch sample (the first axis of the input) when samples differ (a timestep ramp).
   */
  multiplier?: number | readonly number[];
  /** Training mode: dropout and rrelu are random; the multiplier is forced to 1. */
  training?: boolean;
  /** Seed for this call's dropout masks (training only); each layer derives its own from it. */
  seed?: number;
}

/** MonkeyPatch's extra initialisation option (the A1111 value is its default). */
export interface InitOptions {
  /**
   * Standard deviation of the "Normal" scheme's Linear weights and of every LayerNorm weight (default
   * 0.01, A1111's fixed value). MonkeyPatch's "Standard Deviation for Normal weight initialization":
   * like there, it also sets the LayerNorm weights under the other schemes, which A1111 draws from
   * the Normal branch whatever the scheme.
   */
  normalStd?: number;
}

/** Initialiser factory for A1111's schemes (spec §1.9); `seed` makes creation reproducible. */
export function weightInitializer(scheme: WeightInit, seed: number, opts: InitOptions = {}): ResBlockInit {
  const std = opts.normalStd ?? 0.01;
  if (!Number.isFinite(std) || std < 0) throw new Error(`normalStd must be a finite number ≥ 0, got ${std}`);
  let s = seed;
  const next = (): number => s++;
  // Kaiming: A1111 passes nonlinearity 'leaky_relu' for leakyrelu and 'relu' otherwise; with the
  // default a = 0 both give gain √2, so the activation does not change the distribution.
  const gain = Math.SQRT2;
  const linear: Initializer = (tfShape, torchShape) => {
    const fanOut = torchShape[0]!;
    const fanIn = torchShape[1]!;
    switch (scheme) {
      case "Normal":
        return tf.randomNormal(tfShape, 0, std, "float32", next());
      case "XavierUniform": {
        const b = Math.sqrt(6 / (fanIn + fanOut));
        return tf.randomUniform(tfShape, -b, b, "float32", next());
      }
      case "XavierNormal":
        return tf.randomNormal(tfShape, 0, Math.sqrt(2 / (fanIn + fanOut)), "float32", next());
      case "KaimingUniform": {
        const b = gain * Math.sqrt(3 / fanIn);
        return tf.randomUniform(tfShape, -b, b, "float32", next());
      }
      case "KaimingNormal":
        return tf.randomNormal(tfShape, 0, gain / Math.sqrt(fanIn), "float32", next());
    }
  };
  // A1111 sends LayerNorm through the "Normal" branch whatever the scheme: weight N(0, 0.01²).
  const layerNorm: Initializer = (tfShape) => tf.randomNormal(tfShape, 0, std, "float32", next());
  // MonkeyPatch's upsample layers keep PyTorch's default Linear init: U(±1/√fan_in).
  const upsample: Initializer = (tfShape, torchShape) => {
    const b = 1 / Math.sqrt(torchShape[1]!);
    return tf.randomUniform(tfShape, -b, b, "float32", next());
  };
  return { linear, layerNorm, upsample };
}

/**
 * Activations with f(0) = 0 (a module whose output layer is zeroed and then activated still gives
 * 0). Kept as a list rather than computed, so creating a network needs no read-back (WebGPU in Node).
 */
export const ZERO_AT_ZERO: ReadonlySet<ActivationName> = new Set<ActivationName>([
  "linear",
  "relu",
  "leakyrelu",
  "elu",
  "swish",
  "tanh",
  "rrelu",
  "hardtanh",
  "relu6",
  "silu",
  "mish",
  "hardswish",
  "celu",
  "selu",
  "gelu",
  "hardshrink",
  "softshrink",
  "prelu",
  "softsign",
  "tanhshrink",
]);

/** One residual MLP (the k or the v module of one dim). */
export class HypernetworkModule extends Module {
  /** The Sequential's children (empty for a residual-block module, whose plan is `blocks`). */
  readonly plan: LayerPlan[];
  private readonly layers: Array<{ plan: LayerPlan; module?: Linear | LayerNorm | PReLU }> = [];
  /** The residual blocks of a MonkeyPatch beta module (empty otherwise). */
  private readonly blocks: ResBlock[] = [];

  /**
   * Build the module for context width `dim`. With `init` the weights are drawn by A1111's scheme
   * (a new network); without it they are zeros, to be loaded from a file.
   */
  constructor(
    readonly dim: number,
    readonly structure: ModuleStructure,
    opts: { trainable?: boolean; init?: { linear: Initializer; layerNorm: Initializer; upsample?: Initializer } } = {},
  ) {
    super({ trainable: opts.trainable ?? true });
    const entries: Array<[number, Module]> = [];
    if (isResidual(structure)) {
      this.plan = [];
      const init = opts.init && { ...opts.init, upsample: opts.init.upsample ?? zerosInit };
      for (const b of planResBlocks(dim, structure)) {
        const block = new ResBlock(b, { trainable: this.trainable, init, prelu: (t) => new PReLU(t) });
        this.blocks.push(block);
        entries.push([b.index, block]);
      }
      this.child("linear", new Sequential(entries, this.trainable));
      return;
    }
    this.plan = planLayers(dim, structure);
    for (const p of this.plan) {
      let m: Linear | LayerNorm | PReLU | undefined;
      if (p.kind === "linear") {
        m = new Linear(p.inFeatures, p.outFeatures, { trainable: this.trainable, init: opts.init?.linear ?? zerosInit });
      } else if (p.kind === "layernorm") {
        m = new LayerNorm(p.features, 1e-5, { trainable: this.trainable });
        if (opts.init) {
          const w = opts.init.layerNorm([p.features], [p.features]);
          m.weight.value.assign(w);
          w.dispose();
        }
      } else if (p.kind === "activation" && p.name === "prelu") {
        m = new PReLU(this.trainable);
      }
      if (m) entries.push([p.index, m]);
      this.layers.push(m ? { plan: p, module: m } : { plan: p });
    }
    this.child("linear", new Sequential(entries, this.trainable));
  }

  /**
   * Zero the last Linear's weight and bias, so that the branch gives exactly 0 and the module starts
   * as the identity (`out = x` at any multiplier). Refused when an output activation would turn
   * those zeros into a constant other than 0 (sigmoid, softplus, … with `activateOutput` and no
   * LayerNorm after it), since the module would then not start as the identity.
   */
  zeroLastLayer(): void {
    if (this.blocks.length)
      throw new Error(
        "zeroLastLayer: a skip_connection (residual-block) network is not the identity with a zero last layer (each block's skip path and activation remain); create it without zeroLastLayer",
      );
    let lastLinear = -1;
    this.layers.forEach((l, i) => {
      if (l.plan.kind === "linear") lastLinear = i;
    });
    const tail = this.layers.slice(lastLinear + 1).map((l) => l.plan);
    const act = tail.find((p) => p.kind === "activation");
    const normed = tail.some((p) => p.kind === "layernorm");
    if (act && act.kind === "activation" && !normed && !ZERO_AT_ZERO.has(act.name)) {
      throw new Error(
        `zeroLastLayer: the output activation ${act.name} is not 0 at 0, so zeroing the last layer would not make the network start as the identity; turn off activateOutput, add layer norm, or use an activation with f(0) = 0`,
      );
    }
    const lin = this.layers[lastLinear]!.module as Linear;
    tf.tidy(() => {
      for (const p of [lin.weight, lin.bias]) if (p) p.value.assign(tf.zerosLike(p.value));
    });
  }

  /** The residual blocks' plans of a MonkeyPatch beta module (empty for an A1111 module, whose plan is `plan`). */
  get blockPlans(): ResBlockPlan[] {
    return this.blocks.map((b) => b.plan);
  }

  /** The parameters the optimizer updates (A1111's and MonkeyPatch's `trainables()`): all but upsample layers. */
  trainedParameters(): Array<[string, Param]> {
    return this.namedParameters().filter(([n]) => !isFrozenPath(n));
  }

  /** `mlp(x)`: the residual branch alone (`f(x) − x` for a residual-block module). */
  branch(x: tf.Tensor, opts: ForwardOptions = {}): tf.Tensor {
    const training = opts.training ?? false;
    if (this.blocks.length) return tf.tidy(() => tf.sub(this.chain(x, opts), x));
    let h = x;
    for (const { plan, module } of this.layers) {
      switch (plan.kind) {
        case "linear":
        case "layernorm":
          h = (module as Linear | LayerNorm).apply(h);
          break;
        case "activation":
          h =
            plan.name === "prelu" ? (module as PReLU).apply(h) : applyActivation(plan.name, h, training, layerSeed(opts.seed, plan.index));
          break;
        case "dropout":
          if (training) h = tf.dropout(h, plan.p, undefined, layerSeed(opts.seed, plan.index));
          break;
      }
    }
    return h;
  }

  /** A residual-block module's chain `f(x)` (MonkeyPatch's training output). */
  private chain(x: tf.Tensor, opts: ForwardOptions): tf.Tensor {
    let h = x;
    for (const b of this.blocks) h = b.apply(h, opts.training ?? false, layerSeed(opts.seed, b.plan.index));
    return h;
  }

  /**
   * `x + mlp(x) · m`, with m = 1 while training (A1111's rule). A residual-block module gives
   * `x + m · (f(x) − x)`, and `f(x)` itself while training, as MonkeyPatch computes it.
   */
  forward(x: tf.Tensor, opts: ForwardOptions = {}): tf.Tensor {
    if (this.blocks.length && opts.training) return tf.tidy(() => this.chain(x, opts));
    return tf.tidy(() => {
      const m = opts.training ? 1 : (opts.multiplier ?? 1);
      if (typeof m === "number") return tf.add(x, tf.mul(this.branch(x, opts), m));
      if (m.length !== x.shape[0])
        throw new Error(`hypernetwork module (width ${this.dim}): ${m.length} per-sample multipliers for a batch of ${x.shape[0]}`);
      const perSample = tf.tensor(m as number[], [m.length, ...x.shape.slice(1).map(() => 1)], "float32");
      return tf.add(x, tf.mul(this.branch(x, opts), perSample));
    });
  }
}

function layerSeed(seed: number | undefined, index: number): number | undefined {
  return seed === undefined ? undefined : seed * 1000 + index;
}
