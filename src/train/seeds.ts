/**
 * Where training's randomness comes from. Every random number of step `s` (the batch order of its
 * epoch, prompts and tags, t, ε, dropout masks) is drawn from a generator seeded by
 * `deriveSeed(seed, purpose, s, …)`, never from one stream that runs through the whole training:
 * a run resumed from any checkpoint therefore draws exactly what the uninterrupted run drew.
 */
import { Rng } from "../diffusion/random";

/** What a derived seed is for (its second word), so two uses never share a stream. */
export const SEED_PURPOSE = { load: 1, epoch: 2, data: 3, noise: 4, dropout: 5, noiseOffset: 6 } as const;

/** A 32-bit seed from (seed, step, micro-batch, purpose): FNV-1a over the words, then murmur3's finaliser. */
export function deriveSeed(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    for (const w of [p >>> 0, Math.floor(p / 4294967296) >>> 0]) {
      h = Math.imul(h ^ w, 0x01000193);
    }
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A `{ next() }` uniform source for the dataset whose generator the trainer re-seeds per use. */
export class SwitchableRng {
  gen = new Rng(0);
  reseed(seed: number): void {
    this.gen = new Rng(seed);
  }
  next(): number {
    return this.gen.nextFloat();
  }
}
