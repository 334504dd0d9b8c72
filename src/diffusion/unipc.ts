/**
 * A1111's "UniPC" (`modules/models/diffusion/uni_pc/uni_pc.py` driven by
 * `sd_samplers_timesteps_impl.unipc`), with A1111's default options: the B(h) = h variant ("bh1"),
 * uniform continuous time ("time_uniform"), order 3, lower order on the final steps, data
 * prediction (x̂₀) without thresholding, multistep, corrector on every step but the last.
 *
 * Time is continuous, t ∈ [1/N, 1] (N = 1000), with the model called at timestep (t − 1/N)·1000
 * (fractional) on the raw x (VP space: x_t = α_t·x₀ + σ_t·ε, starting from x = z at t = 1).
 * ln α_t is piecewise linear in t through (i+1)/N ↦ ½·ln ᾱ_i, σ_t = √(1 − α_t²) and the
 * half-log-SNR λ_t = ln α_t − ln σ_t. The run visits t_k = 1 + k·(1/N − 1)/S, k = 0 … S, where S is
 * the number of A1111 timesteps (`a1111Timesteps(steps).length` — 31 for 30 steps), and calls the
 * model S times: once at t_0, then once per step as the corrector (not after the last step).
 *
 * One step from the previous points (t_prev_j, m_j = x̂₀ there) to t, of order K
 * (h = λ_t − λ_prev0, hh = −h, r_j = (λ_prev_j − λ_prev0)/h, D_j = (m_j − m_0)/r_j):
 *   x_t' = (σ_t/σ_prev0)·x − α_t·expm1(hh)·m_0
 *   predictor:  x_t = x_t' − α_t·hh·Σ ρ_p,j·D_j      (ρ_p = ½ for K = 2, else R ρ = b on K−1 rows)
 *   corrector:  m_t = x̂₀(x_t, t), x_t = x_t' − α_t·hh·(Σ ρ_c,j·D_j + ρ_c,K·(m_t − m_0))
 * with R_ij = r_j^{i−1} (r_K = 1) and b_i = h·φ_{i+1}(hh)·i!/hh from the φ recursion of the code.
 */
import * as tf from "@tensorflow/tfjs";
import { randn } from "./random";
import { type SampleOptions, type Sampler, guidedEps, prepare, report } from "./samplers";
import type { NoiseSchedule } from "./schedule";
import { a1111Timesteps } from "./timestep-samplers";

const ORDER = 3;

/** The continuous-time VP view of a discrete schedule (uni_pc.py `NoiseScheduleVP('discrete')`). */
class VpSchedule {
  readonly n: number;
  private readonly logAlpha: Float64Array;

  constructor(schedule: NoiseSchedule) {
    this.n = schedule.numTimesteps;
    // from the model's float32 ᾱ buffer, as A1111 hands it to NoiseScheduleVP
    this.logAlpha = schedule.alphasCumprod.map((a) => 0.5 * Math.log(Math.fround(a)));
  }

  /** ln α_t: linear through ((i+1)/N, ½ ln ᾱ_i), extended linearly past both ends. */
  logAlphaAt(t: number): number {
    const n = this.n;
    let i = Math.floor(t * n) - 1; // left keypoint index
    i = Math.min(Math.max(i, 0), n - 2);
    const x0 = (i + 1) / n;
    const x1 = (i + 2) / n;
    const y0 = this.logAlpha[i]!;
    const y1 = this.logAlpha[i + 1]!;
    return y0 + ((t - x0) * (y1 - y0)) / (x1 - x0);
  }
  alpha(t: number): number {
    return Math.exp(this.logAlphaAt(t));
  }
  std(t: number): number {
    return Math.sqrt(1 - Math.exp(2 * this.logAlphaAt(t)));
  }
  lambda(t: number): number {
    const la = this.logAlphaAt(t);
    return la - 0.5 * Math.log(1 - Math.exp(2 * la));
  }
}

/** Solve the small dense system A·x = b (Gaussian elimination with partial pivoting). */
function solve(a: number[][], b: number[]): number[] {
  const n = b.length;
  const m = a.map((row, i) => [...row.slice(0, n), b[i]!]);
  for (let c = 0; c < n; c++) {
    let piv = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[piv]![c]!)) piv = r;
    [m[c], m[piv]] = [m[piv]!, m[c]!];
    for (let r = c + 1; r < n; r++) {
      const f = m[r]![c]! / m[c]![c]!;
      for (let k = c; k <= n; k++) m[r]![k]! -= f * m[c]![k]!;
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = m[r]![n]!;
    for (let k = r + 1; k < n; k++) s -= m[r]![k]! * x[k]!;
    x[r] = s / m[r]![r]!;
  }
  return x;
}

/** The B(h) = h ("bh1") coefficients of one update of `order` (see the module comment). */
export function unipcCoefficients(
  h: number,
  rks: number[],
  order: number,
): { rhosP: number[]; rhosC: number[]; hPhi1: number; bH: number } {
  const hh = -h;
  const hPhi1 = Math.expm1(hh);
  let hPhiK = hPhi1 / hh - 1;
  let fact = 1;
  const bH = hh;
  const r = [...rks, 1];
  const R: number[][] = [];
  const b: number[] = [];
  for (let i = 1; i <= order; i++) {
    R.push(r.map((v) => v ** (i - 1)));
    b.push((hPhiK * fact) / bH);
    fact *= i + 1;
    hPhiK = hPhiK / hh - 1 / fact;
  }
  const rhosP =
    rks.length === 0
      ? []
      : order === 2
        ? [0.5]
        : solve(
            R.slice(0, -1).map((row) => row.slice(0, -1)),
            b.slice(0, -1),
          );
  const rhosC = order === 1 ? [0.5] : solve(R, b);
  return { rhosP, rhosC, hPhi1, bH };
}

/** A1111's "UniPC" with its default options (see the module comment). */
export function a1111Unipc(config: { steps: number }): Sampler {
  const steps = config.steps;
  const total = a1111Timesteps(steps).length;
  if (total < ORDER)
    throw new Error(`UniPC: A1111 needs at least ${ORDER} timesteps (order ${ORDER}); ${steps} step(s) give ${total}. Use 3 or more steps`);
  return {
    name: "UniPC",
    steps,
    sample: (opts: SampleOptions) => runUnipc(opts, total),
  };
}

async function runUnipc(opts: SampleOptions, total: number): Promise<tf.Tensor4D> {
  const p = prepare(opts, "UniPC");
  const ns = new VpSchedule(p.schedule);
  const t0 = 1 / ns.n;
  const times = Array.from({ length: total + 1 }, (_, k) => 1 + (k * (t0 - 1)) / total);
  const modelX0 = (x: tf.Tensor4D, t: number): tf.Tensor4D => {
    const eps = guidedEps(p, x, (t - t0) * 1000);
    return tf.div(tf.sub(x, tf.mul(eps, ns.std(t))), ns.alpha(t));
  };
  const prevT: number[] = [times[0]!];
  const prevM: tf.Tensor4D[] = [];
  let x = randn(p.shape, p.rng) as tf.Tensor4D;
  try {
    prevM.push(tf.tidy(() => modelX0(x, times[0]!)));
    for (let step = 1; step <= total; step++) {
      const order = step < ORDER ? step : Math.min(ORDER, total + 1 - step);
      const corrector = step < total;
      const t = times[step]!;
      const xs = x;
      const { next, model } = tf.tidy(() => uniPcUpdate(ns, modelX0, xs, prevM, prevT, t, order, corrector));
      x.dispose();
      x = next;
      if (step < ORDER) {
        prevM.push(model!);
        prevT.push(t);
      } else {
        prevM.shift()!.dispose();
        prevT.shift();
        prevT.push(t);
        if (model) prevM.push(model);
      }
      const x0 = model ? model.clone() : x.clone();
      await report(p, { step: step - 1, steps: total, t: (t - t0) * 1000, sigma: ns.std(t) / ns.alpha(t), x, x0 });
    }
    return x;
  } catch (e) {
    x.dispose();
    throw e;
  } finally {
    tf.dispose(prevM);
  }
}

/** One multistep UniPC update to t (uni_pc.py `multistep_uni_pc_bh_update`, predict_x0). Run in a tidy. */
function uniPcUpdate(
  ns: VpSchedule,
  modelX0: (x: tf.Tensor4D, t: number) => tf.Tensor4D,
  x: tf.Tensor4D,
  prevM: tf.Tensor4D[],
  prevT: number[],
  t: number,
  order: number,
  corrector: boolean,
): { next: tf.Tensor4D; model: tf.Tensor4D | undefined } {
  const last = prevT.length - 1;
  const tPrev0 = prevT[last]!;
  const m0 = prevM[last]!;
  const lambdaPrev0 = ns.lambda(tPrev0);
  const h = ns.lambda(t) - lambdaPrev0;
  const alphaT = ns.alpha(t);
  const rks: number[] = [];
  const d1s: tf.Tensor4D[] = [];
  for (let i = 1; i < order; i++) {
    const rk = (ns.lambda(prevT[last - i]!) - lambdaPrev0) / h;
    rks.push(rk);
    d1s.push(tf.div(tf.sub(prevM[last - i]!, m0), rk));
  }
  const { rhosP, rhosC, hPhi1, bH } = unipcCoefficients(h, rks, order);
  const xT_ = tf.sub(tf.mul(x, ns.std(t) / ns.std(tPrev0)), tf.mul(m0, alphaT * hPhi1)) as tf.Tensor4D;
  const weighted = (rhos: number[]) => d1s.reduce<tf.Tensor>((acc, d, k) => tf.add(acc, tf.mul(d, rhos[k]!)), tf.scalar(0));
  const predRes = d1s.length > 0 ? weighted(rhosP) : tf.scalar(0);
  let next = tf.sub(xT_, tf.mul(predRes, alphaT * bH)) as tf.Tensor4D;
  let model: tf.Tensor4D | undefined;
  if (corrector) {
    model = modelX0(next, t);
    const corrRes = d1s.length > 0 ? weighted(rhosC.slice(0, -1)) : tf.scalar(0);
    const d1t = tf.sub(model, m0);
    next = tf.sub(xT_, tf.mul(tf.add(corrRes, tf.mul(d1t, rhosC[rhosC.length - 1]!)), alphaT * bH));
  }
  return { next, model };
}
