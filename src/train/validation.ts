/**
 * A validation loss on a fixed batch: the same images, timesteps and noise every time it is
 * measured, so its curve moves only because the network changed — unlike the training loss, whose
 * t and ε are new on every step. With held-out images (`validation.dataDir`) a validation loss that
 * turns up while the training loss keeps falling is over-fitting; on the training images it is a
 * noise-free view of the fit.
 *
 *     for each validation image i and stratum k = 0 … K−1 of the timestep range [lo, hi):
 *         t_ik = lo + ⌊(k + u_ik)·(hi − lo)/K⌋       u_ik ~ U[0, 1)   (one t per stratum)
 *         ε_ik ~ N(0, I)                              drawn once from the validation seed
 *         L_ik = mean (UNet(√ᾱ_t·x₀ᵢ + √(1−ᾱ_t)·ε_ik, t_ik, cᵢ) − target)²    (the plain loss, alpha weights if on)
 *     validation loss = mean over i, k of L_ik
 *
 * The loss is the plain one: min-SNR-γ weighting and the noise offset, when training uses them, are
 * left out, so validation curves of runs with different loss options stay comparable (and the
 * offset, random per image, would make the batch no longer fixed).
 *
 * The batch is built once before the first step, and measured with the network in inference mode
 * (no dropout). It draws from its own generator and never from the training's, so a run with
 * validation on trains exactly as the same run with it off.
 */
import * as tf from "@tensorflow/tfjs";
import { type LatentSampling, type DatasetItem, TrainingDataset } from "../data/dataset";
import { Rng, randn } from "../diffusion/random";
import { type NoiseSchedule, qSample, vTarget } from "../diffusion/schedule";
import type { Attachment } from "../hypernet/attach";
import type { BaseModel } from "../pipeline/base-model";
import type { UNetModel } from "../unet/unet";
import { captionEncoder } from "./captions";
import type { ValidationSample } from "./events";
import type { LossBatch, Prediction } from "./loss";
import { type RunConfig, type TrainOptions, positiveInt } from "./options";
import { deriveSeed } from "./seeds";

/** How the validation batch is made (option `validation` of `train`). */
export interface ValidationOptions {
  /**
   * A folder of held-out images (captioned like `dataDir`). Default: the first `images` images of
   * the training set — a fixed batch, but not held out, so it shows the fit and not over-fitting.
   */
  dataDir?: string;
  /** Images in the batch (default 4; fewer when the folder has fewer). */
  images?: number;
  /** Timesteps per image, one drawn in each of this many equal strata of the range (default 4). */
  timesteps?: number;
  /** Seed of the batch's timesteps and noise (default 0). */
  seed?: number;
}

/** A word of the validation seed stream, so it never meets a training stream (see `seeds.ts`). */
const VALIDATION_PURPOSE = 0x7a11d;

/** One image of the batch at its K timesteps: tensors kept for the whole run. */
interface Row {
  batch: LossBatch;
  image: number;
  file: string;
}

/**
 * The loss of every sample of `batch` separately, `[B]` (the caller owns it): the same formula as
 * `diffusionLoss` (which is the mean of these), with the mean taken per sample.
 */
export function perSampleLoss(unet: UNetModel, batch: LossBatch, prediction: Prediction, schedule: NoiseSchedule): tf.Tensor1D {
  return tf.tidy(() => {
    const xt = qSample(batch.x0, batch.noise, batch.t, schedule) as tf.Tensor4D;
    const out = unet.forward(xt, batch.t, batch.cond);
    const target = prediction === "v" ? vTarget(batch.x0, batch.noise, batch.t, schedule) : batch.noise;
    let se = tf.squaredDifference(out, target);
    if (batch.weight) se = tf.mul(se, batch.weight);
    return tf.mean(se, [1, 2, 3]) as tf.Tensor1D;
  });
}

/** K timesteps in [lo, hi), one uniformly drawn in each of K equal strata. */
export function stratifiedTimesteps(k: number, lo: number, hi: number, rng: Rng): number[] {
  return Array.from({ length: k }, (_, j) => Math.min(hi - 1, lo + Math.floor(((j + rng.nextFloat()) * (hi - lo)) / k)));
}

/** The fixed validation batch of a run; see the module comment. */
export class ValidationBatch {
  private constructor(
    private readonly rows: Row[],
    private readonly prediction: Prediction,
    private readonly schedule: NoiseSchedule,
  ) {}

  /** Samples in the batch (images × timesteps). */
  get size(): number {
    return this.rows.reduce((a, r) => a + r.batch.t.length, 0);
  }

  /**
   * Build the batch: items from `validation.dataDir` (loaded here, with its own generator) or the
   * first images of `training` (read once now; the trainer re-seeds that generator before every
   * use, so reading it here changes nothing the run draws).
   */
  static async build(
    base: BaseModel,
    cfg: Pick<RunConfig, "name" | "width" | "height" | "timesteps" | "prediction" | "captionSyntax">,
    opts: Pick<TrainOptions, "template" | "doNotResize" | "latentSampling" | "alphaWeights" | "limitInputPixels" | "maxCaptionChars">,
    v: ValidationOptions,
    training: TrainingDataset,
    schedule: NoiseSchedule,
  ): Promise<ValidationBatch> {
    const nImages = positiveInt(v.images, 4, "validation.images");
    const k = positiveInt(v.timesteps, 4, "validation.timesteps");
    const seed = v.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`train: validation.seed must be a non-negative integer, got ${seed}`);
    const [lo, hi] = cfg.timesteps;
    if (k > hi - lo) throw new Error(`train: validation.timesteps ${k} is more than the ${hi - lo} timesteps training draws from`);
    let ds = training;
    if (v.dataDir !== undefined) {
      const rng = new Rng(deriveSeed(seed, VALIDATION_PURPOSE, 0));
      const sampling: LatentSampling = opts.latentSampling === "random" ? "once" : (opts.latentSampling ?? "once");
      ds = await TrainingDataset.load(v.dataDir, {
        name: cfg.name,
        rng: { next: () => rng.nextFloat() },
        width: cfg.width,
        height: cfg.height,
        doNotResize: opts.doNotResize,
        template: opts.template,
        encode: base.vae ? (pixels, shape) => base.encodePosterior(pixels, shape) : undefined,
        latentSampling: sampling,
        alphaWeights: opts.alphaWeights,
        latentDownscale: base.downscale,
        limitInputPixels: opts.limitInputPixels,
        maxCaptionChars: opts.maxCaptionChars,
      });
      if (ds.length === 0) throw new Error(`train: the validation folder ${v.dataDir} has no usable images`);
    }
    const items: DatasetItem[] = [];
    const seen = new Set<number>();
    for (let i = 0; i < ds.length && items.length < nImages; i++) {
      const item = ds.get(i);
      // With repeats the dataset lists each image several times: take each image once.
      if (!seen.has(item.image)) {
        seen.add(item.image);
        items.push(item);
      }
    }
    const encode = captionEncoder(base, cfg.captionSyntax);
    const rows = items.map((item, i) => makeRow(encode, item, i, k, [lo, hi], seed));
    return new ValidationBatch(rows, cfg.prediction, schedule);
  }

  /**
   * The validation loss of the network attached now, measured in inference mode (the attachment's
   * training flag is restored afterwards): the mean and every sample's own loss.
   */
  async evaluate(unet: UNetModel, attachment: Attachment): Promise<{ loss: number; samples: ValidationSample[] }> {
    const wasTraining = attachment.training;
    attachment.training = false;
    const samples: ValidationSample[] = [];
    try {
      for (const row of this.rows) {
        const lossT = perSampleLoss(unet, row.batch, this.prediction, this.schedule);
        const losses = await lossT.data();
        lossT.dispose();
        row.batch.t.forEach((t, j) => samples.push({ image: row.image, file: row.file, t, loss: losses[j]! }));
      }
    } finally {
      attachment.training = wasTraining;
    }
    return { loss: samples.reduce((a, s) => a + s.loss, 0) / samples.length, samples };
  }

  /** Free the batch's tensors. */
  dispose(): void {
    for (const r of this.rows) for (const t of [r.batch.x0, r.batch.noise, r.batch.cond, r.batch.weight]) t?.dispose();
    this.rows.length = 0;
  }
}

/** Image `i` of the batch at its K stratified timesteps with its own noise, as kept tensors. */
function makeRow(
  encode: (captions: string[]) => tf.Tensor3D,
  item: DatasetItem,
  i: number,
  k: number,
  range: [number, number],
  seed: number,
): Row {
  const rng = new Rng(deriveSeed(seed, VALIDATION_PURPOSE, 1, i));
  const t = stratifiedTimesteps(k, range[0], range[1], rng);
  const [h, w, c] = item.shape;
  const data = (item.latent ?? item.pixels)!;
  const batch = tf.tidy(() => {
    const x0 = tf.tile(tf.tensor4d(data, [1, h, w, c]), [k, 1, 1, 1]) as tf.Tensor4D;
    const noise = randn([k, h, w, c], rng) as tf.Tensor4D;
    const one = encode([item.prompt]); // one caption per call, as A1111's dataset encodes it
    const cond = tf.tile(one, [k, 1, 1]) as tf.Tensor3D;
    const weight = item.weight
      ? (tf.tile(tf.tensor4d(item.weight, [1, item.weightShape![0], item.weightShape![1], 1]), [k, 1, 1, 1]) as tf.Tensor4D)
      : undefined;
    return { x0, noise, cond, ...(weight ? { weight } : {}) };
  });
  return { batch: { ...batch, t }, image: i, file: item.file };
}
