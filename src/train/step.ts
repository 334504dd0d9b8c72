/**
 * One optimizer step's arithmetic, apart from the loop that orders it:
 *
 *     g  = Σ_j ∂(L_j / accum)/∂θ            over the step's `accum` micro-batches (θ: the hypernetwork)
 *                                            (with a noise offset, each micro-batch's ε is shifted first)
 *     stop if L or ‖g‖₂ is not finite, or L > factor × running average of L   (the NaN guard)
 *     g ← clip(g)                            by value or by global p-norm, on the true gradient
 *     θ ← AdamW(θ, g, lr)
 */
import * as tf from "@tensorflow/tfjs";
import type { NoiseSchedule } from "../diffusion/schedule";
import type { Attachment } from "../hypernet/attach";
import type { Param } from "../nn/module";
import type { UNetModel } from "../unet/unet";
import type { AdamW } from "./adamw";
import type { TrainingFeed } from "./feed";
import { Rng } from "../diffusion/random";
import { globalNorm, globalPNorm } from "./grad-norm";
import { type Prediction, diffusionLoss, offsetNoise } from "./loss";
import type { ClipMode } from "./options";
import { SEED_PURPOSE, deriveSeed } from "./seeds";

/**
 * Gradient clipping as PyTorch does it (A1111 calls these two): `"value"` clamps every element to
 * [−c, c] (`clip_grad_value_`); `"norm"` scales all gradients by `min(1, c / (‖g‖_p + 1e-6))`, with
 * ‖g‖_p the global p-norm over every tensor (`clip_grad_norm_(…, norm_type=p)`; p = `normType`,
 * default 2 as in A1111, `Infinity` for the largest |g|). Returns new tensors; the caller disposes
 * the inputs. `norm` (‖g‖_p) may be passed when already known; otherwise it is computed and the
 * factor applied on the device, without a read-back.
 */
export function clipGradients(
  grads: readonly tf.Tensor[],
  mode: Exclude<ClipMode, "disabled">,
  c: number,
  norm?: number,
  normType = 2,
): tf.Tensor[] {
  if (mode === "value") return grads.map((g) => tf.clipByValue(g, -c, c));
  if (norm !== undefined) {
    const coef = Math.min(1, c / (norm + 1e-6));
    return grads.map((g) => tf.mul(g, coef));
  }
  return tf.tidy(() => {
    const coef = tf.minimum(1, tf.div(c, tf.add(globalPNorm(grads, normType), 1e-6)));
    return grads.map((g) => tf.mul(g, coef));
  });
}

/** True when every weight in `params` is finite (one asynchronous read-back, so any backend works). */
export async function weightsFinite(params: readonly Param[]): Promise<boolean> {
  if (params.length === 0) return true;
  const ok = tf.tidy(() => params.map((p) => tf.all(tf.isFinite(p.value.flatten()))).reduce((a, b) => tf.logicalAnd(a, b)));
  const v = (await ok.data())[0];
  ok.dispose();
  return v === 1;
}

/** ‖g‖₂ over all gradients, read back asynchronously. */
export async function gradientNorm(grads: readonly tf.Tensor[]): Promise<number> {
  const normT = globalNorm(grads);
  const n = (await normT.data())[0]!;
  normT.dispose();
  return n;
}

/** What computing a step's gradient needs. */
export interface GradientContext {
  unet: UNetModel;
  attachment: Attachment;
  feed: TrainingFeed;
  /** The variables trained (the model's widths only), in the optimizer's order. */
  vars: readonly tf.Variable[];
  prediction: Prediction;
  schedule: NoiseSchedule;
  seed: number;
  /** Kohya's noise offset (0 or absent: off). */
  noiseOffset?: number;
  /** Min-SNR-γ loss weighting (absent: off). */
  minSnrGamma?: number;
}

/**
 * g = Σ_j ∂(L_j / accum)/∂θ over the micro-batches of step `step`, with the mean loss and the first
 * prompt of the step. Each micro-batch's dropout masks come from its own derived seed. The caller
 * owns (and disposes) the returned gradients.
 */
export async function accumulateGradients(
  ctx: GradientContext,
  step: number,
): Promise<{ grads: tf.Tensor[]; loss: number; prompt: string }> {
  const batches = ctx.feed.batchesOfStep(step);
  let grads: tf.Tensor[] | undefined;
  let loss = 0;
  let prompt = "";
  for (let j = 0; j < batches.length; j++) {
    const mb = ctx.feed.microBatch(step, j, batches[j]!);
    if (j === 0) prompt = mb.prompt;
    if (ctx.noiseOffset) {
      // Its own generator, so the offset draws shift nothing else the step draws.
      const shifted = offsetNoise(mb.batch.noise, ctx.noiseOffset, new Rng(deriveSeed(ctx.seed, SEED_PURPOSE.noiseOffset, step, j)));
      mb.batch.noise.dispose();
      mb.batch.noise = shifted;
    }
    ctx.attachment.setSeed(deriveSeed(ctx.seed, SEED_PURPOSE.dropout, step, j) >>> 2);
    const lossOf = (): tf.Scalar =>
      tf.div(diffusionLoss(ctx.unet, mb.batch, ctx.prediction, ctx.schedule, ctx.minSnrGamma), batches.length) as tf.Scalar;
    const { value, grads: g } = tf.variableGrads(lossOf, [...ctx.vars]);
    for (const t of [mb.batch.x0, mb.batch.noise, mb.batch.cond, mb.batch.weight]) t?.dispose();
    loss += (await value.data())[0]!;
    value.dispose();
    const list = ctx.vars.map((v) => g[v.name]!);
    if (!grads) grads = list;
    else {
      const sum = grads.map((a, k) => tf.add(a, list[k]!));
      for (const t of [...grads, ...list]) t.dispose();
      grads = sum;
    }
  }
  return { grads: grads!, loss, prompt };
}

/** The running loss average (exponential over the last ~20 steps; a plain mean before that). */
export class RunningLoss {
  constructor(
    /** The average, null before the first step. */
    public value: number | null = null,
    /** Steps that went into it. */
    public count = 0,
  ) {}

  add(loss: number): void {
    this.value = this.value === null ? loss : this.value + (loss - this.value) / Math.min(this.count + 1, 20);
    this.count += 1;
  }
}

/**
 * Why step `step + 1` must not be applied, or undefined when it may: a non-finite loss or gradient
 * norm, or (after `warmup` steps, with `factor` > 0) a loss above `factor` × the running average.
 */
export function unsafeStep(
  loss: number,
  gradNorm: number,
  step: number,
  average: RunningLoss,
  factor: number,
  warmup: number,
): string | undefined {
  if (!Number.isFinite(loss)) return `the loss became ${loss} at step ${step + 1}`;
  if (!Number.isFinite(gradNorm)) return `the gradient became non-finite at step ${step + 1} (loss ${loss.toFixed(6)})`;
  const avg = average.value;
  if (factor > 0 && avg !== null && average.count >= warmup && loss > factor * avg) {
    return `the loss jumped to ${loss.toPrecision(4)} at step ${step + 1}, ${(loss / avg).toFixed(1)}× its running average ${avg.toPrecision(4)}`;
  }
  return undefined;
}

/**
 * θ ← AdamW(θ, clip(g), lr). `grads` holds the gradients of the trained parameters, in order;
 * `trained[i]` says whether the optimizer's parameter i is one of them (the others get no update
 * at all). `clip` is the mode, this step's value and the norm's p (absent: no clipping; p default 2);
 * `gradNorm` is ‖g‖₂, already known. Disposes `grads`.
 */
export function applyUpdate(
  optimizer: AdamW,
  grads: tf.Tensor[],
  trained: readonly boolean[],
  lr: number,
  clip: { mode: Exclude<ClipMode, "disabled">; value: number; normType?: number } | undefined,
  gradNorm: number,
): void {
  let g = grads;
  if (clip) {
    const p = clip.normType ?? 2;
    g = clipGradients(grads, clip.mode, clip.value, p === 2 ? gradNorm : undefined, p);
    for (const t of grads) t.dispose();
  }
  let k = 0;
  optimizer.step(
    trained.map((t) => (t ? g[k++]! : null)),
    lr,
  );
  for (const t of g) t.dispose();
}
