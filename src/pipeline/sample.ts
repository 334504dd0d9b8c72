/**
 * The one sampling path: prompts → images with a base model, shared by txt2img, the trainer's
 * previews, the tiny model's sampler and the demo.
 *
 *   per UNet batch of prompts:
 *     [cond…, uncond] = encodeText([prompts…, negative prompt])     one encoder call, so both sides
 *                                                                  get the same number of 77-token windows
 *     z_T ~ N(0, I) from the generator ──sampler (CFG: ε = ε_u + s·(ε_c − ε_u))──▶ z_0
 *     images = decode(z_0)                                         NHWC in [-1, 1]
 *
 * Every batch draws its noise from one generator, in order, so a seed gives the same images however
 * they are later used. Whatever networks are attached to the UNet take part; attaching them is the
 * caller's business (txt2img attaches the prompt's, the trainer keeps its own attached).
 */
import * as tf from "@tensorflow/tfjs";
import type { NoiseRng } from "../diffusion/a1111-rng";
import { Rng } from "../diffusion/random";
import type { StepCallback } from "../diffusion/samplers";
import { type SamplerName, samplerByName } from "../diffusion/sampler-names";
import type { BaseModel } from "./base-model";
import { type EncodeTexts, PromptConditioning, a1111ScheduleSteps, combineMulticond } from "./prompt-conditioning";

/** Options of {@link sampleImages}. Defaults are A1111's txt2img defaults. */
export interface SampleImagesOptions {
  /** One prompt per image, or a single prompt used for all `count` images (encoded once). */
  prompts: readonly string[];
  /** Images to make (default `prompts.length`; with one prompt, any number). */
  count?: number;
  /** Negative prompt, shared by every image (default ""). */
  negativePrompt?: string;
  /** Any A1111 sampler name (default "Euler a"; see `samplerByName`). */
  sampler?: SamplerName | string;
  /** Sampling steps (default 20). */
  steps?: number;
  /** Classifier-free guidance scale (default 7; 1 turns guidance off). */
  cfgScale?: number;
  /** Seed of the noise; ignored when `rng` is given. One of the two is required. */
  seed?: number;
  /** Draw the noise from this generator instead (it is advanced). */
  rng?: NoiseRng;
  /** Image size in pixels (default: the model's native size). */
  width?: number;
  height?: number;
  /** Images per UNet batch (default: all at once). */
  batchSize?: number;
  /** Called after every sampler step of every batch. */
  callback?: StepCallback;
  /**
   * A1111's prompt editing (`[a:b:when]`), alternation (`[a|b]`) and `AND` (with weights), read
   * from the prompts and the negative prompt: when any is used, each batch's conditioning comes
   * from a `PromptConditioning` built with this encoder batch call (A1111's per-model-call
   * schedule and composable CFG); otherwise the plain path below runs unchanged. Absent: the
   * prompts are encoded literally, as always. `oldScheduling`: A1111's "Use old prompt editing
   * timelines" setting (see `promptSchedules`).
   */
  promptSyntax?: { encode: EncodeTexts; oldScheduling?: boolean };
  /** How plain prompts are encoded (default `base.encodeText`); txt2img passes A1111's front end. */
  encodeText?: EncodeTexts;
}

/** What {@link sampleImages} returns: the decoded images as host floats. */
export interface SampledImages {
  /** Images NHWC `[count, height, width, 3]` in the model's range [-1, 1] (not clipped), row-major. */
  pixels: Float32Array;
  shape: [number, number, number, number];
}

/** The UNet batches of a run: which prompt each image uses, `batchSize` images at a time. */
function batchesOf(prompts: readonly string[], count: number, batchSize: number): string[][] {
  const out: string[][] = [];
  for (let i = 0; i < count; i += batchSize) {
    const n = Math.min(batchSize, count - i);
    out.push(prompts.length === 1 ? [prompts[0]!] : prompts.slice(i, i + n));
  }
  return out;
}

/**
 * Generate images from prompts (see the module comment). Leaves no tensors behind, also when a
 * step fails. The caller chooses and attaches any hypernetworks beforehand.
 */
export async function sampleImages(base: BaseModel, opts: SampleImagesOptions): Promise<SampledImages> {
  const { prompts } = opts;
  const count = opts.count ?? prompts.length;
  if (prompts.length === 0) throw new Error("sampleImages: give at least one prompt");
  if (!Number.isSafeInteger(count) || count < 1) throw new Error(`sampleImages: count must be a positive integer, got ${count}`);
  if (prompts.length !== 1 && prompts.length !== count)
    throw new Error(`sampleImages: ${prompts.length} prompts for ${count} images; give one prompt per image, or one prompt for all`);
  const batchSize = opts.batchSize ?? count;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1)
    throw new Error(`sampleImages: batchSize must be a positive integer, got ${batchSize}`);
  const width = opts.width ?? base.imageSize;
  const height = opts.height ?? base.imageSize;
  const sampler = samplerByName(opts.sampler ?? "Euler a", { steps: opts.steps ?? 20 });
  const rng = opts.rng ?? (opts.seed === undefined ? undefined : new Rng(opts.seed));
  if (!rng) throw new Error("sampleImages: give a seed (e.g. seed: 1234) or an rng, so the images can be made again");
  const negative = opts.negativePrompt ?? "";

  const h = height / base.downscale;
  const w = width / base.downscale;
  const pixels = new Float32Array(count * height * width * 3);
  let done = 0;
  for (const chunk of batchesOf(prompts, count, batchSize)) {
    const n = Math.min(batchSize, count - done);
    const old = opts.promptSyntax?.oldScheduling === true;
    if (
      opts.promptSyntax &&
      PromptConditioning.needed(chunk, negative, a1111ScheduleSteps(opts.sampler ?? "Euler a", opts.steps ?? 20), old)
    ) {
      const images = await sampleScheduled(
        base,
        opts,
        sampler,
        rng,
        chunk.length === 1 ? new Array<string>(n).fill(chunk[0]!) : chunk,
        [n, h, w, base.channels],
        opts.promptSyntax.encode,
      );
      pixels.set(images, done * height * width * 3);
      done += n;
      continue;
    }
    const both = (opts.encodeText ?? ((t: string[]) => base.encodeText(t)))([...chunk, negative]);
    const [cond, uncond] = tf.split(both, [chunk.length, 1], 0) as [tf.Tensor3D, tf.Tensor3D];
    both.dispose();
    let latents: tf.Tensor4D | undefined;
    let images: tf.Tensor4D | undefined;
    try {
      latents = await sampler.sample({
        denoiser: (x, t, c) => base.unet.forward(x, [...t], c as tf.Tensor3D),
        shape: [n, h, w, base.channels],
        cond,
        uncond,
        guidanceScale: opts.cfgScale ?? 7,
        rng,
        callback: opts.callback,
      });
      images = base.decode(latents);
      pixels.set(await images.data(), done * height * width * 3);
    } finally {
      tf.dispose([cond, uncond]);
      latents?.dispose();
      images?.dispose();
    }
    done += n;
  }
  return { pixels, shape: [count, height, width, 3] };
}

/**
 * One UNet batch with A1111's per-call conditioning (see prompt-conditioning.ts): the sampler runs
 * without its own guidance and the denoiser is A1111's `CFGDenoiser.forward` — conditioning for
 * model call k (counted per evaluation, as A1111's `step`), every image's sub-prompts and the
 * uncond in one UNet call, then `u + cfg·Σ w_i·(c_i − u)`. Returns the decoded pixels.
 */
async function sampleScheduled(
  base: BaseModel,
  opts: SampleImagesOptions,
  sampler: ReturnType<typeof samplerByName>,
  rng: NoiseRng,
  prompts: string[],
  shape: [number, number, number, number],
  encode: EncodeTexts,
): Promise<Float32Array> {
  const scale = opts.cfgScale ?? 7;
  const steps = a1111ScheduleSteps(opts.sampler ?? "Euler a", opts.steps ?? 20);
  const cond = PromptConditioning.build({
    prompts,
    negativePrompt: opts.negativePrompt ?? "",
    steps,
    encode,
    oldScheduling: opts.promptSyntax?.oldScheduling === true,
  });
  let call = 0;
  let latents: tf.Tensor4D | undefined;
  let images: tf.Tensor4D | undefined;
  try {
    latents = await sampler.sample({
      denoiser: (x, t) => {
        const at = cond.at(call++);
        return tf.tidy(() => {
          const rep = at.weights.flatMap((list, j) => list.map(() => j));
          const xIn = tf.concat([tf.gather(x, rep), x], 0);
          const cIn = tf.concat([at.conds, tf.tile(at.uncond, [x.shape[0], 1, 1])], 0);
          const out = base.unet.forward(xIn, new Array<number>(xIn.shape[0]).fill(t[0]!), cIn);
          return combineMulticond(out, at.weights, scale);
        });
      },
      shape,
      cond: cond.at(0).uncond, // a placeholder of the right shape: the denoiser above picks the real one per call
      guidanceScale: 1,
      rng,
      callback: opts.callback,
    });
    images = base.decode(latents);
    return (await images.data()) as Float32Array;
  } finally {
    cond.dispose();
    latents?.dispose();
    images?.dispose();
  }
}

/**
 * Decoded images in [-1, 1] → [0, 1], clipped: `clip((x + 1) / 2, 0, 1)` in float32, as the
 * images txt2img returns (the sum in float64 rounded to float32 is float32's own sum). A NaN
 * becomes 0, as the wasm backend's clip makes it.
 */
export function toUnitRange(pixels: Float32Array): Float32Array {
  const out = new Float32Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) {
    const v = Math.fround(pixels[i]! + 1) / 2;
    out[i] = v > 0 ? Math.min(1, v) : 0;
  }
  return out;
}
