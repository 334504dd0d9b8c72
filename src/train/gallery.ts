/**
 * The checkpoint gallery: every checkpoint of a run sampled with the same prompt, seeds and
 * settings, side by side — one column per checkpoint (the base model first), one row per seed — so
 * the only thing that changes along a row is how far training had got. Previews made during
 * training show one image each at whatever step they were made; this shows the whole run at once,
 * and at as many seeds as wanted.
 */
import type { Hypernetwork } from "../hypernet/network";
import { attachHypernetworks } from "../hypernet/attach";
import { loadHypernetwork } from "../hypernet/file";
import { renderGrid, type GridItem } from "../data/view";
import { encodePng, unitToBytes } from "../io/png";
import type { BaseModel } from "../pipeline/base-model";
import { sampleImages, toUnitRange } from "../pipeline/sample";
import { listCheckpoints } from "./run-folder";

/** Options of {@link checkpointGallery}. */
export interface GalleryOptions {
  /** The prompt every image is made from. */
  prompt: string;
  negativePrompt?: string;
  /** One row per seed (default [1, 2, 3]). */
  seeds?: readonly number[];
  /** Sampler, steps and CFG scale (default "Euler a", 20, 7: A1111's preview defaults). */
  sampler?: string;
  steps?: number;
  cfgScale?: number;
  /** Image size (default: the model's). */
  width?: number;
  height?: number;
  /** Strength the checkpoints are applied at (default 1). */
  multiplier?: number;
  /** Put the base model (no network) in the first column (default true). */
  includeBase?: boolean;
  /** At most this many checkpoints, evenly spaced and always with the last (default 8). */
  maxCheckpoints?: number;
  /** Grid cell width in px (default 128). */
  cell?: number;
}

/** One column of the gallery. */
export interface GalleryColumn {
  /** "base" or "step N". */
  label: string;
  /** The checkpoint's step and file (absent for the base model). */
  step?: number;
  file?: string;
  /** PNG bytes, one per seed. */
  images: Buffer[];
}

/** What {@link checkpointGallery} returns. */
export interface GalleryResult {
  columns: GalleryColumn[];
  seeds: number[];
  /** The grid: one row per seed, one column per checkpoint, captioned. */
  grid: Buffer;
}

/** `n` of `items` evenly spaced, the first and the last among them. */
export function evenlySpaced<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  if (n === 1) return [items[items.length - 1]!];
  const idx = new Set(Array.from({ length: n }, (_, i) => Math.round((i * (items.length - 1)) / (n - 1))));
  return [...idx].sort((a, b) => a - b).map((i) => items[i]!);
}

/** Sample one image per seed with whatever is attached now. */
async function sampleSeeds(base: BaseModel, opts: GalleryOptions, seeds: readonly number[]): Promise<Buffer[]> {
  const width = opts.width ?? base.imageSize;
  const height = opts.height ?? base.imageSize;
  const out: Buffer[] = [];
  for (const seed of seeds) {
    const { pixels } = await sampleImages(base, {
      prompts: [opts.prompt],
      negativePrompt: opts.negativePrompt ?? "",
      sampler: opts.sampler ?? "Euler a",
      steps: opts.steps ?? 20,
      cfgScale: opts.cfgScale ?? 7,
      seed,
      width,
      height,
    });
    out.push(await encodePng({ width, height, channels: 3, data: unitToBytes(toUnitRange(pixels), 0, width, height) }));
  }
  return out;
}

/**
 * Sample every checkpoint of the run folder `runDir` (its `hypernetworks/<name>-<step>.pt`) at the
 * same seeds; see the module comment. Each checkpoint is loaded for inference, attached for its
 * column only and freed; the base model is left as it was.
 */
export async function checkpointGallery(base: BaseModel, runDir: string, opts: GalleryOptions): Promise<GalleryResult> {
  if (typeof opts?.prompt !== "string")
    throw new Error("checkpointGallery: give the prompt to sample every checkpoint with ({ prompt: … })");
  const seeds = [...(opts.seeds ?? [1, 2, 3])];
  if (seeds.length === 0 || !seeds.every((s) => Number.isSafeInteger(s) && s >= 0))
    throw new Error(`checkpointGallery: seeds must be non-negative integers, got ${JSON.stringify(seeds)}`);
  const max = opts.maxCheckpoints ?? 8;
  if (!Number.isSafeInteger(max) || max < 1) throw new Error(`checkpointGallery: maxCheckpoints must be a positive integer, got ${max}`);
  const all = listCheckpoints(runDir);
  if (all.length === 0)
    throw new Error(
      `checkpointGallery: ${runDir} has no checkpoints (looked for hypernetworks/<name>-<step>.pt with its .state.json); pass a training run's logDir`,
    );
  const chosen = evenlySpaced(all, max);
  const columns: GalleryColumn[] = [];
  if (opts.includeBase ?? true) columns.push({ label: "base", images: await sampleSeeds(base, opts, seeds) });
  for (const ck of chosen) {
    let net: Hypernetwork | undefined;
    let attachment: ReturnType<typeof attachHypernetworks> | undefined;
    try {
      net = loadHypernetwork(ck.file, { trainable: false, onWarning: () => {} });
      attachment = attachHypernetworks(base.unet, [{ network: net, multiplier: opts.multiplier ?? 1 }], { onWarning: () => {} });
      columns.push({ label: `step ${ck.step}`, step: ck.step, file: ck.file, images: await sampleSeeds(base, opts, seeds) });
    } finally {
      attachment?.detach();
      net?.dispose();
    }
  }
  const items: GridItem[] = seeds.flatMap((seed, row) =>
    columns.map((c) => ({ image: c.images[row]!, caption: `${c.label} · seed ${seed}` })),
  );
  const grid = await renderGrid(items, { cell: opts.cell ?? 128, columns: columns.length, captionLines: 1, max: items.length });
  return { columns, seeds, grid };
}
