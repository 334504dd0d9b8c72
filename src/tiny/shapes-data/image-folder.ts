/**
 * Tiny-shapes samples written as an image folder — one `<stem>.png` and one `<stem>.txt` caption
 * per sample, the layout a user's own pictures come in — so the demo and the notebooks go through
 * `preprocess` and training exactly as a user does.
 *
 * `stripedSet` is the notebooks' toy style: scenes with dark diagonal stripes across them,
 * captioned with their content only, so the stripes are what a hypernetwork has to learn.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { encodePng } from "../../io/png";
import { TINY_SIZE, type ShapeSample, shapeSamples } from "./shapes";

/** Options of {@link writeSampleFolder}. */
export interface SampleFolderOptions {
  /** File-name stem before the zero-padded index (default "img": `img000.png`, `img000.txt`). */
  prefix?: string;
  /** Replace files of the same names that are already there (default false: refuse). */
  overwrite?: boolean;
}

/**
 * Write `samples` into `dir` (created if missing) as `<prefix><index>.png` + `.txt`. Without
 * `overwrite`, a file that already exists is an error naming it, and nothing is written.
 */
export async function writeSampleFolder(dir: string, samples: readonly ShapeSample[], opts: SampleFolderOptions = {}): Promise<string[]> {
  const prefix = opts.prefix ?? "img";
  const stems = samples.map((_, i) => path.join(dir, `${prefix}${String(i).padStart(3, "0")}`));
  if (!opts.overwrite) {
    const taken = stems.flatMap((s) => [`${s}.png`, `${s}.txt`]).find((f) => fs.existsSync(f));
    if (taken)
      throw new Error(`${taken} already exists; pass { overwrite: true } to replace the sample files in ${dir}, or choose an empty folder`);
  }
  fs.mkdirSync(dir, { recursive: true });
  for (const [i, s] of samples.entries()) {
    fs.writeFileSync(`${stems[i]}.png`, await encodePng({ data: s.pixels, width: TINY_SIZE, height: TINY_SIZE, channels: 3 }));
    fs.writeFileSync(`${stems[i]}.txt`, s.caption);
  }
  return stems.map((s) => `${s}.png`);
}

/** Pixels on the stripes (`(x + y) mod 6 < 2`) keep this fraction of their brightness. */
const STRIPE_DARKNESS = 0.35;

/** `count` tiny-shapes samples (from `seed`) with dark diagonal stripes drawn across them; captions unchanged. */
export function stripedSet(count: number, seed = 7): ShapeSample[] {
  return shapeSamples(seed, 0, count).map((s) => {
    const px = Uint8Array.from(s.pixels);
    for (let y = 0; y < TINY_SIZE; y++) {
      for (let x = 0; x < TINY_SIZE; x++) {
        if ((x + y) % 6 >= 2) continue;
        for (let c = 0; c < 3; c++) px[(y * TINY_SIZE + x) * 3 + c] = Math.round(px[(y * TINY_SIZE + x) * 3 + c]! * STRIPE_DARKNESS);
      }
    }
    return { ...s, pixels: px };
  });
}

/** Write the striped toy style set (`stripedSet`) as an image folder, `img000.png` + `.txt` onwards. */
export function writeStripedSet(dir: string, count: number, opts: { seed?: number; overwrite?: boolean } = {}): Promise<string[]> {
  return writeSampleFolder(dir, stripedSet(count, opts.seed), { overwrite: opts.overwrite });
}
