/**
 * Previews during training: the network as it is at this step, sampled through the one sampling
 * path (`sampleImages`) from the preview's own fixed seed — so successive previews are comparable
 * and the training noise is not shifted — with dropout off while sampling.
 */
import type { Attachment } from "../hypernet/attach";
import { encodePng, unitToBytes } from "../io/png";
import type { BaseModel } from "../pipeline/base-model";
import { sampleImages, toUnitRange } from "../pipeline/sample";
import type { RgbImage } from "./events";
import type { PreviewOptions } from "./options";

/** A preview's images, as RGB bytes and as PNG files' bytes. */
export interface PreviewImages {
  prompts: string[];
  images: RgbImage[];
  png: Buffer[];
}

/**
 * Sample the preview of `opts` (A1111's defaults: "Euler a", 20 steps, CFG 7, seed 0) with the
 * attached network in inference mode. `prompt` is used when the options name none (the trainer
 * passes the first prompt of the step's batch); `size` is the default image size.
 */
export async function previewImages(
  base: BaseModel,
  attachment: Attachment,
  opts: PreviewOptions,
  prompt: string,
  size: { width: number; height: number },
): Promise<PreviewImages> {
  const prompts = [opts.prompt ?? prompt];
  const width = opts.width ?? size.width;
  const height = opts.height ?? size.height;
  attachment.training = false;
  let pixels: Float32Array;
  try {
    ({ pixels } = await sampleImages(base, {
      prompts,
      negativePrompt: opts.negativePrompt ?? "",
      sampler: opts.sampler ?? "Euler a",
      steps: opts.steps ?? 20,
      cfgScale: opts.cfgScale ?? 7,
      seed: opts.seed ?? 0,
      width,
      height,
    }));
  } finally {
    attachment.training = true;
  }
  const unit = toUnitRange(pixels);
  const images = prompts.map((_, i) => ({ width, height, data: unitToBytes(unit, i, width, height) }));
  const png = await Promise.all(images.map((im) => encodePng({ ...im, channels: 3 })));
  return { prompts, images, png };
}
