/**
 * The diffusion training loss (spec §4.7) and the text contexts it is conditioned on.
 *
 *     x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε                 (t ~ U{tMin … tMax−1}, ε ~ N(0, I))
 *     L   = mean over B, H, W, C of w·(UNet(x_t, t, c) − target)²      target = ε, or v for v-models
 *
 * The gradient flows into whatever attention processors (hypernetworks) the UNet has; the UNet
 * itself is frozen.
 */
import * as tf from "@tensorflow/tfjs";
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
 */
export function diffusionLoss(
  unet: UNetModel,
  batch: LossBatch,
  prediction: Prediction = "epsilon",
  schedule: NoiseSchedule = sd15Schedule(),
): tf.Scalar {
  return tf.tidy(() => {
    const xt = qSample(batch.x0, batch.noise, batch.t, schedule) as tf.Tensor4D;
    const out = unet.forward(xt, batch.t, batch.cond);
    const target = prediction === "v" ? vTarget(batch.x0, batch.noise, batch.t, schedule) : batch.noise;
    let se = tf.squaredDifference(out, target);
    if (batch.weight) se = tf.mul(se, batch.weight);
    return tf.mean(se) as tf.Scalar;
  });
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
