/**
 * What the loop trains on: the dataset (images in UNet space, cached), the batch sizes that fit it,
 * and each optimizer step's micro-batches as tensors — x₀, ε, t and the text context c — all drawn
 * from seeds derived from (seed, step, micro-batch) (see `seeds.ts`).
 *
 *   step s of epoch e = ⌊s / stepsPerEpoch⌋ uses batches [k·accum, (k+1)·accum) of the epoch's
 *   seeded order, k = s mod stepsPerEpoch; an epoch is ⌊images / batch⌋ batches.
 */
import * as tf from "@tensorflow/tfjs";
import { TrainingDataset, type DatasetItem } from "../data/dataset";
import { Rng, randint, randn } from "../diffusion/random";
import type { BaseModel } from "../pipeline/base-model";
import { captionEncoder } from "./captions";
import { type LossBatch, PromptContexts } from "./loss";
import { type RunConfig, type TrainOptions, positiveInt } from "./options";
import { SEED_PURPOSE, SwitchableRng, deriveSeed } from "./seeds";

/** Where the feed's notes go: `log` for dataset notes, `warn` for batch sizes that had to shrink. */
export interface FeedReporter {
  log(message: string): void;
  warn(message: string): void;
}

/** One micro-batch ready for the loss, and the first prompt in it (for reports and previews). */
export interface MicroBatch {
  batch: LossBatch;
  prompt: string;
}

/** Micro-batch items → x₀ `[B, H, W, C]` (latents or pixels) and, with alpha weights, w `[B, H, W, 1]`. */
function toTensors(items: DatasetItem[]): { x0: tf.Tensor4D; weight?: tf.Tensor4D } {
  const [h, w, c] = items[0]!.shape;
  const data = new Float32Array(items.length * h * w * c);
  items.forEach((it, i) => data.set((it.latent ?? it.pixels)!, i * h * w * c));
  const x0 = tf.tensor4d(data, [items.length, h, w, c]);
  if (!items[0]!.weight) return { x0 };
  const [wh, ww] = items[0]!.weightShape!;
  const wd = new Float32Array(items.length * wh * ww);
  items.forEach((it, i) => wd.set(it.weight!, i * wh * ww));
  return { x0, weight: tf.tensor4d(wd, [items.length, wh, ww, 1]) };
}

/** The training data of a run, batched per optimizer step; see the module comment. */
export class TrainingFeed {
  private epochCache: { epoch: number; batches: number[][] } | undefined;

  private constructor(
    readonly dataset: TrainingDataset,
    private readonly rng: SwitchableRng,
    private readonly contexts: PromptContexts,
    private readonly cfg: RunConfig,
    /** Images per micro-batch and micro-batches per optimizer step, fitted to the dataset. */
    readonly batchSize: number,
    readonly accumulation: number,
    readonly stepsPerEpoch: number,
  ) {}

  /**
   * Load the dataset of `opts.dataDir` (images → UNet space once, with the dataset's randomness
   * drawn from the run's seeds) and fit the batch size and gradient accumulation to it.
   */
  static async open(base: BaseModel, cfg: RunConfig, opts: TrainOptions, out: FeedReporter): Promise<TrainingFeed> {
    const rng = new SwitchableRng();
    rng.reseed(deriveSeed(cfg.seed, SEED_PURPOSE.load));
    const ds = await TrainingDataset.load(opts.dataDir, {
      name: cfg.name,
      rng,
      width: cfg.width,
      height: cfg.height,
      doNotResize: opts.doNotResize,
      template: opts.template,
      shuffle: opts.shuffleTags,
      keepTokens: opts.keepTokens,
      dropout: opts.tagDropout,
      repeats: opts.repeats,
      // Latent-space models: each image's VAE posterior, encoded once (read back asynchronously).
      encode: base.vae ? (pixels, shape) => base.encodePosterior(pixels, shape) : undefined,
      latentSampling: opts.latentSampling,
      alphaWeights: opts.alphaWeights,
      latentDownscale: base.downscale,
      limitInputPixels: opts.limitInputPixels,
      maxCaptionChars: opts.maxCaptionChars,
    });
    for (const s of ds.skipped) out.log(`dataset: skipped ${s.file}: ${s.reason}`);
    for (const n of ds.notes) out.log(`dataset: ${n}`);
    let batchSize = positiveInt(opts.batchSize, 1, "batchSize");
    if (batchSize > ds.length) {
      out.warn(`batch size ${batchSize} is larger than the dataset (${ds.length}); using ${ds.length}`);
      batchSize = ds.length;
    }
    let accum = positiveInt(opts.gradientAccumulation, 1, "gradientAccumulation");
    const batchesPerEpoch = Math.floor(ds.length / batchSize);
    if (accum > batchesPerEpoch) {
      out.warn(`gradient accumulation ${accum} needs more batches than an epoch has (${batchesPerEpoch}); using ${batchesPerEpoch}`);
      accum = batchesPerEpoch;
    }
    // Prompts that never change (no tag shuffle or dropout) are encoded once each.
    const fixedPrompts = !opts.shuffleTags && !(opts.tagDropout && opts.tagDropout > 0);
    // Fixed captions are encoded one per call (A1111's dataset), changing ones batch by batch
    // (A1111's training loop): see captions.ts.
    const contexts = new PromptContexts(captionEncoder(base, cfg.captionSyntax), fixedPrompts);
    return new TrainingFeed(ds, rng, contexts, cfg, batchSize, accum, Math.floor(batchesPerEpoch / accum));
  }

  /** The micro-batches (dataset indices) of optimizer step `step` (0-based: the step about to be taken). */
  batchesOfStep(step: number): number[][] {
    const epoch = Math.floor(step / this.stepsPerEpoch);
    if (this.epochCache?.epoch !== epoch) {
      this.rng.reseed(deriveSeed(this.cfg.seed, SEED_PURPOSE.epoch, epoch));
      this.epochCache = { epoch, batches: this.dataset.epochBatches(this.batchSize) };
    }
    const k = step % this.stepsPerEpoch;
    return this.epochCache.batches.slice(k * this.accumulation, (k + 1) * this.accumulation);
  }

  /**
   * Micro-batch `j` of step `step` as tensors the caller disposes: the items (prompts, tags and
   * latent samples drawn from the step's data seed), t ~ U{tMin … tMax−1} and ε ~ N(0, I) from its
   * noise seed, and the prompts' text context.
   */
  microBatch(step: number, j: number, indices: readonly number[]): MicroBatch {
    const { seed, timesteps } = this.cfg;
    this.rng.reseed(deriveSeed(seed, SEED_PURPOSE.data, step, j));
    const items = indices.map((i) => this.dataset.get(i));
    const rng = new Rng(deriveSeed(seed, SEED_PURPOSE.noise, step, j));
    const t = Array.from(randint(items.length, timesteps[0], timesteps[1], rng));
    const { x0, weight } = toTensors(items);
    const noise = randn(x0.shape, rng) as tf.Tensor4D;
    const cond = this.contexts.encode(items.map((it) => it.prompt));
    return { batch: { x0, noise, t, cond, ...(weight ? { weight } : {}) }, prompt: items[0]!.prompt };
  }

  /** Free the kept text contexts. */
  dispose(): void {
    this.contexts.dispose();
  }
}
