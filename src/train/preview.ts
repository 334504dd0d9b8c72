/**
 * Previews during training: the network as it is at this step, sampled the way A1111's training
 * previews are (a txt2img `processing` run with the preview's seed): through this project's
 * `txt2img`, so the noise is A1111's for that seed (NV source, `a1111ImageNoise`), the prompt goes
 * through A1111's front end (emphasis, BREAK, prompt editing, AND) and the PNG carries txt2img's
 * infotext — pasting it into A1111 with the trained network gives the same picture. The seed is
 * fixed (default 0), so successive previews are comparable and the training noise is not shifted;
 * dropout is off while sampling. Hypernetwork tags in a preview prompt are removed and not applied,
 * as A1111's previews disable extra networks: the network being trained is the one attached.
 */
import type { Attachment } from "../hypernet/attach";
import type { BaseModel } from "../pipeline/base-model";
import { type Txt2ImgResult, txt2img } from "../pipeline/txt2img";
import { unitToBytes } from "../io/png";
import type { RgbImage } from "./events";
import type { PreviewOptions } from "./options";

/** A preview's images, as RGB bytes and as PNG files' bytes (with `infotexts` in their "parameters" text). */
export interface PreviewImages {
  prompts: string[];
  images: RgbImage[];
  png: Buffer[];
  infotexts: string[];
}

/**
 * Sample the preview of `opts` (defaults: A1111's "Euler a", 20 steps, CFG 7, and seed 0) with
 * the attached network in inference mode. `prompt` is used when the options name none (the
 * trainer passes the first prompt of the step's batch); `size` is the default image size.
 */
export async function previewImages(
  base: BaseModel,
  attachment: Attachment,
  opts: PreviewOptions,
  prompt: string,
  size: { width: number; height: number },
): Promise<PreviewImages> {
  const width = opts.width ?? size.width;
  const height = opts.height ?? size.height;
  attachment.training = false;
  let r: Txt2ImgResult;
  try {
    r = await txt2img(base, {
      prompt: opts.prompt ?? prompt,
      negativePrompt: opts.negativePrompt ?? "",
      sampler: opts.sampler ?? "Euler a",
      steps: opts.steps ?? 20,
      cfgScale: opts.cfgScale ?? 7,
      seed: opts.seed ?? 0,
      width,
      height,
      hypernetworks: [], // the trained network is attached already; prompt tags are not applied
    });
  } finally {
    attachment.training = true;
  }
  const images = r.infotexts.map((_, i) => ({ width, height, data: unitToBytes(r.pixels, i, width, height) }));
  return { prompts: [opts.prompt ?? prompt], images, png: r.png, infotexts: r.infotexts };
}
