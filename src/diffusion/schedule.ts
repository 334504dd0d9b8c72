/**
 * The SD 1.x noise schedule and the step spacings samplers use.
 *
 * Forward process (DDPM, ε-parameterised, T = 1000):
 *
 *   β_t = (linspace(√0.00085, √0.012, 1000)_t)²        ("linear" in LDM, "scaled_linear" in diffusers)
 *   ᾱ_t = ∏_{s≤t} (1 − β_s)
 *   x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε,  ε ~ N(0, I)           (qSample; training target ε)
 *
 * k-diffusion views the same process with a noise level σ instead of t: dividing x_t by √ᾱ_t gives
 * x = x₀ + σ·ε with σ_t = √((1−ᾱ_t)/ᾱ_t). σ runs from 0.0292 (t = 0) to 14.61 (t = 999).
 *
 * The schedule itself is float64 on the host, as LDM computes it with numpy before it stores float32
 * buffers; a value is rounded when it enters a tensor, which gives LDM's float32 buffers.
 *
 * The σ lists samplers walk (`discreteSigmas`, `karrasSigmas`, sigmas.ts `exponentialSigmas`) are
 * made as k-diffusion makes them for A1111, in float32 from the float32 `alphas_cumprod` buffer:
 * `NoiseSchedule.kSigmas` / `kLogSigmas` are `CompVisDenoiser`'s tables, and every list is built
 * with torch's own float32 operations (torch-ops.ts, torch-f32-math.ts), so it equals torch's bit
 * for bit (test/sigma-lists.test.ts against test/fixtures/sigma-lists.json).
 */
import * as tf from "@tensorflow/tfjs";
import { torchExpF32, torchLogF32 } from "./torch-f32-math";
import { torchLinspaceF32, torchLinspaceF64, torchPowTensorScalarF32 } from "./torch-ops";

/** Parameters of a scaled-linear β schedule. */
export interface ScheduleConfig {
  /** β₀ (SD 1.x: 0.00085). */
  betaStart: number;
  /** β_{T−1} (SD 1.x: 0.012). */
  betaEnd: number;
  /** T (SD 1.x: 1000). */
  numTimesteps: number;
}

/** SD 1.x values (`v1-inference.yaml`: linear_start 0.00085, linear_end 0.012, timesteps 1000). */
export const SD15_SCHEDULE_CONFIG: Readonly<ScheduleConfig> = Object.freeze({ betaStart: 0.00085, betaEnd: 0.012, numTimesteps: 1000 });

/** β_t = linspace(√start, √end, n)² in float64, with torch's linspace as LDM's `make_beta_schedule`. */
export function scaledLinearBetas(betaStart: number, betaEnd: number, n: number): Float64Array {
  if (!(betaStart > 0 && betaEnd < 1 && betaStart <= betaEnd) || !Number.isSafeInteger(n) || n < 2 || n > 1 << 24) {
    throw new Error(`scaledLinearBetas: need 0 < betaStart ≤ betaEnd < 1 and n ≥ 2, got (${betaStart}, ${betaEnd}, ${n})`);
  }
  const r = torchLinspaceF64(Math.sqrt(betaStart), Math.sqrt(betaEnd), n);
  return r.map((v) => v * v);
}

/**
 * A discrete DDPM schedule with its k-diffusion σ view. All arrays are indexed by the training
 * timestep t = 0 … T−1 (so `sigmas` ascends).
 */
export class NoiseSchedule {
  readonly numTimesteps: number;
  readonly betas: Float64Array;
  /** α_t = 1 − β_t. */
  readonly alphas: Float64Array;
  /** ᾱ_t = ∏_{s≤t} α_s. */
  readonly alphasCumprod: Float64Array;
  readonly sqrtAlphasCumprod: Float64Array;
  readonly sqrtOneMinusAlphasCumprod: Float64Array;
  /** σ_t = √((1−ᾱ_t)/ᾱ_t), ascending in t. */
  readonly sigmas: Float64Array;
  /** ln σ_t. */
  readonly logSigmas: Float64Array;
  /**
   * k-diffusion's σ table (`CompVisDenoiser.sigmas`): √((1−ᾱ)/ᾱ) in float32 from the float32
   * ᾱ buffer, ascending in t. The σ lists are made from it.
   */
  readonly kSigmas: Float32Array;
  /** `CompVisDenoiser.log_sigmas`: torch's float32 log of `kSigmas` (what `t_to_sigma` interpolates). */
  readonly kLogSigmas: Float32Array;

  constructor(config: Partial<ScheduleConfig> = {}) {
    const c = { ...SD15_SCHEDULE_CONFIG, ...config };
    const n = c.numTimesteps;
    this.numTimesteps = n;
    this.betas = scaledLinearBetas(c.betaStart, c.betaEnd, n);
    this.alphas = new Float64Array(n);
    this.alphasCumprod = new Float64Array(n);
    this.sqrtAlphasCumprod = new Float64Array(n);
    this.sqrtOneMinusAlphasCumprod = new Float64Array(n);
    this.sigmas = new Float64Array(n);
    this.logSigmas = new Float64Array(n);
    this.kSigmas = new Float32Array(n);
    this.kLogSigmas = new Float32Array(n);
    let prod = 1;
    for (let t = 0; t < n; t++) {
      this.alphas[t] = 1 - this.betas[t]!;
      prod *= this.alphas[t]!;
      this.alphasCumprod[t] = prod;
      this.sqrtAlphasCumprod[t] = Math.sqrt(prod);
      this.sqrtOneMinusAlphasCumprod[t] = Math.sqrt(1 - prod);
      this.sigmas[t] = Math.sqrt((1 - prod) / prod);
      this.logSigmas[t] = Math.log(this.sigmas[t]!);
      const a = Math.fround(prod); // the float32 buffer LDM registers
      this.kSigmas[t] = Math.sqrt(Math.fround(Math.fround(1 - a) / a));
      this.kLogSigmas[t] = torchLogF32(this.kSigmas[t]!);
    }
  }

  /**
   * Smallest and largest σ of k-diffusion's float32 table (t = 0 and t = T−1), the `σ_min`/`σ_max`
   * A1111 hands the Karras and exponential schedules (`model_wrap.sigmas[0].item()`).
   */
  get sigmaMin(): number {
    return this.kSigmas[0]!;
  }
  get sigmaMax(): number {
    return this.kSigmas[this.numTimesteps - 1]!;
  }

  /**
   * σ at a possibly fractional timestep: ln σ is interpolated linearly between the neighbouring
   * integer timesteps (k-diffusion `DiscreteSchedule.t_to_sigma`).
   */
  tToSigma(t: number): number {
    if (!(t >= 0 && t <= this.numTimesteps - 1)) throw new Error(`tToSigma: t must lie in [0, ${this.numTimesteps - 1}], got ${t}`);
    const lo = Math.floor(t);
    const hi = Math.ceil(t);
    const w = t - lo;
    return Math.exp((1 - w) * this.logSigmas[lo]! + w * this.logSigmas[hi]!);
  }

  /**
   * The (fractional) timestep of a noise level, the inverse of `tToSigma`: find the neighbouring
   * pair ln σ_i ≤ ln σ < ln σ_{i+1} and interpolate t linearly in ln σ, clamped to [0, T−1]
   * (k-diffusion `DiscreteSchedule.sigma_to_t`, `quantize=False` — A1111's default), in float32
   * over `kLogSigmas` as torch computes it: the timestep A1111's UNet is called with.
   */
  sigmaToT(sigma: number): number {
    if (!(sigma > 0)) throw new Error(`sigmaToT: sigma must be > 0, got ${sigma}`);
    const f = Math.fround;
    const ls = torchLogF32(sigma);
    const L = this.kLogSigmas;
    // low = last index with L[low] ≤ ls (0 when none), clamped to T−2 (binary search; L ascends).
    let low = 0;
    let high = L.length - 1;
    if (ls >= L[high]!) low = L.length - 2;
    else {
      while (high - low > 1) {
        const mid = (low + high) >> 1;
        if (L[mid]! <= ls) low = mid;
        else high = mid;
      }
    }
    const w = Math.min(1, Math.max(0, f(f(L[low]! - ls) / f(L[low]! - L[low + 1]!))));
    return f(f(f(1 - w) * low) + f(w * (low + 1)));
  }

  /** ᾱ at a possibly fractional timestep, via σ: ᾱ = 1/(1+σ²). Integer t gives `alphasCumprod[t]`. */
  alphaCumprodAt(t: number): number {
    if (Number.isInteger(t) && t >= 0 && t < this.numTimesteps) return this.alphasCumprod[t]!;
    const s = this.tToSigma(t);
    return 1 / (1 + s * s);
  }
}

let sd15: NoiseSchedule | undefined;

/** The SD 1.x schedule (built once). */
export function sd15Schedule(): NoiseSchedule {
  sd15 ??= new NoiseSchedule(SD15_SCHEDULE_CONFIG);
  return sd15;
}

/** Per-batch coefficient column `[B, 1, …, 1]` (rank of x) from float64 values. */
function perBatch(values: ArrayLike<number>, rank: number): tf.Tensor {
  const shape = [values.length, ...new Array<number>(rank - 1).fill(1)];
  return tf.tensor(Float32Array.from(values), shape, "float32");
}

function checkTimesteps(fn: string, x: tf.Tensor, t: ArrayLike<number>, schedule: NoiseSchedule): void {
  if (x.rank < 1 || t.length !== x.shape[0]) {
    throw new Error(`${fn}: need one timestep per batch element: x has batch ${x.shape[0]}, got ${t.length} timesteps`);
  }
  for (let i = 0; i < t.length; i++) {
    const ti = t[i]!;
    if (!Number.isInteger(ti) || ti < 0 || ti >= schedule.numTimesteps) {
      throw new Error(`${fn}: timestep ${i} is ${ti}; timesteps must be integers in [0, ${schedule.numTimesteps})`);
    }
  }
}

/**
 * The forward (noising) process: x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, with its own integer t per batch
 * element (axis 0). `x0` and `noise` have the same shape (any rank ≥ 1, NHWC for latents).
 */
export function qSample(x0: tf.Tensor, noise: tf.Tensor, t: ArrayLike<number>, schedule: NoiseSchedule = sd15Schedule()): tf.Tensor {
  checkTimesteps("qSample", x0, t, schedule);
  if (!tf.util.arraysEqual(x0.shape, noise.shape))
    throw new Error(`qSample: x0 ${JSON.stringify(x0.shape)} and noise ${JSON.stringify(noise.shape)} differ in shape`);
  return tf.tidy(() => {
    const a = perBatch(
      Array.from(t, (ti) => schedule.sqrtAlphasCumprod[ti]!),
      x0.rank,
    );
    const b = perBatch(
      Array.from(t, (ti) => schedule.sqrtOneMinusAlphasCumprod[ti]!),
      x0.rank,
    );
    return tf.add(tf.mul(a, x0), tf.mul(b, noise));
  });
}

/**
 * The v-prediction target (Salimans & Ho; SD 2.x-768-v): v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀, per-batch t.
 * Unused by SD 1.x (ε-prediction) and kept for v-models.
 */
export function vTarget(x0: tf.Tensor, noise: tf.Tensor, t: ArrayLike<number>, schedule: NoiseSchedule = sd15Schedule()): tf.Tensor {
  checkTimesteps("vTarget", x0, t, schedule);
  if (!tf.util.arraysEqual(x0.shape, noise.shape))
    throw new Error(`vTarget: x0 ${JSON.stringify(x0.shape)} and noise ${JSON.stringify(noise.shape)} differ in shape`);
  return tf.tidy(() => {
    const a = perBatch(
      Array.from(t, (ti) => schedule.sqrtAlphasCumprod[ti]!),
      x0.rank,
    );
    const b = perBatch(
      Array.from(t, (ti) => schedule.sqrtOneMinusAlphasCumprod[ti]!),
      x0.rank,
    );
    return tf.sub(tf.mul(a, noise), tf.mul(b, x0));
  });
}

function checkSteps(fn: string, steps: number, max: number): void {
  if (!Number.isSafeInteger(steps) || steps < 1 || steps > max)
    throw new Error(`${fn}: steps must be an integer in [1, ${max}], got ${steps}`);
}

/**
 * DDIM timesteps, CompVis "uniform" spacing with the +1 offset (LDM `make_ddim_timesteps`, used by
 * A1111's DDIM): c = ⌊T/steps⌋, timesteps = 0, c, 2c, … < T, each + 1. Ascending.
 * Steps = 50 gives 1, 21, …, 981. Like CompVis, when T is not a multiple of `steps` this yields
 * more than `steps` timesteps (30 → c = 33 → 31 timesteps 1 … 991). For steps > T/2, c = 1 and the
 * last entry would be T; it is clamped to T−1 and the duplicate dropped.
 */
export function ddimTimesteps(steps: number, numTimesteps = 1000): number[] {
  checkSteps("ddimTimesteps", steps, numTimesteps);
  const c = Math.floor(numTimesteps / steps);
  const out: number[] = [];
  for (let t = 0; t < numTimesteps; t += c) {
    const v = Math.min(t + 1, numTimesteps - 1);
    if (out[out.length - 1] !== v) out.push(v);
  }
  return out;
}

/**
 * k-diffusion's default discrete σ spacing (`DiscreteSchedule.get_sigmas(n)`), which A1111's
 * "Euler a" and "Euler" use with the default "Automatic" scheduler: t = linspace(T−1, 0, n),
 * σ_i = exp((1−w)·ln σ_⌊t⌋ + w·ln σ_⌈t⌉) with w = frac(t) (`t_to_sigma`), then a final 0; every
 * step in float32 as torch does it. Descending, length n+1.
 */
export function discreteSigmas(steps: number, schedule: NoiseSchedule = sd15Schedule()): Float64Array {
  checkSteps("discreteSigmas", steps, 100000);
  const f = Math.fround;
  const ts = torchLinspaceF32(schedule.numTimesteps - 1, 0, steps);
  const L = schedule.kLogSigmas;
  const out = new Float64Array(steps + 1);
  for (let i = 0; i < steps; i++) {
    const t = ts[i]!;
    const lo = Math.floor(t);
    const w = t - Math.trunc(t); // exact in float32
    out[i] = torchExpF32(f(f(f(1 - w) * L[lo]!) + f(w * L[Math.ceil(t)]!)));
  }
  out[steps] = 0;
  return out;
}

/**
 * Karras et al. (2022) σ spacing (k-diffusion `get_sigmas_karras`, A1111's "Karras" scheduler):
 * σ_i = (σ_max^{1/ρ} + ramp_i·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ with ramp = linspace(0, 1, n), ρ = 7,
 * σ_min/σ_max from the schedule, then a final 0. The roots and their difference are Python
 * doubles, the rest float32 tensor operations, as in torch. Descending, length n+1.
 */
export function karrasSigmas(steps: number, schedule: NoiseSchedule = sd15Schedule(), rho = 7): Float64Array {
  checkSteps("karrasSigmas", steps, 100000);
  if (!(rho > 0) || !Number.isFinite(rho)) throw new Error(`karrasSigmas: rho must be a positive number, got ${rho}`);
  const f = Math.fround;
  const minInv = schedule.sigmaMin ** (1 / rho);
  const maxInv = schedule.sigmaMax ** (1 / rho);
  const span = f(minInv - maxInv);
  const ramp = torchLinspaceF32(0, 1, steps);
  const base = ramp.map((r) => f(f(r * span) + f(maxInv)));
  const out = new Float64Array(steps + 1);
  out.set(torchPowTensorScalarF32(base, rho));
  out[steps] = 0;
  return out;
}

/**
 * Split a step σ_from → σ_to into a deterministic part down to σ_down and fresh noise σ_up
 * (k-diffusion `get_ancestral_step`): σ_up = min(σ_to, η·√(σ_to²(σ_from²−σ_to²)/σ_from²)),
 * σ_down = √(σ_to² − σ_up²). The variance at σ_to is then exactly σ_down² + σ_up² = σ_to².
 */
export function ancestralStep(sigmaFrom: number, sigmaTo: number, eta = 1): { sigmaDown: number; sigmaUp: number } {
  if (eta === 0 || sigmaTo === 0) return { sigmaDown: sigmaTo, sigmaUp: 0 };
  const sigmaUp = Math.min(
    sigmaTo,
    eta * Math.sqrt((sigmaTo * sigmaTo * (sigmaFrom * sigmaFrom - sigmaTo * sigmaTo)) / (sigmaFrom * sigmaFrom)),
  );
  return { sigmaDown: Math.sqrt(sigmaTo * sigmaTo - sigmaUp * sigmaUp), sigmaUp };
}
