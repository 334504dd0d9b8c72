/**
 * Sampling helper for the tiny pixel-space model: prompts → 32×32 RGB images, with classifier-free
 * guidance and any of the project's samplers. The eval script and the tests use it; the demo can too.
 */
import type { BaseModel } from "../pipeline/base-model";
import { sampleImages } from "../pipeline/sample";
import type { SamplerName } from "../diffusion/sampler-names";
import { fromModelPixels } from "./shapes-data/shapes";

/** Options for `sampleTiny`. */
export interface TinySampleOptions {
  /** Seed of the noise (the same seed and prompts give the same images). */
  seed: number;
  /** Any A1111 sampler name ("Euler a", the default; "DPM++ 2M", "DDIM", …; see `samplerByName`). */
  sampler?: SamplerName;
  /** Denoiser evaluations (default 24). */
  steps?: number;
  /** CFG scale (default 4; 1 turns guidance off). */
  guidanceScale?: number;
  /** Images per UNet batch (default 16). */
  batchSize?: number;
}

/**
 * Generate one image per prompt with `base` (a pixel-space model such as `loadTinyModel()`).
 * Returns RGB bytes `[size, size, 3]` per prompt. Leaves no tensors behind.
 */
export async function sampleTiny(base: BaseModel, prompts: string[], opts: TinySampleOptions): Promise<Uint8Array[]> {
  if (base.space !== "pixel")
    throw new Error(`sampleTiny: ${base.name} works in latent space; this helper is for pixel-space models like the tiny one`);
  if (prompts.length === 0) return [];
  const { pixels } = await sampleImages(base, {
    prompts,
    sampler: opts.sampler ?? "Euler a",
    steps: opts.steps ?? 24,
    cfgScale: opts.guidanceScale ?? 4,
    seed: opts.seed,
    batchSize: opts.batchSize ?? 16,
  });
  return fromModelPixels(pixels, prompts.length);
}
