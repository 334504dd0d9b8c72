/**
 * Previews during training: the network as it is at this step, sampled through the one sampling
 * path (`sampleImages`) from the preview's own fixed seed — so successive previews are comparable
 * and the training noise is not shifted — with dropout off while sampling. Each PNG carries
 * A1111's infotext of its settings in its "parameters" text, as A1111's previews do (spec §4.10).
 */
import { resolveSamplerName } from "../diffusion/sampler-names";
import type { Attachment } from "../hypernet/attach";
import { encodePng, unitToBytes } from "../io/png";
import { addPngText } from "../io/png-text";
import type { BaseModel } from "../pipeline/base-model";
import { formatInfotext } from "../pipeline/infotext";
import { sampleImages, toUnitRange } from "../pipeline/sample";
import type { RgbImage } from "./events";
import type { PreviewOptions } from "./options";

/** A preview's images, as RGB bytes and as PNG files' bytes (with `infotexts` in their "parameters" text). */
export interface PreviewImages {
  prompts: string[];
  images: RgbImage[];
  png: Buffer[];
  infotexts: string[];
}

/** A1111's "Schedule type" label of a sampler name: the label it ends with ("DPM++ 2M Karras" → "Karras"), else "Automatic" (as txt2img writes it). */
function scheduleType(sampler: string): string {
  const key = sampler.trim().replace(/\s+/g, " ").toLowerCase();
  if (/^k_\w+_ka$/.test(key)) return "Karras";
  const m = / (karras|exponential|uniform|automatic)$/.exec(key);
  return m ? m[1]![0]!.toUpperCase() + m[1]!.slice(1) : "Automatic";
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
  const settings = {
    negativePrompt: opts.negativePrompt ?? "",
    sampler: opts.sampler ?? "Euler a",
    steps: opts.steps ?? 20,
    cfgScale: opts.cfgScale ?? 7,
    seed: opts.seed ?? 0,
  };
  attachment.training = false;
  let pixels: Float32Array;
  try {
    ({ pixels } = await sampleImages(base, { prompts, ...settings, width, height }));
  } finally {
    attachment.training = true;
  }
  const unit = toUnitRange(pixels);
  const images = prompts.map((_, i) => ({ width, height, data: unitToBytes(unit, i, width, height) }));
  const infotexts = prompts.map((p) =>
    formatInfotext({
      prompt: p,
      ...settings,
      sampler: resolveSamplerName(settings.sampler).name,
      scheduleType: scheduleType(settings.sampler),
      width,
      height,
      modelHash: base.checkpointHash,
      model: base.name,
    }),
  );
  const png = await Promise.all(
    images.map(async (im, i) => addPngText(await encodePng({ ...im, channels: 3 }), [["parameters", infotexts[i]!]])),
  );
  return { prompts, images, png, infotexts };
}
