/**
 * Samplers: turn noise into latents with a denoiser, the way A1111 does for "DDIM", "Euler a" and
 * "Euler". They take a plain function, not a UNet, so they can be read and tested on their own.
 *
 * One denoiser contract for all samplers — the training contract: given x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
 * and the timestep t (fractional for the Euler samplers), predict ε. The Euler samplers work in
 * k-diffusion's x = x₀ + σ·ε space and convert at the call exactly as k-diffusion's
 * `CompVisDenoiser` does: input x·c_in with c_in = 1/√(σ²+1) (= √ᾱ), timestep t = sigmaToT(σ)
 * (ln σ interpolated between integer timesteps), and denoised x̂₀ = x − σ·ε̂.
 *
 * Classifier-free guidance: cond and uncond go through ONE denoiser call as a batch of 2B
 * ([x, x] with [cond, uncond]) and combine as ε = ε_u + s·(ε_c − ε_u).
 *
 * Memory: each step runs in `tf.tidy`; only the running x survives a step (plus x̂₀ while the
 * callback runs). The caller owns the returned latents and the cond tensors passed in.
 */
import * as tf from "@tensorflow/tfjs";
import type { NoiseRng } from "./a1111-rng";
import { Rng, randn } from "./random";
import { type NoiseSchedule, ancestralStep, ddimTimesteps, sd15Schedule } from "./schedule";
import { type SigmaSpacing, sigmasFor as spacedSigmas } from "./sigmas";

/**
 * Predicts the noise ε in `x` (NHWC, x = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε) at timesteps `t` (one per batch
 * element; fractional for the Euler samplers) under conditioning `cond` (batch-first, e.g. the
 * text-encoder context `[B, 77, 768]`). Must be synchronous and return a tensor shaped like `x`;
 * the sampler disposes it.
 */
export type Denoiser = (x: tf.Tensor4D, t: readonly number[], cond: tf.Tensor) => tf.Tensor4D;

/** What a step callback sees. Tensors are valid only during the callback; clone to keep them. */
export interface StepInfo {
  /** 0-based index of the step just taken. */
  step: number;
  /** Number of denoiser evaluations in the run. */
  steps: number;
  /** The timestep the denoiser was called at (fractional for Euler). */
  t: number;
  /** The noise level σ = √((1−ᾱ)/ᾱ) at that timestep. */
  sigma: number;
  /** The running sample after this step (DDIM: x_{t_prev}; Euler: k-diffusion's x = x₀ + σ·ε). */
  x: tf.Tensor4D;
  /** The denoiser's current estimate of the clean latents x̂₀ — what a preview decodes. */
  x0: tf.Tensor4D;
}

export type StepCallback = (info: StepInfo) => void | Promise<void>;

/** One sampling run. */
export interface SampleOptions {
  denoiser: Denoiser;
  /** Latent shape `[batch, height, width, channels]` (SD: `[n, 64, 64, 4]` for 512²). */
  shape: [number, number, number, number];
  /** Conditioning, batch 1 (broadcast) or `batch`. */
  cond: tf.Tensor;
  /** Unconditional conditioning (empty-prompt context); omit to sample without guidance. */
  uncond?: tf.Tensor;
  /** CFG scale s (A1111 default 7); 1 means no guidance (uncond is then not evaluated). */
  guidanceScale?: number;
  /** Seed for the initial and per-step noise; ignored when `rng` is given. */
  seed?: number;
  /**
   * Draw noise from this generator instead (it is advanced; save/restore its state around a
   * preview): the project's `Rng`, an `a1111Rng`, or `a1111ImageNoise` for A1111's per-image noise.
   */
  rng?: NoiseRng;
  /** Noise schedule (default SD 1.x). */
  schedule?: NoiseSchedule;
  /** Called after every step (e.g. to show a preview); awaited when it returns a promise. */
  callback?: StepCallback;
}

/** A configured sampler. `sample` returns the final latents (NHWC), owned by the caller. */
export interface Sampler {
  readonly name: string;
  readonly steps: number;
  sample(opts: SampleOptions): Promise<tf.Tensor4D>;
}

/** A prepared sampling run (shared with the samplers in k-samplers.ts and timestep-samplers.ts). */
export interface Prepared {
  denoiser: Denoiser;
  shape: [number, number, number, number];
  cond: tf.Tensor;
  uncond: tf.Tensor | undefined;
  scale: number;
  rng: NoiseRng;
  schedule: NoiseSchedule;
  callback: StepCallback | undefined;
}

/** Check a run's options and fill in the defaults (guidance 7, rng from the seed, SD 1.x schedule). */
export function prepare(opts: SampleOptions, who: string): Prepared {
  const { shape, cond, uncond } = opts;
  if (!Array.isArray(shape) || shape.length !== 4 || !shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw new Error(`${who}: shape must be [batch, height, width, channels] of positive integers, got ${JSON.stringify(shape)}`);
  }
  const scale = opts.guidanceScale ?? 7;
  if (!Number.isFinite(scale)) throw new Error(`${who}: guidanceScale must be a finite number, got ${scale}`);
  const batch = shape[0];
  for (const [name, c] of [
    ["cond", cond],
    ["uncond", uncond],
  ] as const) {
    if (c === undefined) continue;
    if (c.rank < 1 || (c.shape[0] !== 1 && c.shape[0] !== batch)) {
      throw new Error(`${who}: ${name} must have batch 1 or ${batch} (the latent batch), got shape ${JSON.stringify(c.shape)}`);
    }
  }
  if (uncond && !tf.util.arraysEqual(cond.shape.slice(1), uncond.shape.slice(1))) {
    throw new Error(
      `${who}: cond ${JSON.stringify(cond.shape)} and uncond ${JSON.stringify(uncond.shape)} must match beyond the batch axis (same token count and width) to be batched together`,
    );
  }
  let rng = opts.rng;
  if (!rng) {
    if (opts.seed === undefined) throw new Error(`${who}: give a seed (e.g. seed: 1234) or an rng, so the run can be reproduced`);
    rng = new Rng(opts.seed);
  }
  return { denoiser: opts.denoiser, shape, cond, uncond, scale, rng, schedule: opts.schedule ?? sd15Schedule(), callback: opts.callback };
}

/** Repeat a batch-1 tensor to `batch` rows (inside a tidy). */
function toBatch(c: tf.Tensor, batch: number): tf.Tensor {
  if (c.shape[0] === batch) return c;
  return tf.tile(c, [batch, ...new Array<number>(c.rank - 1).fill(1)]);
}

/** Call the denoiser once and return the guided ε̂ = ε_u + s·(ε_c − ε_u). Run inside a tidy. */
export function guidedEps(p: Prepared, x: tf.Tensor4D, t: number): tf.Tensor4D {
  const batch = x.shape[0];
  const cond = toBatch(p.cond, batch);
  const guided = p.uncond !== undefined && p.scale !== 1;
  const xIn = guided ? tf.concat([x, x], 0) : x;
  const cIn = guided ? tf.concat([cond, toBatch(p.uncond!, batch)], 0) : cond;
  const eps = p.denoiser(xIn, new Array<number>(xIn.shape[0]).fill(t), cIn);
  if (!tf.util.arraysEqual(eps.shape, xIn.shape)) {
    throw new Error(
      `denoiser returned shape ${JSON.stringify(eps.shape)} for input ${JSON.stringify(xIn.shape)}; it must predict ε with the input's shape`,
    );
  }
  if (!guided) return eps;
  const [epsCond, epsUncond] = tf.split(eps, 2, 0) as [tf.Tensor4D, tf.Tensor4D];
  return tf.add(epsUncond, tf.mul(p.scale, tf.sub(epsCond, epsUncond)));
}

/** Hand one step's result to the callback, then free x̂₀. */
export async function report(p: Prepared, info: StepInfo): Promise<void> {
  try {
    if (p.callback) await p.callback(info);
  } finally {
    info.x0.dispose();
  }
}

/**
 * DDIM (Song et al. 2021) as in CompVis `DDIMSampler` (A1111 "DDIM"): timesteps from
 * `ddimTimesteps(steps)` visited from the top, x_T = z, and per step t → t_prev (ᾱ_prev = ᾱ₀ after
 * the last step):
 *
 *   x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t
 *   σ_t = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)
 *   x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ_t²)·ε̂ + σ_t·z
 *
 * η = 0 is deterministic given the initial noise (no per-step noise is drawn). As in CompVis the
 * result is x at ᾱ₀ = 0.99915, not x̂₀: it still carries √(1−ᾱ₀) ≈ 0.029 of noise.
 */
export function ddim(config: { steps: number; eta?: number }): Sampler {
  const eta = config.eta ?? 0;
  if (!(eta >= 0) || !Number.isFinite(eta)) throw new Error(`ddim: eta must be ≥ 0, got ${eta}`);
  const steps = config.steps;
  ddimTimesteps(steps); // validate early
  return {
    name: "DDIM",
    steps,
    async sample(opts: SampleOptions): Promise<tf.Tensor4D> {
      const p = prepare(opts, "ddim");
      const ac = p.schedule.alphasCumprod;
      const ts = ddimTimesteps(steps, p.schedule.numTimesteps);
      const size = p.shape.reduce((a, b) => a * b, 1);
      let x = randn(p.shape, p.rng) as tf.Tensor4D;
      try {
        for (let i = 0; i < ts.length; i++) {
          const k = ts.length - 1 - i;
          const t = ts[k]!;
          const aT = ac[t]!;
          const aPrev = k > 0 ? ac[ts[k - 1]!]! : ac[0]!;
          const sigmaT = eta * Math.sqrt((1 - aPrev) / (1 - aT)) * Math.sqrt(1 - aT / aPrev);
          const noise = sigmaT > 0 ? p.rng.normal(size) : undefined;
          const xt = x;
          const { next, x0 } = tf.tidy(() => {
            const eps = guidedEps(p, xt, t);
            const x0 = tf.div(tf.sub(xt, tf.mul(Math.sqrt(1 - aT), eps)), Math.sqrt(aT)) as tf.Tensor4D;
            let next: tf.Tensor4D = tf.add(tf.mul(Math.sqrt(aPrev), x0), tf.mul(Math.sqrt(Math.max(0, 1 - aPrev - sigmaT * sigmaT)), eps));
            if (noise) next = tf.add(next, tf.mul(sigmaT, tf.tensor(noise, p.shape, "float32")));
            return { next, x0 };
          });
          x.dispose();
          x = next;
          await report(p, { step: i, steps: ts.length, t, sigma: p.schedule.sigmas[t]!, x, x0 });
        }
        return x;
      } catch (e) {
        x.dispose();
        throw e;
      }
    },
  };
}

/** Which σ spacing the Euler samplers use: k-diffusion's discrete default (A1111 "Automatic"), Karras or exponential (see sigmas.ts). */
export type { SigmaSpacing } from "./sigmas";

/**
 * Euler / Euler ancestral in k-diffusion's σ space (`sample_euler`, `sample_euler_ancestral`):
 * x = z·σ₀, then for each σ_i → σ_{i+1} with ε̂ = denoiser at σ_i (so d = (x − x̂₀)/σ = ε̂):
 *   (σ_down, σ_up) = ancestralStep(σ_i, σ_{i+1}, η)      (η = 0: σ_down = σ_{i+1}, σ_up = 0)
 *   x ← x + ε̂·(σ_down − σ_i) + σ_up·z
 * The last σ is 0, so the final x is x̂₀ of the last step.
 */
function euler(name: "Euler a" | "Euler", eta: number, steps: number, spacing: SigmaSpacing): Sampler {
  const sigmasFor = (s: NoiseSchedule) => spacedSigmas(spacing, steps, s);
  sigmasFor(sd15Schedule()); // validate early
  return {
    name,
    steps,
    async sample(opts: SampleOptions): Promise<tf.Tensor4D> {
      const p = prepare(opts, name);
      const sigmas = sigmasFor(p.schedule);
      const size = p.shape.reduce((a, b) => a * b, 1);
      let x = tf.tidy(() => tf.mul(randn(p.shape, p.rng), sigmas[0]!)) as tf.Tensor4D;
      try {
        for (let i = 0; i < steps; i++) {
          const sigma = sigmas[i]!;
          const sigmaNext = sigmas[i + 1]!;
          const t = p.schedule.sigmaToT(sigma);
          const { sigmaDown, sigmaUp } = ancestralStep(sigma, sigmaNext, eta);
          const noise = sigmaUp > 0 ? p.rng.normal(size) : undefined;
          const xs = x;
          const { next, x0 } = tf.tidy(() => {
            const eps = guidedEps(p, tf.mul(xs, 1 / Math.sqrt(sigma * sigma + 1)), t);
            const x0 = tf.sub(xs, tf.mul(sigma, eps)) as tf.Tensor4D;
            let next: tf.Tensor4D = tf.add(xs, tf.mul(eps, sigmaDown - sigma));
            if (noise) next = tf.add(next, tf.mul(sigmaUp, tf.tensor(noise, p.shape, "float32")));
            return { next, x0 };
          });
          x.dispose();
          x = next;
          await report(p, { step: i, steps, t, sigma, x, x0 });
        }
        return x;
      } catch (e) {
        x.dispose();
        throw e;
      }
    },
  };
}

/** A1111 "Euler a": ancestral Euler (η = 1) on the discrete σ spacing unless `sigmas: "karras"`. */
export function eulerAncestral(config: { steps: number; eta?: number; sigmas?: SigmaSpacing }): Sampler {
  const eta = config.eta ?? 1;
  if (!(eta >= 0) || !Number.isFinite(eta)) throw new Error(`eulerAncestral: eta must be ≥ 0, got ${eta}`);
  return euler("Euler a", eta, config.steps, config.sigmas ?? "discrete");
}

/** A1111 "Euler": deterministic Euler (no churn) on the discrete σ spacing unless `sigmas: "karras"`. */
export function eulerSampler(config: { steps: number; sigmas?: SigmaSpacing }): Sampler {
  return euler("Euler", 0, config.steps, config.sigmas ?? "discrete");
}
