/**
 * k-diffusion's samplers (`k_diffusion/sampling.py`, the version A1111 1.6–1.10 pins) as A1111
 * drives them: Heun, DPM2, DPM2 a, LMS, DPM++ 2M, DPM++ 2S a, DPM++ SDE and DPM++ 2M SDE.
 * ("Euler" and "Euler a" are in samplers.ts.)
 *
 * All of them work in k-diffusion's x = x₀ + σ·ε space on a descending σ list ending in 0
 * (sigmas.ts) and see the model only through k-diffusion's `CompVisDenoiser` (quantize off, as
 * A1111's default): the guided denoised estimate
 *
 *   D(x, σ) = x − σ·ε̂(x/√(σ²+1), t(σ))          t(σ) = `NoiseSchedule.sigmaToT`, fractional
 *
 * where ε̂ is the project's denoiser with classifier-free guidance (samplers.ts `guidedEps`; A1111
 * combines the two denoised outputs instead of the two ε, which is the same affine combination).
 * The run starts from x = z·σ₀. Each step below is the sampling.py step written out, with
 * d = (x − D)/σ (`to_d`) and, for the DPM-Solver++ family, t = −ln σ:
 *
 * - Heun: Euler to σ_{i+1}, a second D there, x += (d + d₂)/2·(σ_{i+1} − σ_i); a plain Euler step into σ = 0.
 * - DPM2: D at the log-midpoint σ_mid = √(σ_i·σ_{i+1}) from an Euler half step, x += d_mid·(σ_{i+1} − σ_i).
 * - DPM2 a: DPM2 down to σ_down of the ancestral split (`ancestralStep`), then + σ_up·z.
 * - LMS: 4th-order linear multistep; the weights integrate the Lagrange polynomials through the
 *   last σ's over [σ_i, σ_{i+1}] (k-diffusion uses scipy's quad; here 4-point Gauss–Legendre, exact
 *   for these cubics).
 * - DPM++ 2S a: the singlestep DPM-Solver++(2S) to σ_down via the half-way point, then + σ_up·z.
 * - DPM++ 2M: the multistep DPM-Solver++(2M), which reuses the previous step's D.
 * - DPM++ SDE: the stochastic DPM-Solver++ with a half step (r = ½), noise twice per step.
 * - DPM++ 2M SDE: the multistep SDE variant (midpoint solver), noise once per step.
 *
 * A1111's defaults: η = 1 (`eta_ancestral`) for the ancestral and SDE samplers, s_churn = 0,
 * s_tmin = 0, s_tmax = ∞, s_noise = 1. (With s_churn = 0 k-diffusion's Euler/Heun/DPM2 still draw a
 * noise tensor every step and never use it; that changes no result, so no draw is made here.)
 *
 * Noise: ancestral samplers draw N(0, I) from the run's rng when k-diffusion calls randn_like (in
 * the same places, so with A1111's generator the stream matches); the SDE samplers take theirs
 * from a `NoiseSampler` over (σ, σ_next), by default a Brownian tree seeded per image as A1111
 * does (brownian.ts).
 */
import * as tf from "@tensorflow/tfjs";
import { randn } from "./random";
import { type Prepared, type SampleOptions, type Sampler, guidedEps, prepare, report } from "./samplers";
import { type NoiseSchedule, ancestralStep } from "./schedule";
import { torchExpF32, torchLogF32 } from "./torch-f32-math";
import { type NoiseSampler, brownianTreeNoiseSampler, brownianSeedsFor } from "./brownian";

/** Options of a k-diffusion run: `SampleOptions` plus the SDE samplers' noise source. */
export interface KSampleOptions extends SampleOptions {
  /**
   * Noise for DPM++ SDE / DPM++ 2M SDE, asked for per interval (σ, σ_next). Default: a Brownian
   * tree per image over the run's σ range, seeded with `brownianSeeds` (see brownian.ts).
   */
  noiseSampler?: NoiseSampler;
  /** One seed per image for the default Brownian tree (A1111: the images' seeds). Default: seed + i. */
  brownianSeeds?: readonly number[];
}

/** The names of the samplers implemented in this file. */
export type KSamplerKind = "Heun" | "DPM2" | "DPM2 a" | "LMS" | "DPM++ 2M" | "DPM++ 2S a" | "DPM++ SDE" | "DPM++ 2M SDE";

/** What one step sees. Tensors are owned by the step's tidy unless kept. */
interface StepContext {
  p: Prepared;
  sigmas: Float64Array;
  eta: number;
  /** Guided D(x, σ). */
  denoise(x: tf.Tensor4D, sigma: number): tf.Tensor4D;
  /** Fresh N(0, I) from the run's rng (ancestral noise). */
  randn(): tf.Tensor4D;
  /** Noise for the interval (σ, σ_next) from the run's noise sampler (SDE samplers). */
  brownian(sigma: number, sigmaNext: number): tf.Tensor4D;
}

/** One step: from x at σ_i to x at σ_{i+1}; returns the new x and the step's first D (for previews). */
type Step = (c: StepContext, i: number, x: tf.Tensor4D) => { next: tf.Tensor4D; denoised: tf.Tensor4D };

/** A step function plus any history it keeps between steps (freed by `dispose`). */
interface Stepper {
  step: Step;
  dispose(): void;
}

const toD = (x: tf.Tensor4D, sigma: number, den: tf.Tensor4D): tf.Tensor4D => tf.div(tf.sub(x, den), sigma);
const sigmaFn = (t: number): number => Math.exp(-t);
const tFn = (sigma: number): number => -Math.log(sigma);
/** x·a + y·b (scalars a, b). */
const lin = (x: tf.Tensor, a: number, y: tf.Tensor, b: number): tf.Tensor4D => tf.add(tf.mul(x, a), tf.mul(y, b));

function heun(): Stepper {
  return {
    dispose() {},
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const sn = c.sigmas[i + 1]!;
      const denoised = c.denoise(x, s);
      const d = toD(x, s, denoised);
      const dt = sn - s;
      if (sn === 0) return { next: tf.add(x, tf.mul(d, dt)), denoised };
      const x2 = tf.add(x, tf.mul(d, dt)) as tf.Tensor4D;
      const d2 = toD(x2, sn, c.denoise(x2, sn));
      return { next: tf.add(x, tf.mul(tf.div(tf.add(d, d2), 2), dt)), denoised };
    },
  };
}

/** One DPM-Solver-2 step from σ to σ_to (> 0) with d at σ (DPM2 and DPM2 a). */
function dpm2Step(c: StepContext, x: tf.Tensor4D, d: tf.Tensor4D, sigma: number, sigmaTo: number): tf.Tensor4D {
  const ls = Math.log(sigma);
  const sigmaMid = Math.exp(ls + 0.5 * (Math.log(sigmaTo) - ls));
  const x2 = tf.add(x, tf.mul(d, sigmaMid - sigma)) as tf.Tensor4D;
  const d2 = toD(x2, sigmaMid, c.denoise(x2, sigmaMid));
  return tf.add(x, tf.mul(d2, sigmaTo - sigma));
}

function dpm2(): Stepper {
  return {
    dispose() {},
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const sn = c.sigmas[i + 1]!;
      const denoised = c.denoise(x, s);
      const d = toD(x, s, denoised);
      if (sn === 0) return { next: tf.add(x, tf.mul(d, sn - s)), denoised };
      return { next: dpm2Step(c, x, d, s, sn), denoised };
    },
  };
}

function dpm2Ancestral(): Stepper {
  return {
    dispose() {},
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const denoised = c.denoise(x, s);
      const { sigmaDown, sigmaUp } = ancestralStep(s, c.sigmas[i + 1]!, c.eta);
      const d = toD(x, s, denoised);
      if (sigmaDown === 0) return { next: tf.add(x, tf.mul(d, sigmaDown - s)), denoised };
      const next = dpm2Step(c, x, d, s, sigmaDown);
      return { next: tf.add(next, tf.mul(c.randn(), sigmaUp)), denoised };
    },
  };
}

const GL4_X = [-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526];
const GL4_W = [0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538];

/**
 * ∫ over [σ_i, σ_{i+1}] of the Lagrange basis polynomial of node j through σ_i, σ_{i−1}, …,
 * σ_{i−order+1} (k-diffusion `linear_multistep_coeff`). 4-point Gauss–Legendre is exact here.
 */
export function lmsCoefficient(order: number, sigmas: ArrayLike<number>, i: number, j: number): number {
  if (order - 1 > i) throw new Error(`LMS: order ${order} too high for step ${i}`);
  const a = sigmas[i]!;
  const b = sigmas[i + 1]!;
  let sum = 0;
  for (let q = 0; q < 4; q++) {
    const tau = (a + b) / 2 + ((b - a) / 2) * GL4_X[q]!;
    let prod = 1;
    for (let k = 0; k < order; k++) {
      if (k === j) continue;
      prod *= (tau - sigmas[i - k]!) / (sigmas[i - j]! - sigmas[i - k]!);
    }
    sum += GL4_W[q]! * prod;
  }
  return (sum * (b - a)) / 2;
}

function lms(order = 4): Stepper {
  const ds: tf.Tensor4D[] = [];
  return {
    dispose: () => tf.dispose(ds.splice(0)),
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const denoised = c.denoise(x, s);
      ds.push(tf.keep(toD(x, s, denoised)));
      if (ds.length > order) ds.shift()!.dispose();
      const cur = Math.min(i + 1, order);
      let acc: tf.Tensor = tf.scalar(0);
      for (let j = 0; j < cur; j++) acc = tf.add(acc, tf.mul(ds[ds.length - 1 - j]!, lmsCoefficient(cur, c.sigmas, i, j)));
      return { next: tf.add(x, acc), denoised };
    },
  };
}

function dpmpp2sAncestral(): Stepper {
  return {
    dispose() {},
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const sn = c.sigmas[i + 1]!;
      const denoised = c.denoise(x, s);
      const { sigmaDown, sigmaUp } = ancestralStep(s, sn, c.eta);
      let next: tf.Tensor4D;
      if (sigmaDown === 0) {
        next = tf.add(x, tf.mul(toD(x, s, denoised), sigmaDown - s));
      } else {
        const t = tFn(s);
        const tNext = tFn(sigmaDown);
        const h = tNext - t;
        const sMid = t + 0.5 * h;
        const x2 = lin(x, sigmaFn(sMid) / sigmaFn(t), denoised, -Math.expm1(-h * 0.5));
        const den2 = c.denoise(x2, sigmaFn(sMid));
        next = lin(x, sigmaFn(tNext) / sigmaFn(t), den2, -Math.expm1(-h));
      }
      if (sn > 0) next = tf.add(next, tf.mul(c.randn(), sigmaUp));
      return { next, denoised };
    },
  };
}

/**
 * The σ values DPM++ SDE asks its noise sampler about, as k-diffusion computes them from float32
 * σ tensors: t = −log σ, s = t + h·r, then σ = exp(−t) back (each op rounded to float32). They can
 * differ from the σ list in the last bit, and the Brownian tree rounds its times to 6 decimals, so
 * these (not the float64 ones) are what reproduces A1111's noise. log/exp are torch's own float32
 * kernels (torch-f32-math.ts), which are not correctly rounded.
 */
export function sdeQueryTimes(sigma: number, sigmaNext: number, r: number): { sigma: number; sigmaMid: number; sigmaNext: number } {
  const f = Math.fround;
  const t = -torchLogF32(sigma);
  const tn = -torchLogF32(sigmaNext);
  const h = f(tn - t);
  const s = f(t + f(h * f(r)));
  return { sigma: torchExpF32(-t), sigmaMid: torchExpF32(-s), sigmaNext: torchExpF32(-tn) };
}

function dpmppSde(r = 0.5): Stepper {
  return {
    dispose() {},
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const sn = c.sigmas[i + 1]!;
      const denoised = c.denoise(x, s);
      if (sn === 0) return { next: tf.add(x, tf.mul(toD(x, s, denoised), sn - s)), denoised };
      const t = tFn(s);
      const tNext = tFn(sn);
      const h = tNext - t;
      const sMid = t + h * r;
      const fac = 1 / (2 * r);
      // Step 1: to the midpoint, with its own noise.
      const a1 = ancestralStep(sigmaFn(t), sigmaFn(sMid), c.eta);
      const s_ = tFn(a1.sigmaDown);
      let x2 = lin(x, sigmaFn(s_) / sigmaFn(t), denoised, -Math.expm1(t - s_));
      const q = sdeQueryTimes(s, sn, r);
      x2 = tf.add(x2, tf.mul(c.brownian(q.sigma, q.sigmaMid), a1.sigmaUp));
      const den2 = c.denoise(x2, sigmaFn(sMid));
      // Step 2: the full step with the blended D.
      const a2 = ancestralStep(sigmaFn(t), sigmaFn(tNext), c.eta);
      const tNext_ = tFn(a2.sigmaDown);
      const denD = lin(denoised, 1 - fac, den2, fac);
      let next = lin(x, sigmaFn(tNext_) / sigmaFn(t), denD, -Math.expm1(t - tNext_));
      next = tf.add(next, tf.mul(c.brownian(q.sigma, q.sigmaNext), a2.sigmaUp));
      return { next, denoised };
    },
  };
}

function dpmpp2m(): Stepper {
  let old: tf.Tensor4D | undefined;
  return {
    dispose: () => old?.dispose(),
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const sn = c.sigmas[i + 1]!;
      const denoised = c.denoise(x, s);
      const t = tFn(s);
      const tNext = tFn(sn);
      const h = tNext - t;
      let next: tf.Tensor4D;
      if (old === undefined || sn === 0) {
        next = sn === 0 ? denoised.clone() : lin(x, sigmaFn(tNext) / sigmaFn(t), denoised, -Math.expm1(-h));
      } else {
        const r = (t - tFn(c.sigmas[i - 1]!)) / h;
        const denD = lin(denoised, 1 + 1 / (2 * r), old, -1 / (2 * r));
        next = lin(x, sigmaFn(tNext) / sigmaFn(t), denD, -Math.expm1(-h));
      }
      old?.dispose();
      old = tf.keep(denoised.clone());
      return { next, denoised };
    },
  };
}

function dpmpp2mSde(): Stepper {
  let old: tf.Tensor4D | undefined;
  let hLast = 0;
  return {
    dispose: () => old?.dispose(),
    step(c, i, x) {
      const s = c.sigmas[i]!;
      const sn = c.sigmas[i + 1]!;
      const denoised = c.denoise(x, s);
      let next: tf.Tensor4D;
      let h = hLast;
      if (sn === 0) {
        next = denoised.clone();
      } else {
        h = -Math.log(sn) - -Math.log(s);
        const etaH = c.eta * h;
        const k = -Math.expm1(-h - etaH);
        next = lin(x, (sn / s) * Math.exp(-etaH), denoised, k);
        if (old !== undefined) next = tf.add(next, tf.mul(tf.sub(denoised, old), 0.5 * k * (1 / (hLast / h))));
        if (c.eta) next = tf.add(next, tf.mul(c.brownian(s, sn), sn * Math.sqrt(-Math.expm1(-2 * etaH))));
      }
      old?.dispose();
      old = tf.keep(denoised.clone());
      hLast = h;
      return { next, denoised };
    },
  };
}

const STEPPERS: Record<KSamplerKind, { make: () => Stepper; eta: number | null; brownian: boolean }> = {
  Heun: { make: heun, eta: null, brownian: false },
  DPM2: { make: dpm2, eta: null, brownian: false },
  "DPM2 a": { make: dpm2Ancestral, eta: 1, brownian: false },
  LMS: { make: lms, eta: null, brownian: false },
  "DPM++ 2M": { make: dpmpp2m, eta: null, brownian: false },
  "DPM++ 2S a": { make: dpmpp2sAncestral, eta: 1, brownian: false },
  "DPM++ SDE": { make: dpmppSde, eta: 1, brownian: true },
  "DPM++ 2M SDE": { make: dpmpp2mSde, eta: 1, brownian: true },
};

/** Configuration of one k-diffusion sampler. */
export interface KSamplerConfig {
  /** Number of steps (the σ list has steps + 1 entries). */
  steps: number;
  /** The σ list for a schedule, descending and ending in 0 (see sigmas.ts `a1111Sigmas`). */
  sigmas: (schedule: NoiseSchedule) => Float64Array;
  /** η of the ancestral / SDE samplers (A1111 default 1); ignored by the others. */
  eta?: number;
}

/**
 * A k-diffusion sampler by kind (see the module comment). `samplerByName` is the usual way in;
 * this is for callers that build their own σ list.
 */
export function kSampler(kind: KSamplerKind, config: KSamplerConfig): Sampler & { sample(opts: KSampleOptions): Promise<tf.Tensor4D> } {
  const spec = STEPPERS[kind];
  if (!spec)
    throw new Error(
      `kSampler: unknown kind ${JSON.stringify(kind)}; use one of ${Object.keys(STEPPERS)
        .map((k) => `"${k}"`)
        .join(", ")}`,
    );
  const eta = spec.eta === null ? 0 : (config.eta ?? spec.eta);
  if (!(eta >= 0) || !Number.isFinite(eta)) throw new Error(`${kind}: eta must be a finite number ≥ 0, got ${config.eta}`);
  return {
    name: kind,
    steps: config.steps,
    sample: (opts: KSampleOptions) => runK(kind, spec, config, eta, opts),
  };
}

async function runK(
  kind: KSamplerKind,
  spec: (typeof STEPPERS)[KSamplerKind],
  config: KSamplerConfig,
  eta: number,
  opts: KSampleOptions,
): Promise<tf.Tensor4D> {
  const p = prepare(opts, kind);
  const sigmas = config.sigmas(p.schedule);
  const n = sigmas.length - 1;
  const size = p.shape.reduce((a, b) => a * b, 1);
  let noiseSampler = opts.noiseSampler;
  if (spec.brownian && !noiseSampler) {
    let lo = Infinity;
    for (const s of sigmas) if (s > 0 && s < lo) lo = s;
    noiseSampler = brownianTreeNoiseSampler(
      p.shape,
      lo,
      Math.max(...sigmas),
      opts.brownianSeeds ?? brownianSeedsFor(p.shape[0], opts.seed, p.rng),
    );
  }
  const ctx: StepContext = {
    p,
    sigmas,
    eta,
    denoise: (x, sigma) =>
      tf.sub(x, tf.mul(guidedEps(p, tf.mul(x, 1 / Math.sqrt(sigma * sigma + 1)) as tf.Tensor4D, p.schedule.sigmaToT(sigma)), sigma)),
    randn: () => randn(p.shape, p.rng) as tf.Tensor4D,
    brownian: (sigma, sigmaNext) => {
      const v = noiseSampler!(sigma, sigmaNext);
      if (v.length !== size) throw new Error(`${kind}: the noise sampler returned ${v.length} values for a latent of ${size}`);
      return tf.tensor(v, p.shape, "float32") as tf.Tensor4D;
    },
  };
  const stepper = spec.make();
  let x = tf.tidy(() => tf.mul(randn(p.shape, p.rng), sigmas[0]!)) as tf.Tensor4D;
  try {
    for (let i = 0; i < n; i++) {
      const xs = x;
      const { next, denoised } = tf.tidy(() => stepper.step(ctx, i, xs));
      x.dispose();
      x = next;
      await report(p, { step: i, steps: n, t: p.schedule.sigmaToT(sigmas[i]!), sigma: sigmas[i]!, x, x0: denoised });
    }
    return x;
  } catch (e) {
    x.dispose();
    throw e;
  } finally {
    stepper.dispose();
  }
}
