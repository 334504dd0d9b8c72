/**
 * What the demo reports: the scores of a set of images (style, and whether the content survived),
 * the summary it writes as `summary.json`, the table it prints, and the picture files — preview
 * grids and the loss chart.
 */
import * as fs from "node:fs";
import sharp from "sharp";
import { renderGrid, type GridItem } from "../data/view";
import { encodePngFrom } from "../io/png";
import { figureHtml, lossChartPng, lossFigure, plotlyLoaderHtml, type LossPoint } from "../kernel-helpers/charts";
import { contentAccuracy, type ExpectedContent } from "../tiny/shapes-data/classify";
import { TINY_SIZE } from "../tiny/shapes-data/shapes";
import { styleScore } from "../tiny/shapes-data/style";
import type { DemoSettings } from "./settings";

/** Scores of the images made at one multiplier. */
export interface MultiplierScore {
  multiplier: number;
  /** Mean whiteness of the drawn colours (≈ 0.2 for the palette colours, the pastel set itself ≈ 0.63). */
  styleScore: number;
  /** Fraction of images whose dominant colour / shape is the one the prompt names. */
  colorAccuracy: number;
  shapeAccuracy: number;
}

/** What the demo reports (and writes as `summary.json`). */
export interface DemoSummary {
  backend: string;
  model: { dir: string; name: string; hash: string | null; trainedSteps: number | null };
  settings: DemoSettings;
  prompts: string[];
  /** The pastel training images' own style score: what full style looks like. */
  styleSetScore: number;
  training: { steps: number; reason: string; firstLoss: number | null; lastLoss: number | null; seconds: number };
  /** Untrained network (multiplier 0 is the base model itself). */
  before: MultiplierScore[];
  /** Trained network (applied in the `applyTimesteps` steps only, when that is set). */
  after: MultiplierScore[];
  /** Trained network applied in every step, as A1111 does; null when `applyTimesteps` is null (then `after` is that). */
  afterEveryStep: MultiplierScore[] | null;
  checks: {
    /** The style score rises with the multiplier (strictly, across `multipliers`). */
    styleRisesWithMultiplier: boolean;
    /** Content survives: colour and shape accuracy at every multiplier at most 15 points below the base model's (×0). */
    contentWithin15Points: boolean;
    /** The stricter target the demo's settings were chosen for: colour and shape within 10 points of ×0. */
    contentWithin10Points: boolean;
  };
  files: Record<string, string>;
  seconds: number;
}

/** Style score and colour/shape accuracy of the images made at one multiplier. */
export function scoreImages(multiplier: number, images: Uint8Array[], expected: ExpectedContent[]): MultiplierScore {
  const acc = contentAccuracy(expected, images);
  return { multiplier, styleScore: styleScore(images), colorAccuracy: acc.colorAccuracy, shapeAccuracy: acc.shapeAccuracy };
}

/**
 * The checks: the style rises strictly with the multiplier, and colour and shape accuracy stay
 * within 15 (and within 10) points of the trained network at ×0 (the base model; `fallback` when ×0 was not sampled).
 */
export function demoChecks(after: readonly MultiplierScore[], fallback: MultiplierScore): DemoSummary["checks"] {
  const ref = after.find((s) => s.multiplier === 0) ?? fallback;
  const sorted = [...after].sort((a, b) => a.multiplier - b.multiplier);
  const within = (points: number): boolean =>
    after.every((s) => s.colorAccuracy >= ref.colorAccuracy - points - 1e-9 && s.shapeAccuracy >= ref.shapeAccuracy - points - 1e-9);
  return {
    styleRisesWithMultiplier: sorted.every((s, i) => i === 0 || s.styleScore > sorted[i - 1]!.styleScore),
    contentWithin15Points: within(0.15),
    contentWithin10Points: within(0.1),
  };
}

const pct = (x: number): string => `${(100 * x).toFixed(0)}%`.padStart(5);

/** The summary table printed at the end (with the every-step comparison when there is one). */
export function formatSummaryTable(
  s: Pick<DemoSummary, "before" | "after" | "styleSetScore"> & {
    afterEveryStep?: MultiplierScore[] | null;
    settings?: Pick<DemoSettings, "applyTimesteps">;
  },
): string {
  const every = s.afterEveryStep ?? null;
  const gate = s.settings?.applyTimesteps ?? null;
  const lines: string[] = [];
  if (gate)
    lines.push(
      `trained network applied at timesteps [${gate[0]}, ${gate[1]}) of each sampling run (the last, low-noise steps); last column: applied in every step`,
    );
  lines.push(
    "multiplier │ style (untrained → trained) │ colour acc. (untrained → trained) │ shape acc. (untrained → trained)" +
      (every ? " │ every step: style, colour, shape" : ""),
  );
  lines.push(
    "───────────┼─────────────────────────────┼───────────────────────────────────┼──────────────────────────────────" +
      (every ? "┼──────────────────────────────────" : ""),
  );
  s.after.forEach((a, i) => {
    const b = s.before[i]!;
    const e = every?.[i];
    lines.push(
      `${`×${a.multiplier}`.padStart(10)} │ ${b.styleScore.toFixed(3).padStart(11)} → ${a.styleScore.toFixed(3).padEnd(13)} │ ${pct(b.colorAccuracy).padStart(16)} → ${pct(a.colorAccuracy).padEnd(16)} │ ${pct(b.shapeAccuracy).padStart(15)} → ${pct(a.shapeAccuracy).padEnd(16)}` +
        (e ? ` │ ${e.styleScore.toFixed(3)} ${pct(e.colorAccuracy)} ${pct(e.shapeAccuracy)}` : ""),
    );
  });
  lines.push(`(style score of the pastel training images themselves: ${s.styleSetScore.toFixed(3)})`);
  return lines.join("\n");
}

/** The lines printed after the run: training, the table, the checks and the files written. */
export function summaryLines(s: DemoSummary, trainingMessage: string, out: string): string[] {
  return [
    "",
    `${trainingMessage}; loss ${s.training.firstLoss?.toFixed(4)} → ${s.training.lastLoss?.toFixed(4)} (mean of the last 10 steps), ${s.training.seconds} s`,
    formatSummaryTable(s),
    `style rises with the multiplier: ${s.checks.styleRisesWithMultiplier ? "yes" : "NO"}; content within 15 points of the base model (no larger drop): ${s.checks.contentWithin15Points ? "yes" : "NO"}, within 10 points: ${s.checks.contentWithin10Points ? "yes" : "NO"}`,
    `files in ${out}: pastel.pt, loss.csv, loss.html, loss.png, preview-before.png, preview-after.png${s.afterEveryStep ? ", preview-after-every-step.png" : ""}, summary.json — ${s.seconds} s in all`,
  ];
}

/** RGB bytes of one tiny image → PNG, upscaled `scale`× with nearest-neighbour so pixels stay crisp. */
async function tinyPng(rgb: Uint8Array, scale: number): Promise<Buffer> {
  return encodePngFrom(
    sharp(Buffer.from(rgb), { raw: { width: TINY_SIZE, height: TINY_SIZE, channels: 3 } }).resize(TINY_SIZE * scale, TINY_SIZE * scale, {
      kernel: "nearest",
    }),
  );
}

/** A grid with one row per prompt and one column per multiplier, as PNG bytes. */
export async function previewGrid(prompts: string[], multipliers: readonly number[], images: Map<number, Uint8Array[]>): Promise<Buffer> {
  const items: GridItem[] = [];
  for (let p = 0; p < prompts.length; p++) {
    for (const m of multipliers) items.push({ image: await tinyPng(images.get(m)![p]!, 4), caption: `×${m}: ${prompts[p]}` });
  }
  return renderGrid(items, { cell: 128, columns: multipliers.length, captionLines: 3, max: items.length });
}

/** The loss chart twice: an interactive Plotly page (bundle embedded, works offline) and a PNG. */
export async function writeLossChart(
  points: LossPoint[],
  name: string,
  totalSteps: number,
  files: { html: string; png: string },
): Promise<void> {
  const fig = lossFigure(points, { totalSteps, title: `${name}: training loss` });
  fs.writeFileSync(
    files.html,
    `<!doctype html><html><head><meta charset="utf-8"><title>${name} loss</title></head><body>\n${plotlyLoaderHtml()}\n${figureHtml(fig, "loss")}\n</body></html>\n`,
  );
  fs.writeFileSync(files.png, await lossChartPng(points, { title: `${name}: training loss (${points.length} steps)` }));
}
