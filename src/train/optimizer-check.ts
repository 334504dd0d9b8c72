/**
 * Whether an AdamW state can be trusted before training continues from it.
 *
 * A `.optim` file whose hash matches its `.pt` was still written by someone else: it may hold
 * another optimizer's state under AdamW's keys, moments of the wrong shape, or values that make the
 * first update non-finite (a negative `exp_avg_sq` makes `√v` NaN; a NaN `step` makes the bias
 * correction NaN; a NaN `lr` scales every weight by NaN). One such step writes a checkpoint whose
 * weights are all NaN. `optimizerStateProblem` finds each of these, so the caller can start a fresh
 * AdamW instead (as A1111 does for an optimizer it does not use) and say why.
 */
import { isFloatDType, numel } from "../io/host-tensor";
import type { OptimizerState } from "./optimizer-state";

/** The first non-finite element of `data` (its index), or -1. */
function firstNonFinite(data: ArrayLike<number>): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) return i;
  return -1;
}

/** The first negative element of `data` (its index), or -1. */
function firstNegative(data: ArrayLike<number>): number {
  for (let i = 0; i < data.length; i++) if (data[i]! < 0) return i;
  return -1;
}

/** The hyper-parameters, against the ranges `torch.optim.AdamW` itself accepts. */
function hyperParameterProblem(state: OptimizerState): string | undefined {
  if (state.name !== "AdamW") return `it holds the state of ${JSON.stringify(state.name)}, not AdamW`;
  if (!Number.isFinite(state.lr) || state.lr < 0) return `its learning rate lr is ${state.lr}, not a finite number ≥ 0`;
  for (const [k, b] of state.betas.entries()) {
    if (!Number.isFinite(b) || b < 0 || b >= 1) return `beta${k + 1} is ${b}, not in [0, 1)`;
  }
  if (!Number.isFinite(state.eps) || state.eps < 0) return `eps is ${state.eps}, not a finite number ≥ 0`;
  if (!Number.isFinite(state.weightDecay) || state.weightDecay < 0) return `weight_decay is ${state.weightDecay}, not a finite number ≥ 0`;
  return undefined;
}

/**
 * What is wrong with `state` as AdamW state, in words, or undefined if nothing is: the optimizer
 * name (only "AdamW"), the hyper-parameters (finite, in PyTorch's ranges), per parameter a step
 * that is a whole number ≥ 0, float moments whose data fills their shape, every `exp_avg` and
 * `exp_avg_sq` element finite and every `exp_avg_sq` element ≥ 0. With `shapes` (PyTorch layout,
 * one per parameter), the parameter count and every moment's shape must match too.
 */
export function optimizerStateProblem(state: OptimizerState, shapes?: ReadonlyArray<readonly number[]>): string | undefined {
  const hp = hyperParameterProblem(state);
  if (hp) return hp;
  if (shapes && state.params.length !== shapes.length) {
    return `it holds ${state.params.length} parameters but the network has ${shapes.length}; it belongs to a network with another structure`;
  }
  for (const [i, p] of state.params.entries()) {
    if (!Number.isSafeInteger(p.step) || p.step < 0) return `the step of parameter ${i} is ${p.step}, not a whole number ≥ 0`;
    for (const [what, t] of [
      ["exp_avg", p.expAvg],
      ["exp_avg_sq", p.expAvgSq],
    ] as const) {
      if (!isFloatDType(t.dtype)) return `${what} of parameter ${i} has dtype ${t.dtype}, not a float type`;
      if (t.data.length !== numel(t.shape))
        return `${what} of parameter ${i} has ${t.data.length} values for shape [${t.shape.join(", ")}]`;
      const want = shapes?.[i];
      if (want && (t.shape.length !== want.length || t.shape.some((d, k) => d !== want[k]))) {
        return `${what} of parameter ${i} is [${t.shape.join(", ")}] but the parameter is [${want.join(", ")}]`;
      }
      const bad = firstNonFinite(t.data);
      if (bad >= 0) return `${what} of parameter ${i} holds ${t.data[bad]} at index ${bad}`;
    }
    const neg = firstNegative(p.expAvgSq.data);
    if (neg >= 0) return `exp_avg_sq of parameter ${i} holds ${p.expAvgSq.data[neg]} at index ${neg}; a second moment cannot be negative`;
  }
  return undefined;
}
