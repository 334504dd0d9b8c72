/**
 * The diffusion training loss (spec §4.7) and the text contexts it is conditioned on.
 *
 *     x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε                 (t ~ U{tMin … tMax−1}, ε ~ N(0, I))
 *     L   = mean over B, H, W, C of w·(UNet(x_t, t, c) − target)²      target = ε, or v for v-models
 *
 * The gradient flows into whatever attention processors (hypernetworks) the UNet has; the UNet
 * itself is frozen. Two options beyond A1111, both off by default (then the loss is the line above,
 * computed exactly as before):
 *
 *   noise offset (kohya):  ε ← ε + offset · n,  n ~ N(0, 1) of shape [B, 1, 1, C]  (`offsetNoise`)
 *   min-SNR-γ (Hang et al. 2023, as kohya and diffusers apply it):
 *                          L = mean over B of  w_b · mean over H, W, C of (…)²,
 *                          w_b = min(SNR, γ)/SNR (ε) or min(SNR, γ)/(SNR + 1) (v),  SNR = ᾱ_t/(1−ᾱ_t)
 */
import * as tf from "@tensorflow/tfjs";
import { type Rng, randn } from "../diffusion/random";
import { type NoiseSchedule, qSample, sd15Schedule, vTarget } from "../diffusion/schedule";
import type { UNetModel } from "../unet/unet";

/** What the model predicts: the noise ε (SD 1.x, SD 2-base) or v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2-768-v). */
export type Prediction = "epsilon" | "v";

/** One micro-batch, in UNet space. */
export interface LossBatch {
  x0: tf.Tensor4D;
  noise: tf.Tensor4D;
  t: number[];
  cond: tf.Tensor3D;
  /** Per-pixel loss weights `[B, H, W, 1]`, mean 1 (alpha weights). */
  weight?: tf.Tensor4D;
}

/**
 * The loss of one micro-batch (see the module comment). Returns a scalar the caller owns;
 * differentiable through whatever attention processors (hypernetworks) the UNet has.
 * `minSnrGamma` turns on min-SNR-γ weighting (absent: A1111's plain mean).
 */
export function diffusionLoss(
  unet: UNetModel,
  batch: LossBatch,
  prediction: Prediction = "epsilon",
  schedule: NoiseSchedule = sd15Schedule(),
  minSnrGamma?: number,
): tf.Scalar {
  return tf.tidy(() => {
    const xt = qSample(batch.x0, batch.noise, batch.t, schedule) as tf.Tensor4D;
    const out = unet.forward(xt, batch.t, batch.cond);
    const target = prediction === "v" ? vTarget(batch.x0, batch.noise, batch.t, schedule) : batch.noise;
    let se = tf.squaredDifference(out, target);
    if (batch.weight) se = tf.mul(se, batch.weight);
    if (minSnrGamma === undefined) return tf.mean(se) as tf.Scalar;
    const w = minSnrWeights(batch.t, minSnrGamma, prediction, schedule);
    return tf.mean(tf.mul(tf.mean(se, [1, 2, 3]), tf.tensor1d(w))) as tf.Scalar;
  });
}

/**
 * The min-SNR-γ weight of each sample's loss (kohya's `apply_snr_weight`, diffusers' `snr_gamma`):
 * min(SNR_t, γ)/SNR_t for ε-prediction, min(SNR_t, γ)/(SNR_t + 1) for v-prediction, with
 * SNR_t = ᾱ_t/(1 − ᾱ_t) computed in float64. High-noise steps (SNR < γ) keep weight 1 (ε) or
 * SNR/(SNR+1) (v); low-noise steps are weighted down to γ/SNR.
 */
export function minSnrWeights(
  t: readonly number[],
  gamma: number,
  prediction: Prediction,
  schedule: NoiseSchedule = sd15Schedule(),
): Float32Array {
  return Float32Array.from(t, (ti) => {
    const a = schedule.alphasCumprod[ti];
    if (a === undefined) throw new Error(`minSnrWeights: timestep ${ti} is outside the schedule's 0…${schedule.numTimesteps - 1}`);
    const snr = a / (1 - a);
    return Math.min(snr, gamma) / (prediction === "v" ? snr + 1 : snr);
  });
}

/**
 * Kohya's noise offset: `noise + offset · n` with one n ~ N(0, 1) per image and channel
 * (shape [B, 1, 1, C], broadcast over H and W), drawn from `rng`. A new tensor the caller owns.
 */
export function offsetNoise(noise: tf.Tensor4D, offset: number, rng: Pick<Rng, "normal">): tf.Tensor4D {
  const [b, , , c] = noise.shape;
  return tf.tidy(() => tf.add(noise, tf.mul(randn([b, 1, 1, c], rng), offset)) as tf.Tensor4D);
}

/** Pad text contexts of different lengths to the longest by repeating the last vector (A1111 `stack_conds`), then stack. */
export function stackConds(conds: readonly tf.Tensor3D[]): tf.Tensor3D {
  return tf.tidy(() => {
    const T = Math.max(...conds.map((c) => c.shape[1]));
    const padded = conds.map((c) => {
      const n = c.shape[1];
      if (n === T) return c;
      const last = tf.slice(c, [0, n - 1, 0], [-1, 1, -1]);
      return tf.concat([c, tf.tile(last, [1, T - n, 1])], 1);
    });
    return tf.concat(padded, 0) as tf.Tensor3D;
  });
}

/** Most distinct prompts whose contexts are kept (each a few KB to a few hundred KB). */
const TEXT_CACHE_SIZE = 4096;

/**
 * Text contexts for the prompts of a batch. When prompts are fixed per image (no tag shuffle or
 * dropout) each distinct prompt is encoded once and kept; otherwise every batch is encoded afresh.
 */
export class PromptContexts {
  private readonly cache = new Map<string, tf.Tensor3D>();

  constructor(
    private readonly encodeText: (prompts: string[]) => tf.Tensor3D,
    /** Keep contexts between calls (false when prompts change on every fetch). */
    private readonly cached: boolean,
  ) {}

  /** The contexts `[B, T, width]` of `prompts`, owned by the caller. */
  encode(prompts: string[]): tf.Tensor3D {
    if (!this.cached) return this.encodeText(prompts);
    const rows = prompts.map((p) => {
      let c = this.cache.get(p);
      if (!c) {
        c = this.encodeText([p]);
        if (this.cache.size < TEXT_CACHE_SIZE) this.cache.set(p, c);
        else return { c, own: true };
      }
      return { c, own: false };
    });
    const out = stackConds(rows.map((r) => r.c));
    for (const r of rows) if (r.own) r.c.dispose();
    return out;
  }

  /** Free the kept contexts. */
  dispose(): void {
    for (const t of this.cache.values()) t.dispose();
    this.cache.clear();
  }
}
