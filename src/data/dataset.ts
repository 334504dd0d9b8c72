/**
 * The training dataset: a folder of images and captions, cached on the host, yielding per fetch
 *   - the image as pixels (Float32Array, [-1, 1], HWC) or as a latent from the trainer's `encode`,
 *   - a fresh prompt (random template line, `[filewords]` and `[name]` filled, tags shuffled/dropped),
 *   - optionally a loss-weight map from the PNG alpha channel.
 *
 * It knows nothing about any model: the trainer passes `encode` (e.g. the VAE posterior) and a seeded
 * random generator. A1111's dataset (spec §4.5) with its known faults fixed: the prompt is drawn anew
 * on every fetch (A1111 fixed one line per image when tags were not shuffled), uniform alpha gives
 * weights of 1 instead of NaN, non-square weight maps keep their axes, and "repeats per epoch" repeats.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import sharp from "sharp";
import { captionFromFilename, DEFAULT_MAX_CAPTION_CHARS, limitCaption } from "./captions";
import { MAX_IMAGE_FILE_BYTES, readCaptionFile, readRegularFile } from "./entries";
import { decodeImage, DEFAULT_LIMIT_INPUT_PIXELS, ImageDecodeError, sniffFormat, type RawImage } from "./images";
import { loadTemplate, makePrompt, type Rng, type TagOptions } from "./templates";

export type { Rng } from "./templates";

/**
 * What `encode` returns: a diagonal Gaussian over the latent, already in the units the UNet sees
 * (i.e. multiplied by the VAE scale factor, 0.18215 for SD 1.x). `std` absent means a point value.
 */
export interface LatentDistribution {
  /** [h, w, c] */
  shape: [number, number, number];
  mean: Float32Array;
  std?: Float32Array;
}

/** Encoder the trainer passes: pixels in [-1, 1], HWC with 3 channels → latent distribution. */
export type EncodeFn = (pixels: Float32Array, shape: [number, number, number]) => LatentDistribution | Promise<LatentDistribution>;

/**
 * How a latent is taken from the posterior (A1111 "latent sampling method"): one sample drawn at
 * load time and reused (`once`), the mean (`deterministic`), or a new sample on every fetch (`random`).
 */
export type LatentSampling = "once" | "deterministic" | "random";

/** Options of `TrainingDataset.load`. */
export interface DatasetOptions extends TagOptions {
  /** Name substituted for `[name]` (the hypernetwork's name). */
  name: string;
  /** Seeded uniform generator used for prompts, tags, latent samples and batch order. */
  rng: Rng;
  /** Target width/height (default 512); images are stretched to it unless `doNotResize`. */
  width?: number;
  height?: number;
  /** Keep every image's own size; images are grouped into buckets of equal size (default false). */
  doNotResize?: boolean;
  /** Stock template name, template file path, or the lines themselves (default "style_filewords"). */
  template?: string | readonly string[];
  /** Caption-from-filename word regex and join string (A1111 settings; used when there is no `.txt`). */
  filenameWordRegex?: string;
  filenameJoin?: string;
  /** Times each image appears per epoch (default 1). */
  repeats?: number;
  /** Encoder producing latents; without it the dataset yields pixels. */
  encode?: EncodeFn;
  /** Latent sampling method when `encode` is given (default "once"). */
  latentSampling?: LatentSampling;
  /** Read the alpha channel as a per-pixel loss weight (default false). */
  alphaWeights?: boolean;
  /** Pixel-to-latent downscale used for weight maps when there is no encoder (default 8). */
  latentDownscale?: number;
  /**
   * Most pixels (width × height) an image may claim; larger ones are skipped before decoding, with
   * a reason saying how to raise this (default `DEFAULT_LIMIT_INPUT_PIXELS`, 2^27 ≈ 134 M; `false`:
   * no limit).
   */
  limitInputPixels?: number | false;
  /**
   * Longest caption used, in characters (default `DEFAULT_MAX_CAPTION_CHARS`, 4,096); a longer one
   * is cut at a tag boundary with a note naming its file, so a runaway `.txt` cannot become a
   * conditioning of thousands of 75-token windows.
   */
  maxCaptionChars?: number;
}

/** One fetched training example (host arrays, HWC). */
export interface DatasetItem {
  /** index into the dataset (0 … length−1) and the image it refers to */
  index: number;
  image: number;
  file: string;
  caption: string;
  prompt: string;
  /** shape of `pixels` or `latent`: [h, w, c] */
  shape: [number, number, number];
  pixels?: Float32Array;
  latent?: Float32Array;
  /** loss weights, [h, w] at the latent's (or downscaled image's) resolution, mean 1 */
  weight?: Float32Array;
  weightShape?: [number, number];
}

interface Entry {
  file: string;
  caption: string;
  width: number;
  height: number;
  shape: [number, number, number];
  pixels?: Float32Array;
  mean?: Float32Array;
  std?: Float32Array;
  fixedLatent?: Float32Array;
  weight?: Float32Array;
  weightShape?: [number, number];
}

/** A standard normal sample (Box–Muller) from a uniform generator. */
export function gaussian(rng: Rng): number {
  const u1 = 1 - rng.next();
  const u2 = rng.next();
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

function sample(mean: Float32Array, std: Float32Array, rng: Rng): Float32Array {
  const out = new Float32Array(mean.length);
  for (let i = 0; i < out.length; i++) out[i] = mean[i]! + std[i]! * gaussian(rng);
  return out;
}

/**
 * Loss weights from an alpha channel: shift to minimum 0 and divide by the mean, so the weights
 * average 1 and fully transparent pixels weigh nothing. A uniform alpha (nothing to weigh) gives
 * all ones, where A1111 divided 0 by 0.
 */
export function alphaToWeights(alpha: ArrayLike<number>): Float32Array {
  const n = alpha.length;
  let min = Infinity;
  for (let i = 0; i < n; i++) min = Math.min(min, alpha[i]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += alpha[i]! - min;
  const out = new Float32Array(n);
  if (!(sum > 0)) return out.fill(1);
  const mean = sum / n;
  for (let i = 0; i < n; i++) out[i] = (alpha[i]! - min) / mean;
  return out;
}

/** A folder of training images with captions, cached in memory; see the module comment. */
export class TrainingDataset {
  /** Files in the folder that were not used, with the reason. */
  readonly skipped: { file: string; reason: string }[] = [];
  /** Things worth knowing about files that were used (e.g. a caption read as Latin-1). */
  readonly notes: string[] = [];

  private constructor(
    private readonly entries: Entry[],
    private readonly lines: string[],
    private readonly opts: DatasetOptions,
  ) {}

  /**
   * Read every image in `dir` (non-recursive, name order) with its caption: `<stem>.txt` if present,
   * else the file name by A1111's rule. Images are stretched to width × height (bicubic, as A1111)
   * unless `doNotResize`; latents are computed here once with `encode`, if given.
   */
  static async load(dir: string, opts: DatasetOptions): Promise<TrainingDataset> {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new Error(`dataset folder ${dir} does not exist or is not a folder`);
    const repeats = opts.repeats ?? 1;
    if (!Number.isInteger(repeats) || repeats < 1) throw new Error(`dataset: repeats must be a positive integer, got ${repeats}`);
    const dropout = opts.dropout ?? 0;
    if (!(dropout >= 0 && dropout < 1)) throw new Error(`dataset: tag dropout must be in [0, 1), got ${dropout}`);
    const lines = loadTemplate(opts.template ?? "style_filewords");
    const W = opts.width ?? 512;
    const H = opts.height ?? 512;
    const down = opts.latentDownscale ?? 8;
    const pixelLimit = opts.limitInputPixels ?? DEFAULT_LIMIT_INPUT_PIXELS;
    const maxChars = opts.maxCaptionChars ?? DEFAULT_MAX_CAPTION_CHARS;
    if (!Number.isInteger(maxChars) || maxChars < 1)
      throw new Error(`dataset: maxCaptionChars must be a positive integer, got ${maxChars}`);
    const entries: Entry[] = [];
    const skipped: { file: string; reason: string }[] = [];
    const notes: string[] = [];
    for (const name of fs.readdirSync(dir).sort()) {
      // Captions are read, and any problem with one reported, with their image.
      if (path.extname(name).toLowerCase() === ".txt") continue;
      const full = path.join(dir, name);
      const read = readRegularFile(full, MAX_IMAGE_FILE_BYTES, "image");
      if (!("bytes" in read)) {
        skipped.push({ file: name, reason: read.problem });
        continue;
      }
      const bytes = read.bytes;
      if (!sniffFormat(bytes)) {
        skipped.push({ file: name, reason: "not an image" });
        continue;
      }
      let img: RawImage;
      try {
        img = await decodeImage(name, bytes, opts.alphaWeights ?? false, pixelLimit);
      } catch (err) {
        if (err instanceof ImageDecodeError) {
          skipped.push({ file: name, reason: err.message });
          continue;
        }
        throw err;
      }
      if (!opts.doNotResize && (img.width !== W || img.height !== H)) {
        const { data, info } = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: img.channels as 3 | 4 } })
          .resize(W, H, { fit: "fill", kernel: "cubic" })
          .raw()
          .toBuffer({ resolveWithObject: true });
        img = {
          data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
          width: info.width,
          height: info.height,
          channels: info.channels,
        };
      }
      const stem = path.parse(name).name;
      const txt = path.join(dir, stem + ".txt");
      let caption: string | undefined;
      if (fs.lstatSync(txt, { throwIfNoEntry: false })) {
        const text = readCaptionFile(txt);
        if ("problem" in text) {
          skipped.push({ file: stem + ".txt", reason: `${text.problem}; ${name} is captioned from its file name instead` });
        } else {
          caption = text.text.trim();
          if (text.note) notes.push(text.note);
          const limited = limitCaption(caption, maxChars);
          if (limited.dropped > 0) {
            notes.push(
              `${txt}: caption is ${caption.length.toLocaleString("en-US")} characters; only the first ${limited.text.length.toLocaleString("en-US")} are used (limit ${maxChars.toLocaleString("en-US")}: raise maxCaptionChars to keep more)`,
            );
            caption = limited.text;
          }
        }
      }
      caption ??= captionFromFilename(stem, { wordRegex: opts.filenameWordRegex, joinString: opts.filenameJoin });

      // Pixels x/127.5 − 1, HWC RGB.
      const n = img.width * img.height;
      const pixels = new Float32Array(n * 3);
      for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) pixels[i * 3 + c] = img.data[i * img.channels + c]! / 127.5 - 1;
      const entry: Entry = { file: name, caption, width: img.width, height: img.height, shape: [img.height, img.width, 3] };
      if (opts.encode) {
        const dist = await opts.encode(pixels, [img.height, img.width, 3]);
        entry.shape = [...dist.shape];
        const sampling = opts.latentSampling ?? "once";
        // Without a std (a non-Gaussian encoder) every method is the deterministic one, as in A1111.
        if (!dist.std || sampling === "deterministic") entry.fixedLatent = dist.mean;
        else if (sampling === "once") entry.fixedLatent = sample(dist.mean, dist.std, opts.rng);
        else {
          entry.mean = dist.mean;
          entry.std = dist.std;
        }
      } else {
        entry.pixels = pixels;
      }
      if (opts.alphaWeights) {
        const [lh, lw] = opts.encode
          ? [entry.shape[0], entry.shape[1]]
          : [Math.max(1, Math.round(img.height / down)), Math.max(1, Math.round(img.width / down))];
        const alpha = new Uint8Array(n);
        for (let i = 0; i < n; i++) alpha[i] = img.channels === 4 ? img.data[i * 4 + 3]! : 255;
        const small = await sharp(alpha, { raw: { width: img.width, height: img.height, channels: 1 } })
          .resize(lw, lh, { fit: "fill", kernel: "cubic" })
          .extractChannel(0)
          .raw()
          .toBuffer();
        entry.weight = alphaToWeights(small);
        entry.weightShape = [lh, lw];
      }
      entries.push(entry);
    }
    if (entries.length === 0)
      throw new Error(
        `dataset folder ${dir} has no usable images${skipped.length ? ` (skipped: ${skipped.map((s) => s.file).join(", ")})` : ""}`,
      );
    const ds = new TrainingDataset(entries, lines, opts);
    ds.skipped.push(...skipped);
    ds.notes.push(...notes);
    return ds;
  }

  /** Number of distinct images. */
  get imageCount(): number {
    return this.entries.length;
  }

  /** Examples per epoch: images × repeats. */
  get length(): number {
    return this.entries.length * (this.opts.repeats ?? 1);
  }

  /** The template lines in use. */
  get templateLines(): readonly string[] {
    return this.lines;
  }

  /** Caption of image `image` (0 … imageCount−1). */
  caption(image: number): string {
    return this.entries[image]!.caption;
  }

  /** A fresh prompt for dataset index `index`. */
  prompt(index: number): string {
    const e = this.entry(index);
    return makePrompt(this.lines, e.caption, this.opts.name, this.opts, this.opts.rng);
  }

  private entry(index: number): Entry {
    if (!Number.isInteger(index) || index < 0 || index >= this.length)
      throw new RangeError(`dataset index ${index} is outside 0…${this.length - 1}`);
    return this.entries[index % this.entries.length]!;
  }

  /** Fetch example `index` (0 … length−1): data, a fresh prompt, and weights when enabled. */
  get(index: number): DatasetItem {
    const e = this.entry(index);
    const item: DatasetItem = {
      index,
      image: index % this.entries.length,
      file: e.file,
      caption: e.caption,
      prompt: makePrompt(this.lines, e.caption, this.opts.name, this.opts, this.opts.rng),
      shape: e.shape,
    };
    if (e.pixels) item.pixels = e.pixels;
    else item.latent = e.fixedLatent ?? sample(e.mean!, e.std!, this.opts.rng);
    if (e.weight) {
      item.weight = e.weight;
      item.weightShape = e.weightShape;
    }
    return item;
  }

  /** Dataset indices grouped by image size, key "WxH" (one bucket unless `doNotResize`). */
  buckets(): Map<string, number[]> {
    const out = new Map<string, number[]>();
    for (let i = 0; i < this.length; i++) {
      const e = this.entry(i);
      const key = `${e.width}x${e.height}`;
      if (!out.has(key)) out.set(key, []);
      out.get(key)!.push(i);
    }
    return out;
  }

  /**
   * One epoch of batches, each drawn from a single size bucket (A1111 `GroupedBatchSampler`): every
   * bucket is shuffled and cut into full batches; the remaining `⌊length/batch⌋ − full` batches come
   * from buckets chosen in proportion to their leftovers, filled by sampling that bucket with
   * replacement; the batch order is shuffled. `batchSize` is clamped to the dataset length.
   */
  epochBatches(batchSize: number): number[][] {
    const rng = this.opts.rng;
    const bs = Math.max(1, Math.min(Math.floor(batchSize), this.length));
    const shuffle = <T>(a: T[]): T[] => {
      for (let i = a.length - 1; i > 0; i--) {
        const j = Math.floor(rng.next() * (i + 1));
        [a[i], a[j]] = [a[j]!, a[i]!];
      }
      return a;
    };
    const batches: number[][] = [];
    const leftovers: { idx: number[]; count: number }[] = [];
    for (const idx of this.buckets().values()) {
      const s = shuffle([...idx]);
      const full = Math.floor(s.length / bs);
      for (let b = 0; b < full; b++) batches.push(s.slice(b * bs, (b + 1) * bs));
      if (s.length % bs) leftovers.push({ idx, count: s.length % bs });
    }
    const target = Math.floor(this.length / bs);
    const totalLeft = leftovers.reduce((s, l) => s + l.count, 0);
    while (batches.length < target && totalLeft > 0) {
      let r = rng.next() * totalLeft;
      let pick = leftovers[leftovers.length - 1]!;
      for (const l of leftovers) {
        if (r < l.count) {
          pick = l;
          break;
        }
        r -= l.count;
      }
      const batch: number[] = [];
      for (let k = 0; k < bs; k++) batch.push(pick.idx[Math.floor(rng.next() * pick.idx.length)]!);
      batches.push(batch);
    }
    return shuffle(batches);
  }
}
