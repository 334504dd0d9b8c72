/**
 * Sampling helper for the tiny pixel-space model: prompts → 32×32 RGB images, with classifier-free
 * guidance and any of the project's samplers. The eval script and the tests use it; the demo can too.
 */
import * as tf from "@tensorflow/tfjs";
import type { BaseModel } from "../pipeline/base-model";
import { Rng } from "../diffusion/random";
import { samplerByName, type SamplerName } from "../diffusion/samplers";
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
  if (base.space !== "pixel") throw new Error(`sampleTiny: ${base.name} works in latent space; this helper is for pixel-space models like the tiny one`);
  const sampler = samplerByName(opts.sampler ?? "Euler a", { steps: opts.steps ?? 24 });
  const bs = opts.batchSize ?? 16;
  const rng = new Rng(opts.seed);
  const size = base.sampleSize;
  const out: Uint8Array[] = [];
  const uncond = base.encodeText([""]);
  try {
    for (let i = 0; i < prompts.length; i += bs) {
      const chunk = prompts.slice(i, i + bs);
      const cond = base.encodeText(chunk);
      try {
        const x = await sampler.sample({
          denoiser: (xt, t, c) => base.unet.forward(xt, t as number[], c as tf.Tensor3D),
          shape: [chunk.length, size, size, base.channels],
          cond,
          uncond,
          guidanceScale: opts.guidanceScale ?? 4,
          rng,
        });
        const img = base.decode(x);
        out.push(...fromModelPixels(await img.data(), chunk.length));
        tf.dispose([x, img]);
      } finally {
        cond.dispose();
      }
    }
  } finally {
    uncond.dispose();
  }
  return out;
}
