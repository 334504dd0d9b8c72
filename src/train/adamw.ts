/**
 * AdamW (Loshchilov & Hutter), computed exactly as PyTorch's `torch.optim.AdamW` does it
 * (single-tensor path), so a run can move between this trainer and A1111 with its `.optim` file.
 *
 * For each parameter p with gradient g, at its step count k (1, 2, …):
 *
 *     p ← p − lr·λ·p                                   decoupled weight decay (λ = 0.01)
 *     m ← β₁·m + (1 − β₁)·g                            first moment
 *     v ← β₂·v + (1 − β₂)·g²                           second moment
 *     p ← p − (lr / (1 − β₁ᵏ)) · m / (√v / √(1 − β₂ᵏ) + ε)
 *
 * The bias corrections are computed in float64 on the host (as Python does); the tensors are
 * float32. Moments live in tfjs layout next to the parameters and are converted to PyTorch layout
 * (`[out, in]` for Linear weights) only when exported for a `.optim` file.
 */
import * as tf from "@tensorflow/tfjs";
import type { OptimizerState, ParamMoments } from "./optimizer-state";
import { optimizerStateProblem } from "./optimizer-check";
import { type Param, fromTorchLayout, toTorchLayout, tfShapeOf } from "../nn/module";
import { adamwScalars, fusedAdamW, fusedAdamWActive } from "../backend/webgpu-adamw";

/** AdamW hyper-parameters; defaults are PyTorch's. */
export interface AdamWOptions {
  /** Learning rate (the schedule overrides it per step). */
  lr: number;
  /** (β₁, β₂), default (0.9, 0.999). */
  betas?: [number, number];
  /** ε added to the denominator, default 1e-8. */
  eps?: number;
  /** Decoupled weight decay λ, default 0.01. */
  weightDecay?: number;
}

/** AdamW over a fixed list of parameters; see the module comment. */
export class AdamW {
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  private readonly m: tf.Tensor[];
  private readonly v: tf.Tensor[];
  /** Steps taken per parameter (PyTorch keeps one count per parameter). */
  private readonly steps: number[];

  constructor(
    /** The parameters, in the order of their `.optim` indices (a hypernetwork's `namedParameters`). */
    readonly params: readonly Param[],
    opts: AdamWOptions,
  ) {
    this.lr = opts.lr;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    this.m = params.map((p) => tf.zerosLike(p.value));
    this.v = params.map((p) => tf.zerosLike(p.value));
    this.steps = params.map(() => 0);
  }

  /** Number of optimizer steps taken (the most of any parameter: those never given a gradient stay at 0). */
  get stepCount(): number {
    return Math.max(0, ...this.steps);
  }

  /**
   * Apply one update with `grads[i]` for `params[i]` (tfjs layout). `lr` overrides the current rate
   * for this step and becomes the current rate. The gradients are not disposed. A `null` gradient
   * skips its parameter entirely — no weight decay, no moment update, no step counted — as
   * PyTorch's AdamW skips a parameter whose `.grad` is None (e.g. a module the model never calls).
   */
  step(grads: ReadonlyArray<tf.Tensor | null>, lr = this.lr): void {
    if (grads.length !== this.params.length)
      throw new Error(`AdamW.step: got ${grads.length} gradients for ${this.params.length} parameters`);
    this.lr = lr;
    const [b1, b2] = this.betas;
    const scalars = new Map<number, tf.Tensor1D>(); // webgpu: the fused kernel's scalars, one per step count
    for (let i = 0; i < this.params.length; i++) {
      const p = this.params[i]!.value;
      const g = grads[i];
      if (g === null || g === undefined) continue;
      if (!tf.util.arraysEqual(g.shape, p.shape)) {
        tf.dispose([...scalars.values()]);
        throw new Error(`AdamW.step: gradient ${i} has shape [${g.shape}] but its parameter is [${p.shape}]`);
      }
      const k = ++this.steps[i]!;
      const bc1 = 1 - b1 ** k;
      const bc2Sqrt = Math.sqrt(1 - b2 ** k);
      const stepSize = lr / bc1;
      const o = { lr, weightDecay: this.weightDecay, beta1: b1, beta2: b2, eps: this.eps, bc2Sqrt, stepSize };
      if (fusedAdamWActive() && !scalars.has(k)) scalars.set(k, adamwScalars(o));
      const [newP, m, v] = fusedAdamWActive()
        ? fusedAdamW(p, this.m[i]!, this.v[i]!, g, scalars.get(k)!) // src/backend/webgpu-adamw.ts
        : tf.tidy(() => {
            const decayed = tf.mul(p, 1 - lr * this.weightDecay);
            const m = tf.add(tf.mul(this.m[i]!, b1), tf.mul(g, 1 - b1));
            const v = tf.add(tf.mul(this.v[i]!, b2), tf.mul(tf.mul(g, g), 1 - b2));
            const denom = tf.add(tf.div(tf.sqrt(v), bc2Sqrt), this.eps);
            return [tf.sub(decayed, tf.mul(tf.div(m, denom), stepSize)), m, v];
          });
      p.assign(newP);
      newP.dispose();
      this.m[i]!.dispose();
      this.v[i]!.dispose();
      this.m[i] = m;
      this.v[i] = v;
    }
    tf.dispose([...scalars.values()]);
  }

  /**
   * The state as a `.optim` file stores it (PyTorch layout, `optimizer_name` "AdamW").
   * Reads the moments back asynchronously, which every backend supports (WebGPU in Node has no
   * synchronous read-back).
   */
  async exportState(): Promise<OptimizerState> {
    const read = async (t: tf.Tensor, p: Param): Promise<Float32Array> => {
      const x = tf.tidy(() => toTorchLayout(t, p.layout, p.torchShape));
      const data = (await x.data()) as Float32Array;
      x.dispose();
      return data;
    };
    const params: ParamMoments[] = [];
    for (let i = 0; i < this.params.length; i++) {
      const p = this.params[i]!;
      params.push({
        step: this.steps[i]!,
        expAvg: { dtype: "F32", shape: [...p.torchShape], data: await read(this.m[i]!, p) },
        expAvgSq: { dtype: "F32", shape: [...p.torchShape], data: await read(this.v[i]!, p) },
      });
    }
    return { name: "AdamW", lr: this.lr, betas: [...this.betas], eps: this.eps, weightDecay: this.weightDecay, params };
  }

  /**
   * What keeps `state` from being continued from, in words, or undefined if it can be: the checks of
   * `optimizerStateProblem` (AdamW only, finite values, `exp_avg_sq ≥ 0`, whole-number steps) plus
   * one entry per parameter with moments of the parameter's PyTorch shape.
   */
  checkState(state: OptimizerState): string | undefined {
    return optimizerStateProblem(
      state,
      this.params.map((p) => p.torchShape),
    );
  }

  /**
   * Continue from a saved state (e.g. `readOptimizerFile(pt).state`). The state must pass
   * {@link checkState} (else this throws, naming `where`); the hyper-parameters (betas, ε, λ) stay
   * as constructed.
   */
  importState(state: OptimizerState, where = "optimizer state"): void {
    const problem = this.checkState(state);
    if (problem) throw new Error(`${where}: ${problem} — train without it`);
    const loaded = state.params.map((s, i) => {
      const p = this.params[i]!;
      const want = [...p.torchShape];
      const conv = (data: ArrayLike<number>): tf.Tensor =>
        tf.tidy(() => {
          const t = fromTorchLayout(tf.tensor(Float32Array.from(data), want, "float32"), p.layout);
          return t.reshape(tfShapeOf(want, p.layout));
        });
      return { m: conv(s.expAvg.data as ArrayLike<number>), v: conv(s.expAvgSq.data as ArrayLike<number>), step: s.step };
    });
    loaded.forEach((l, i) => {
      this.m[i]!.dispose();
      this.v[i]!.dispose();
      this.m[i] = l.m;
      this.v[i] = l.v;
      this.steps[i] = l.step;
    });
    this.lr = state.lr;
  }

  /** Free the moment tensors. */
  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
