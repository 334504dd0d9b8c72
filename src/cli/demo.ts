/**
 * `npm run demo` — the main job, start to finish, on the embedded tiny model:
 *
 *   1. pick the best backend (wasm on a plain CPU machine);
 *   2. write the "pastel chalk" style set (every colour mixed halfway to white, on black, captioned
 *      with content only) as an image folder, and preprocess it into a training folder, as a user
 *      does with their pictures;
 *   3. create a hypernetwork with one (k, v) pair per attention width of the tiny UNet;
 *   4. sample a fixed set of prompts with the untrained network at multipliers 0, 0.5 and 1;
 *   5. train it with an A1111 learning-rate schedule, printing progress;
 *   6. sample the same prompts (same seed) with the trained network — applied in the low-noise
 *      steps only (`applyTimesteps`, t < 250), and for comparison in every step, as A1111 does;
 *   7. score every image: the style (`styleScore`, how pale the drawn colours are) and the content
 *      (`contentAccuracy`: does the image still show the colour and shape the prompt names?).
 *
 * Everything goes to `out/demo/` (or `--out DIR`):
 *
 *   pastel.pt               the trained network, A1111 layout (loads in A1111 and ComfyUI)
 *   loss.csv                A1111's hypernetwork_loss.csv: step,epoch,epoch_step,loss,learn_rate
 *   loss.html, loss.png     the loss chart (Plotly page with the bundle embedded; PNG drawn as SVG)
 *   preview-before.png      the prompts × multipliers 0, 0.5, 1 with the untrained network
 *   preview-after.png       the same with the trained network
 *   summary.json            style score and colour/shape accuracy per multiplier, settings, timings
 *   style-images/ train/ run/   the style set, the preprocessed training folder, the trainer's run folder
 *
 * `--quick` runs the same pipeline in a few seconds (tiny settings) to check that it works.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import sharp from "sharp";
import { useBackend, formatBackendReport } from "../backend/backend";
import { figureHtml, lossChartPng, lossFigure, plotlyLoaderHtml, type LossPoint } from "../kernel-helpers/charts";
import { attachHypernetworks } from "../hypernet/attach";
import { saveHypernetwork } from "../hypernet/file";
import type { WeightInit } from "../hypernet/module";
import { createHypernetwork, type Hypernetwork } from "../hypernet/network";
import { preprocess } from "../data/preprocess";
import { renderGrid, type GridItem } from "../data/view";
import type { BaseModel } from "../pipeline/base-model";
import { train } from "../train/trainer";
import { contentAccuracy, type ExpectedContent } from "../tiny/classify";
import { loadTinyModel, readTinyConfig, TINY_MODEL_DIR } from "../tiny/model";
import { sampleTiny } from "../tiny/sample";
import { COLOR_NAMES, POSITIONS, SHAPES, TINY_SIZE, captionOf, type Scene } from "../tiny/shapes";
import { pastelStyleSet, styleScore } from "../tiny/style";

/** Everything the demo does that one might tune. */
export interface DemoSettings {
  /** Images in the pastel style set, and the seed that draws them. */
  styleImages: number;
  styleSeed: number;
  /** Prompt template for training (stock name or lines). */
  template: string | readonly string[];
  /**
   * Context widths that get a module pair (A1111's "Modules"): "all" = every attention width of the
   * UNet, or a list. On the tiny UNet 32, 64 and 96 are self-attention and 80 is cross-attention (the
   * text), like 320/640/1280 and 768 on SD 1.x.
   */
  dims: "all" | number[];
  /** Hypernetwork structure, as in A1111's "Create hypernetwork". */
  layerStructure: number[];
  activation: string;
  layerNorm: boolean;
  weightInit: WeightInit;
  /** A1111 learning-rate schedule string, and Max steps. */
  learningRate: string;
  maxSteps: number;
  batchSize: number;
  gradientAccumulation: number;
  /** Timesteps the training loss is drawn from, `[min, max)` (the trainer's `timesteps`). */
  timesteps: [number, number];
  trainSeed: number;
  /** Prompts of the fixed set (see `demoPrompts`) to sample and score. */
  prompts: number;
  /** Multipliers the previews and scores are made at. */
  multipliers: number[];
  /**
   * Apply the network only in sampler steps at timesteps `[min, max)` (a timestep gate, see
   * `StackEntry.timesteps`); null = in every step, as A1111 does. When set, the trained network is
   * also sampled ungated, for comparison (`afterEveryStep` in the summary).
   */
  applyTimesteps: [number, number] | null;
  /** Sampler steps (Euler a), CFG scale and the seed of the sampling noise. */
  sampleSteps: number;
  cfg: number;
  sampleSeed: number;
}

/*
 * Chosen on the tiny model as it was during development (checkpoints of `npm run train-base`), on
 * this 2-core machine with wasm, aiming at: style at ×1 clearly above ×0 and rising through ×0.5,
 * content accuracy within 15 points of the base, the whole demo under 10 minutes. Trials
 * (style score ×0 / ×0.5 / ×1; colour and shape accuracy at ×1; [1,2,1] relu, Normal, batch 8,
 * 150 steps unless noted; "base" = the tiny model's weights at that training step):
 *
 *   style, score              │ base  │ learning rate                   │ prompts │ style ×0/×0.5/×1 │ colour, shape ×0 → ×1
 *   neon sign, rim contrast ¹ │ 4000  │ "1e-2:50, 5e-3:100, 2e-3:150"   │ 24      │ .666/.634/.629   │ 100→83%, –
 *   neon sign, rim contrast   │ 4000  │ same ×2, 300 steps              │ 24      │ .666/.663/.655   │ 100→75%, –
 *   neon sign, rim contrast   │ 4962  │ "1e-2:50, 5e-3:100, 2e-3:150"   │ 24      │ .681/.625/.575   │ 100→33%, 21→8%
 *   lit from above ²          │ 4962  │ "1e-2:50, 5e-3:100, 2e-3:150"   │ 24      │ .068/.053/.056   │ 100→100%, 21→13%
 *   pastel, whiteness ⁴       │ 4962  │ "1e-2:50, 5e-3:100, 2e-3:150"   │ 12      │ .065/.264/.483   │ 100→58%, 17→17%
 *   pastel, whiteness ⁴       │ 4962  │ "5e-3:50, 2.5e-3:100, 1e-3:150" │ 12      │ .065/.289/.497   │ 100→92%, 17→8%
 *   pastel, whiteness         │ 4962  │ "5e-3:50, 2.5e-3:100, 1e-3:150" │ 24      │ .057/.313/.537   │ 100→79%, 21→8%
 *   pastel, whiteness         │ 4962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .057/.302/.536   │ 100→88%, 21→21%
 *   pastel, whiteness         │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.427/.617   │ 100→100%, 67→17%
 *   pastel, only dims 64, 96  │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.165/.278   │ 100→100%, 67→50%
 *   pastel, only 64, 96, 240  │ 7962  │ "1e-2:50, 5e-3:100, 2e-3:150"   │ 24      │ .217/.115/.194   │ 100→100%, 67→46%
 *   pastel, whiteness         │ 7962  │ "1e-3:50, 5e-4:100, 2e-4:150"   │ 24      │ .217/.439/.635   │ 100→100%, 67→17%
 *   pastel, 240 images ³      │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.378/.551   │ 100→100%, 67→33%
 *   pastel, 240 images        │ 7962  │ "3e-3:25, 1.5e-3:50, 6e-4:75"   │ 24      │ .217/.396/.579   │ 100→100%, 67→25%
 *   pastel, 240, layers [1,1] │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.404/.645   │ 100→100%, 67→21%
 *   pastel, 240, only dim 80  │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.509/.718   │ 100→92%, 67→17%
 *   (the rows below: 240 images and the shipped learning rate; shape at ×0.5 in brackets)
 *   pastel, v modules only ⁵  │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.385/.590   │ 100→100%, 67→[33]→21%
 *   pastel, v only, dim 80    │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.527/.694   │ 100→100%, 67→[50]→17%
 *   pastel, only dim 64       │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.151/.239   │ 100→100%, 67→[50]→54%
 *   pastel, only dim 96       │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.161/.096   │ 100→100%, 67→[17]→13%
 *   pastel 0.3 of the way ⁶   │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.323/.366   │ 100→100%, 67→[46]→29%
 *   navy ground ⁷             │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ (.217/.118/.150) │ 100→92%, 67→[33]→29%
 *   flat (control) ⁸          │ 7962  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .217/.220/.219   │ 100→100%, 67→[67]→67%
 *   (session 5: the base grown to attention at 16×16 — step 8,919, then the shipped 9,162)
 *   pastel                    │ 8919  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .195/.346/.550   │ 100→100%, 71→[38]→38%
 *   trained on t < 300 only ⁹ │ 8919  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .195/.385/.585   │ 100→100%, 71→[29]→25%
 *   applied at t ≥ 500 ¹⁰     │ 8919  │ the pastel row's network        │ 24      │ .195/.211/.217   │ 100→100%, 71→[58]→50%
 *   applied at t < 500        │ 8919  │ the pastel row's network        │ 24      │ .195/.344/.494   │ 100→100%, 71→[63]→38%
 *   applied at t ≥ 800        │ 8919  │ the pastel row's network        │ 24      │ .195/.196/.198   │ 100→100%, 71→[71]→63%
 *   applied at t < 250        │ 8919  │ the pastel row's network        │ 24      │ .195/.324/.405   │ 100→100%, 71→[71]→63%
 *   applied at t < 250        │ 9162  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .199/.318/.408   │ 100→100%, 75→[67]→67%
 *   (same, every step)        │ 9162  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .199/.331/.540   │ 100→100%, 75→[38]→38%
 *   trained and applied t<300 │ 9162  │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .199/.376/.494   │ 100→100%, 75→[63]→58%
 *   (session 6: the base trained 1,500 steps more, 68.8 % shape on the evaluation prompts)
 *   applied at t < 250 ³      │ 10662 │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .216/.324/.416   │ 100→100%, 100→[96]→88%
 *   (same, every step)        │ 10662 │ "3e-3:50, 1.5e-3:100, 6e-4:150" │ 24      │ .216/.331/.487   │ 100→100%, 100→[63]→46%
 *
 * ¹ "neon sign": a bright one-pixel tube along each outline around dim tinted glass; the score was
 *   the rim's contrast with the background over the inside's. ² each shape shaded from a pale top
 *   to a dark bottom; the score, the top half's contrast minus the bottom half's over the mean.
 * ³ these settings (the shipped base model is step 10,662).
 * ⁴ scored by a first version of whiteness that still counted the shapes' edge pixels.
 * ⁵ the k module of every pair held at identity (last Linear zeroed, not trained), so the network
 *   can change what each pixel reads from a context but not where it looks. ⁶ colours mixed 0.3
 *   of the way to white (set score .474). ⁷ shapes unchanged, the black ground turned navy; the
 *   network made the ground faintly blue and redrew the shapes brighter and rounder (a square
 *   became a ring). ⁸ a control: the same pipeline on images drawn the way the base data is.
 *   Sampling the shipped network differently changes nothing (shape ×0 / ×0.5 / ×1): DDIM 16 steps
 *   58/33/29%, DDIM CFG 7 63/33/25%, Euler a CFG 7 71/33/33%, Euler 54/33/29%, Euler a 24 steps
 *   CFG 2.5 63/38/33%; nor does applying the network to the conditional half of the CFG batch
 *   only (style .588/.829, shape 29/25%). The demo on WebGPU on an H100 gave the same scores.
 * ⁹ the trainer's `timesteps` option [0, 300), sampled in every step. ¹⁰ the network of the
 *   session-5 "pastel" row, attached with a timestep gate (`StackEntry.timesteps`): only UNet calls
 *   at t in the range see it.
 * The neon network learned what the blobs the base model draws allow (black backgrounds, smaller,
 * darker, crisper shapes, drifting hues) but never the rim, and the lit one barely changed the
 * images: a hypernetwork rewrites attention, which the tiny UNet then had only at 8×8 and 4×4, so it
 * can change colour and brightness, not one-pixel line work (src/tiny/style.ts). At the higher
 * learning rate the pastel network overshoots at ×1 and the hues drift (red to pink, green and blue
 * to cyan: 58% and 79% colour). On the step-4,962 base both checks passed, but that model drew
 * blobs (21% shape at ×0), so there was little shape to lose. On the step-7,962 base, which draws
 * rings, stars and crosses (67% shape on these prompts), colour survives at 100% but the pastel
 * network rounds the shapes off (a ring fills in, a star loses its points) and shape accuracy falls
 * far more than 15 points at ×1, with any learning rate tried; a fifth of the learning rate reaches
 * the same style, so the network reaches it within the first few dozen steps. Giving modules
 * only to the self-attention widths keeps more shape (46–50%) but the style no longer rises
 * (×0.5 below ×0: those modules darken the shapes rather than pale them). 240 style images instead of 48 keep the most shape (33%); open problem.
 * What the session-4 rows show: the loss of shape comes with learning *any* change of look on this
 * model — a lighter pastel, a navy ground that leaves the shapes alone, values only — and not
 * from the training pipeline, which leaves shapes intact when there is nothing to learn (the flat
 * control). Adding attention at 16×16 to the base lifted its shapes (32.8 → 56.3 % on the
 * evaluation prompts, 68.8 % after more training) but not their survival (71 → 38 %). The gate rows say where they are lost:
 * the pastel colours are drawn in the low-noise steps (applied at t < 250 the network gives three
 * quarters of its style), while at high noise, where the layout is decided, the network adds no
 * pastel at all and only pushes the blob brighter and rounder (applied at t ≥ 500: style
 * unchanged, shape 71 → 50 %). Training on low t only does not help — the network still acts
 * when applied at high t, and acts worse. So the demo trains as A1111 does and applies the network
 * in the steps below t = 250 (the last 4 of Euler a's 16): style .216/.324/.416, shape 100 → 88 %
 * on the step-10,662 base (.199/.318/.408 and 75 → 67 % on step 9,162). The every-step result is
 * printed beside it (shape 100 → 46 %).
 */
export const DEMO_SETTINGS: Readonly<DemoSettings> = Object.freeze({
  styleImages: 240,
  styleSeed: 31337,
  // The tiny tokenizer knows only caption words and keeps 16 tokens: a template's extra words
  // ("a painting of …, art by pastel") become <unk> and push long captions past the limit, so the
  // training prompt is the caption itself — the content — and the style is what is left to learn.
  template: Object.freeze(["[filewords]"]),
  dims: "all",
  layerStructure: [1, 2, 1],
  activation: "relu",
  layerNorm: false,
  weightInit: "Normal" as WeightInit,
  learningRate: "3e-3:50, 1.5e-3:100, 6e-4:150",
  maxSteps: 150,
  batchSize: 8,
  gradientAccumulation: 1,
  timesteps: [0, 1000] as [number, number],
  trainSeed: 1,
  prompts: 24,
  multipliers: [0, 0.5, 1],
  applyTimesteps: [0, 250] as [number, number],
  sampleSteps: 16,
  cfg: 4,
  sampleSeed: 1234,
});

/** `--quick`: the same pipeline at toy size (a few steps, 2 prompts), for tests and a smoke check. */
export const QUICK_SETTINGS: Readonly<DemoSettings> = Object.freeze({
  ...DEMO_SETTINGS,
  styleImages: 4,
  maxSteps: 3,
  batchSize: 2,
  learningRate: "1e-3:2, 5e-4:3",
  prompts: 2,
  sampleSteps: 3,
});

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Output folder (the CLI's `--out`, default `out/demo`). */
  out: string;
  /** Use {@link QUICK_SETTINGS} (the CLI's `--quick`). */
  quick?: boolean;
  /** Override individual settings (after `quick` is applied). */
  settings?: Partial<DemoSettings>;
  /** The base model folder (default: the embedded tiny model). */
  modelDir?: string;
  /** Print lines here (default console.log). */
  log?: (line: string) => void;
  /** The trainer's progress line on stderr (default true). */
  progress?: boolean;
}

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
  };
  files: Record<string, string>;
  seconds: number;
}

/**
 * The demo's fixed prompt set: large single shapes on black, every shape with every colour in turn
 * (prompt i: shape i mod 6, colour (i + ⌊i/6⌋) mod 6 — 36 distinct pairs before repeating), at the
 * five positions in turn. Captions use the tiny model's own vocabulary (`captionOf`).
 */
export function demoPrompts(n: number): Array<{ prompt: string; expected: ExpectedContent }> {
  if (!Number.isInteger(n) || n < 1) throw new Error(`demoPrompts: n must be a positive integer, got ${n}`);
  return Array.from({ length: n }, (_, i) => {
    const scene: Scene = {
      shape: SHAPES[i % SHAPES.length]!,
      color: COLOR_NAMES[(i + Math.floor(i / SHAPES.length)) % COLOR_NAMES.length]!,
      background: "black",
      count: 1,
      size: "large",
      position: POSITIONS[i % POSITIONS.length]!,
      centers: [],
    };
    return { prompt: captionOf(scene), expected: { color: scene.color, shape: scene.shape, background: scene.background, count: scene.count } };
  });
}

/** RGB bytes of one tiny image → PNG, upscaled `scale`× with nearest-neighbour so pixels stay crisp. */
async function tinyPng(rgb: Uint8Array, scale: number): Promise<Buffer> {
  return sharp(Buffer.from(rgb), { raw: { width: TINY_SIZE, height: TINY_SIZE, channels: 3 } })
    .resize(TINY_SIZE * scale, TINY_SIZE * scale, { kernel: "nearest" })
    .png()
    .toBuffer();
}

/** A grid with one row per prompt and one column per multiplier. */
async function previewGrid(prompts: string[], multipliers: readonly number[], images: Map<number, Uint8Array[]>): Promise<Buffer> {
  const items: GridItem[] = [];
  for (let p = 0; p < prompts.length; p++) {
    for (const m of multipliers) items.push({ image: await tinyPng(images.get(m)![p]!, 4), caption: `×${m}: ${prompts[p]}` });
  }
  return renderGrid(items, { cell: 128, columns: multipliers.length, captionLines: 3, max: items.length });
}

function score(multiplier: number, images: Uint8Array[], expected: ExpectedContent[]): MultiplierScore {
  const acc = contentAccuracy(expected, images);
  return { multiplier, styleScore: styleScore(images), colorAccuracy: acc.colorAccuracy, shapeAccuracy: acc.shapeAccuracy };
}

const pct = (x: number): string => `${(100 * x).toFixed(0)}%`.padStart(5);

/** The summary table printed at the end (with the every-step comparison when there is one). */
export function formatSummaryTable(s: Pick<DemoSummary, "before" | "after" | "styleSetScore"> & { afterEveryStep?: MultiplierScore[] | null; settings?: Pick<DemoSettings, "applyTimesteps"> }): string {
  const every = s.afterEveryStep ?? null;
  const gate = s.settings?.applyTimesteps ?? null;
  const lines: string[] = [];
  if (gate) lines.push(`trained network applied at timesteps [${gate[0]}, ${gate[1]}) of each sampling run (the last, low-noise steps); last column: applied in every step`);
  lines.push("multiplier │ style (untrained → trained) │ colour acc. (untrained → trained) │ shape acc. (untrained → trained)" + (every ? " │ every step: style, colour, shape" : ""));
  lines.push("───────────┼─────────────────────────────┼───────────────────────────────────┼──────────────────────────────────" + (every ? "┼──────────────────────────────────" : ""));
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

/** Sample the prompts once per multiplier with `net` attached (the same seed for every multiplier). */
async function sampleAt(base: BaseModel, net: Hypernetwork, prompts: string[], multipliers: readonly number[], st: DemoSettings, gate: [number, number] | null, log: (l: string) => void, reuse?: Map<number, Uint8Array[]>): Promise<Map<number, Uint8Array[]>> {
  const out = new Map<number, Uint8Array[]>();
  for (const m of multipliers) {
    const again = reuse?.get(m);
    if (again) {
      out.set(m, again);
      continue;
    }
    const t0 = Date.now();
    const attachment = attachHypernetworks(base.unet, [{ network: net, multiplier: m, ...(gate ? { timesteps: gate } : {}) }]);
    try {
      out.set(m, await sampleTiny(base, prompts, { seed: st.sampleSeed, steps: st.sampleSteps, guidanceScale: st.cfg }));
    } finally {
      attachment.detach();
    }
    log(`  sampled ${prompts.length} prompts at ×${m}${gate ? ` (network at t ∈ [${gate[0]}, ${gate[1]}))` : ""} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  }
  return out;
}

/** Run the demo, printing each step; returns the summary (also written as `summary.json`). */
export async function runDemo(opts: DemoOptions): Promise<DemoSummary> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const st: DemoSettings = { ...(opts.quick ? QUICK_SETTINGS : DEMO_SETTINGS), ...(opts.settings ?? {}) };
  const t0 = Date.now();
  const secs = (): string => `${((Date.now() - t0) / 1000).toFixed(0)} s`;
  const out = opts.out;
  const file = (name: string): string => path.join(out, name);

  const report = await useBackend("auto", { quiet: true });
  log(formatBackendReport(report));

  // The demo owns these paths inside the output folder and replaces them on every run.
  fs.mkdirSync(out, { recursive: true });
  for (const d of ["style-images", "train", "run"]) fs.rmSync(file(d), { recursive: true, force: true });
  for (const f of ["pastel.pt", "loss.csv", "loss.html", "loss.png", "preview-before.png", "preview-after.png", "summary.json"]) fs.rmSync(file(f), { force: true });

  // 1. The style set as an image folder with content-only captions, then preprocessed.
  const modelDir = opts.modelDir ?? TINY_MODEL_DIR;
  const styleSet = pastelStyleSet(st.styleImages, st.styleSeed);
  fs.mkdirSync(file("style-images"));
  for (const [i, s] of styleSet.entries()) {
    const stem = file(path.join("style-images", `pastel-${String(i).padStart(3, "0")}`));
    await sharp(Buffer.from(s.pixels), { raw: { width: TINY_SIZE, height: TINY_SIZE, channels: 3 } }).png().toFile(stem + ".png");
    fs.writeFileSync(stem + ".txt", s.caption);
  }
  const pre = await preprocess(file("style-images"), file("train"), { width: TINY_SIZE, height: TINY_SIZE, existingCaption: "copy", filenameCaption: false });
  const styleSetScore = styleScore(styleSet.map((s) => s.pixels));
  log(`[${secs()}] style set: ${styleSet.length} pastel images → ${pre.made.length} training images in ${file("train")} (their style score: ${styleSetScore.toFixed(3)})`);

  // 2. Base model and a new hypernetwork with one module pair per attention width.
  const base = loadTinyModel(modelDir);
  const cfg = readTinyConfig(modelDir);
  const widths = [...new Set(base.unet.attentionLayers().map(([, layer]) => layer.contextDim))].sort((a, b) => a - b);
  const dims = st.dims === "all" ? widths : st.dims;
  const unknown = dims.filter((d) => !widths.includes(d));
  if (unknown.length) {
    base.dispose();
    throw new Error(`demo: settings.dims ${JSON.stringify(unknown)} are not attention widths of ${modelDir} (it has ${widths.join(", ")}); use "all" or some of those`);
  }
  const net = createHypernetwork({ name: "pastel", dims, layerStructure: st.layerStructure, activation: st.activation, layerNorm: st.layerNorm, weightInit: st.weightInit, seed: st.trainSeed });
  try {
    const trainedSteps = typeof cfg.training?.steps === "number" ? cfg.training.steps : null;
    log(`[${secs()}] base model ${base.name} (${trainedSteps ?? "?"} training steps${base.checkpointHash ? `, hash ${base.checkpointHash}` : ""}); hypernetwork "${net.name}": dims ${dims.join(", ")}, layers [${st.layerStructure.join(", ")}] ${st.activation}${st.layerNorm ? " + layer norm" : ""}, ${net.parameterCount().toLocaleString("en-US")} parameters`);

    // 3. Before: the fixed prompts with the untrained network.
    const set = demoPrompts(st.prompts);
    const prompts = set.map((p) => p.prompt);
    const expected = set.map((p) => p.expected);
    log(`[${secs()}] sampling ${prompts.length} prompts × multipliers ${st.multipliers.join(", ")} with the untrained network (Euler a, ${st.sampleSteps} steps, CFG ${st.cfg})`);
    const before = await sampleAt(base, net, prompts, st.multipliers, st, st.applyTimesteps, log);

    // 4. Train.
    log(`[${secs()}] training: ${st.maxSteps} steps, batch ${st.batchSize}, learning rate "${st.learningRate}"`);
    const tTrain = Date.now();
    const points: LossPoint[] = [];
    const run = train(base, net, {
      dataDir: file("train"),
      template: st.template,
      logDir: file("run"),
      maxSteps: st.maxSteps,
      learningRate: st.learningRate,
      batchSize: st.batchSize,
      gradientAccumulation: st.gradientAccumulation,
      timesteps: st.timesteps,
      seed: st.trainSeed,
      saveEvery: 0,
      saveOptimizer: false,
      finalFile: file("pastel.pt"),
      progress: opts.progress ?? true,
      onStep: (e) => points.push({ step: e.step, loss: e.loss, lr: e.lr }),
      onLog: (m) => log(`  ${m}`),
    });
    const result = await run.done;
    const trainSeconds = (Date.now() - tTrain) / 1000;
    if (result.reason === "unsafe") throw new Error(`demo: ${result.message}`);
    fs.copyFileSync(path.join(result.logDir, "hypernetwork_loss.csv"), file("loss.csv"));

    // 5. The loss chart: an interactive Plotly page (bundle embedded, works offline) and a PNG.
    const fig = lossFigure(points, { totalSteps: st.maxSteps, title: `${net.name}: training loss` });
    fs.writeFileSync(file("loss.html"), `<!doctype html><html><head><meta charset="utf-8"><title>${net.name} loss</title></head><body>\n${plotlyLoaderHtml()}\n${figureHtml(fig, "loss")}\n</body></html>\n`);
    fs.writeFileSync(file("loss.png"), await lossChartPng(points, { title: `${net.name}: training loss (${points.length} steps)` }));

    // 6. After: the same prompts and seed with the trained network. At ×0 the network adds
    //    mlp(x)·0 = 0 to every context, so those images are the base model's, sampled once above.
    log(`[${secs()}] sampling with the trained network`);
    const base0 = new Map(before.has(0) ? [[0, before.get(0)!]] : []);
    const after = await sampleAt(base, net, prompts, st.multipliers, st, st.applyTimesteps, log, base0);
    fs.writeFileSync(file("preview-before.png"), await previewGrid(prompts, st.multipliers, before));
    fs.writeFileSync(file("preview-after.png"), await previewGrid(prompts, st.multipliers, after));
    // For comparison: the same network applied in every step, as A1111 applies it.
    let everyStep: Map<number, Uint8Array[]> | undefined;
    if (st.applyTimesteps) {
      log(`[${secs()}] for comparison, the trained network applied in every step (as A1111 does)`);
      everyStep = await sampleAt(base, net, prompts, st.multipliers, st, null, log, base0);
      fs.writeFileSync(file("preview-after-every-step.png"), await previewGrid(prompts, st.multipliers, everyStep));
    }

    // 7. Scores.
    const beforeScores = st.multipliers.map((m) => score(m, before.get(m)!, expected));
    const afterScores = st.multipliers.map((m) => score(m, after.get(m)!, expected));
    const everyStepScores = everyStep ? st.multipliers.map((m) => score(m, everyStep!.get(m)!, expected)) : null;
    const ref = afterScores.find((s) => s.multiplier === 0) ?? beforeScores[0]!;
    const sorted = [...afterScores].sort((a, b) => a.multiplier - b.multiplier);
    const summary: DemoSummary = {
      backend: report.backend,
      model: { dir: modelDir, name: base.name, hash: base.checkpointHash, trainedSteps },
      settings: st,
      prompts,
      styleSetScore,
      training: {
        steps: result.step,
        reason: result.reason,
        firstLoss: points[0]?.loss ?? null,
        lastLoss: points.length ? points.slice(-10).reduce((a, p) => a + p.loss, 0) / Math.min(10, points.length) : null,
        seconds: Math.round(trainSeconds),
      },
      before: beforeScores,
      after: afterScores,
      afterEveryStep: everyStepScores,
      checks: {
        styleRisesWithMultiplier: sorted.every((s, i) => i === 0 || s.styleScore > sorted[i - 1]!.styleScore),
        contentWithin15Points: afterScores.every((s) => s.colorAccuracy >= ref.colorAccuracy - 0.15 - 1e-9 && s.shapeAccuracy >= ref.shapeAccuracy - 0.15 - 1e-9),
      },
      files: {
        hypernetwork: file("pastel.pt"),
        lossCsv: file("loss.csv"),
        lossHtml: file("loss.html"),
        lossPng: file("loss.png"),
        previewBefore: file("preview-before.png"),
        previewAfter: file("preview-after.png"),
        ...(everyStep ? { previewAfterEveryStep: file("preview-after-every-step.png") } : {}),
        summary: file("summary.json"),
        trainingFolder: file("train"),
        runFolder: result.logDir,
      },
      seconds: Math.round((Date.now() - t0) / 1000),
    };
    fs.writeFileSync(file("summary.json"), JSON.stringify(summary, null, 2) + "\n");

    log("");
    log(`${result.message}; loss ${summary.training.firstLoss?.toFixed(4)} → ${summary.training.lastLoss?.toFixed(4)} (mean of the last 10 steps), ${summary.training.seconds} s`);
    log(formatSummaryTable(summary));
    log(`style rises with the multiplier: ${summary.checks.styleRisesWithMultiplier ? "yes" : "NO"}; content within 15 points of the base model (no larger drop): ${summary.checks.contentWithin15Points ? "yes" : "NO"}`);
    log(`files in ${out}: pastel.pt, loss.csv, loss.html, loss.png, preview-before.png, preview-after.png${everyStep ? ", preview-after-every-step.png" : ""}, summary.json — ${summary.seconds} s in all`);
    return summary;
  } finally {
    net.dispose();
    base.dispose();
  }
}
