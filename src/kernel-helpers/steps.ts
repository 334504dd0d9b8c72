/**
 * The notebook verbs (`hn.*`): one function per workflow step. Each does the work with the library
 * function of the same name (`hn.core.*`, `hn.data.*`) and then shows the result through the
 * display adapters (`display.ts`): inline HTML/PNG in a tslab notebook, files and terminal lines
 * elsewhere. They return plain values, so a notebook can keep going with them.
 *
 *     await useBackend()                            → backend (src/backend/)
 *     const base = await loadBaseModel()            → the tiny model, or loadBaseModel("path/to/sd15.safetensors")
 *     await preprocess(src, dst, opts)              → training folder + contact sheet + summary table
 *     const net = createHypernetwork({...})         → a new hypernetwork and its layer table
 *     const result = await train(base, net, {...}).done  → live loss chart, progress line, previews
 *     await txt2img(base, { prompt, network: net }) → images with an in-memory network
 *     await txt2img(base, { prompt: "… <hypernet:name:0.8>", hypernetworkDir })  → images from tags
 *     saveHypernetwork(net, file) / loadHypernetwork(file)
 *     await multiplierSweep(base, net, prompt, [0, 0.5, 1])  → seeds × multipliers grid
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { BaseModel } from "../pipeline/base-model";
import { type LoadBaseModelOptions, type LoadedBaseModel, loadBaseModel as loadCheckpoint } from "../pipeline/load";
import { type Txt2ImgOptions, type Txt2ImgResult, txt2img as generate } from "../pipeline/txt2img";
import { loadTinyModel } from "../tiny/model";
import { type CreateOptions, type Hypernetwork, createHypernetwork as newHypernetwork } from "../hypernet/network";
import { attachHypernetworks } from "../hypernet/attach";
import { type SaveOptions, loadHypernetwork as readNetwork, saveHypernetwork as writeNetwork } from "../hypernet/file";
import { shortHash } from "../io/hash";
import { type PreprocessOptions, type PreprocessSummary, preprocess as preprocessFolder } from "../data/preprocess";
import { renderGrid, summaryTable, type GridItem } from "../data/view";
import {
  type NormsEvent,
  type TrainOptions,
  type TrainResult,
  type TrainingRun,
  type ValidationEvent,
  train as runTraining,
} from "../train/trainer";
import { displayMode, escapeHtml, liveDisplay, pngImgTag, show, type LiveDisplay } from "./display";
import { figureHtml, lossFigure, plotlyFileScriptTag, plotlyLoaderHtml, type LossPoint, type ValidationPoint } from "./charts";
import {
  compactInspect,
  defaultRunDir,
  finalLossChart,
  readLossCsv,
  readValidationCsv,
  resumedLossCsv,
  validationCsv,
  writeValidationCsv,
} from "./results";

let plotlyShown = false;

/**
 * Make plotly.js available to the charts that follow. In a notebook this embeds the bundle once
 * (one ~10 MB output, no network needed to render); call it again with `force` after reloading the
 * page of a running kernel. Outside a notebook it does nothing (chart files reference the bundle).
 */
export function enablePlotly(opts: { force?: boolean } = {}): void {
  if (displayMode() !== "notebook" || (plotlyShown && !opts.force)) return;
  show("plotly", { html: plotlyLoaderHtml() });
  plotlyShown = true;
}

/** Parameter count of a base model's parts, for the summary line. */
function paramCount(base: BaseModel): number {
  return base.unet.parameterCount() + base.textEncoder.parameterCount() + (base.vae?.parameterCount() ?? 0);
}

/**
 * Load the base model: the embedded tiny model when `source` is omitted (or the tiny model in
 * `HYPERNET_TINY_MODEL_DIR`), otherwise an SD 1.x checkpoint (`.safetensors`/`.ckpt` file or
 * diffusers folder). Shows one summary line.
 */
export function loadBaseModel(): Promise<BaseModel>;
export function loadBaseModel(source: string, opts?: LoadBaseModelOptions): Promise<LoadedBaseModel>;
export async function loadBaseModel(source?: string, opts: LoadBaseModelOptions = {}): Promise<BaseModel> {
  const base = source ? await loadCheckpoint(source, opts) : loadTinyModel(process.env.HYPERNET_TINY_MODEL_DIR || undefined);
  const size = `${base.imageSize}×${base.imageSize}`;
  show("base-model", {
    text: `base model ${base.name}: ${base.space} space, ${size} images, ${base.channels}-channel ${base.sampleSize}×${base.sampleSize} UNet input, text context ${base.contextDim} wide, ${(paramCount(base) / 1e6).toFixed(2)} M parameters, ${base.unet.attentionLayers().length} attention layers`,
  });
  return base;
}

/**
 * Preprocess `src` into `dst` (see `data.preprocess`) and show the result: a contact sheet of the
 * training images with their captions, and the per-file summary table (what was made, skipped, why).
 */
export async function preprocess(
  src: string,
  dst: string,
  opts: PreprocessOptions & { gridCell?: number; gridMax?: number } = {},
): Promise<PreprocessSummary> {
  const summary = await preprocessFolder(src, dst, opts);
  if (summary.made.length > 0) {
    const png = await renderGrid(dst, { cell: opts.gridCell ?? 96, columns: 6, max: opts.gridMax ?? 24 });
    show("training-set", { png });
  }
  // A large set lists as many files as the contact sheet shows, then how many more.
  show("preprocess-summary", { html: summaryTable(summary, Math.max(opts.gridMax ?? 24, 24)) });
  return summary;
}

/** One row of {@link describeHypernetwork}: a module (width, k or v) and its layers. */
export interface ModuleRow {
  dim: number;
  which: "k" | "v";
  layers: string[];
  parameters: number;
}

/** The layers of every module of a network, as rows (for tables and tests). */
export function describeHypernetwork(net: Hypernetwork): ModuleRow[] {
  const rows: ModuleRow[] = [];
  for (const [dim, pair] of net.modules) {
    pair.forEach((mod, i) => {
      const layers = mod.plan.map((p) => {
        switch (p.kind) {
          case "linear":
            return `${p.index}: Linear(${p.inFeatures} → ${p.outFeatures})`;
          case "activation":
            return `${p.index}: ${p.name}`;
          case "layernorm":
            return `${p.index}: LayerNorm(${p.features})`;
          case "dropout":
            return `${p.index}: Dropout(p=${p.p})`;
        }
      });
      // A MonkeyPatch beta module has no flat plan: one entry per residual block.
      for (const bl of mod.blockPlans) {
        const inner = bl.layers.map((l) => (l.kind === "activation" ? l.name : l.kind === "dropout" ? `Dropout(p=${l.p})` : l.kind));
        const skip = bl.upsample ? "Linear skip (frozen)" : "resize skip";
        layers.push(`${bl.index}: ResBlock(${bl.inFeatures} → ${bl.outFeatures}; ${skip}; ${inner.join(", ")})`);
      }
      const parameters = mod.parameterCount();
      rows.push({ dim, which: i === 0 ? "k" : "v", layers, parameters });
    });
  }
  return rows;
}

/** Show a network's settings and layer table (HTML in a notebook, text elsewhere). */
export function inspectHypernetwork(net: Hypernetwork): void {
  const rows = describeHypernetwork(net);
  const total = rows.reduce((a, r) => a + r.parameters, 0);
  const i = net.info;
  const settings = `layer structure [${i.layerStructure.join(", ")}], activation ${i.activation}, layer norm ${i.layerNorm}, init ${i.weightInit}, dropout ${i.useDropout ? `[${i.dropoutStructure.join(", ")}]` : "off"}, step ${i.step}${i.skipConnection ? ", MonkeyPatch residual blocks (skip_connection)" : ""}`;
  const fp32Bytes = total * 4;
  if (displayMode() === "notebook") {
    const body = rows
      .map(
        (r) =>
          `<tr><td>${r.dim}</td><td>${r.which}</td><td style="text-align:left">${r.layers.map(escapeHtml).join("<br>")}</td><td>${r.parameters.toLocaleString("en")}</td></tr>`,
      )
      .join("");
    show("hypernetwork", {
      html: `<p><b>${escapeHtml(net.name)}</b>: ${escapeHtml(settings)}; ${total.toLocaleString("en")} parameters (≈${(fp32Bytes / 1024).toFixed(0)} KiB as float32)</p><table><tr><th>width</th><th>k/v</th><th>layers</th><th>parameters</th></tr>${body}</table>`,
    });
  } else {
    const lines = rows.map((r) => `  ${r.dim} ${r.which}: ${r.layers.join(", ")} (${r.parameters} params)`);
    show("hypernetwork", { text: `${net.name}: ${settings}; ${total} parameters\n${lines.join("\n")}` });
  }
}

/** Create a hypernetwork (`core.createHypernetwork`) and show its layer table. */
export function createHypernetwork(opts: CreateOptions): Hypernetwork {
  const net = newHypernetwork(opts);
  inspectHypernetwork(net);
  return net;
}

/** Options of {@link train}: the trainer's, plus how the live view looks. */
export interface TrainLiveOptions extends TrainOptions {
  /** EMA smoothing of the chart's second curve (default 0.9). */
  smoothing?: number;
  /** Minimum milliseconds between chart redraws (default 1000; the last step is always drawn). */
  chartEveryMs?: number;
}

/** What {@link train} resolves to: the trainer's result and the points of the chart. */
export interface TrainLiveResult extends TrainResult {
  points: LossPoint[];
  checkpoints: number[];
  /** The validation losses (with `validationEvery`), each with its per-sample losses, and the module norms (with `normsEvery`). */
  validation: ValidationEvent[];
  norms: NormsEvent[];
  /** How many times each live display was updated (the notebook keeps one output per display). */
  displayUpdates: { chart: number; progress: number; preview: number };
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(0)}s`;
}

/**
 * The validation and norms events of a live training run, the trainer callbacks that collect them
 * (and pass them on to the caller's), and the validation points for the loss chart: `earlier` (a
 * resumed run's points before its first step), then this run's. Every validation loss is also
 * kept in `file` (the earlier points first), which a later resume reads; a file that cannot be
 * written costs the curve's continuation, not the run (`warn` says so once). `redraw` is called
 * after each validation loss.
 */
function measurementLog(
  opts: TrainLiveOptions,
  redraw: () => void,
  keep: { earlier: ValidationPoint[]; file: string; warn: (m: string) => void },
) {
  const validation: ValidationEvent[] = [];
  const norms: NormsEvent[] = [];
  const points = (): ValidationPoint[] => [...keep.earlier, ...validation.map((v) => ({ step: v.step, loss: v.loss }))];
  let saving = true;
  const handlers: Pick<TrainOptions, "onValidation" | "onNorms"> = {
    onValidation: (e) => {
      validation.push(e);
      if (saving) {
        try {
          writeValidationCsv(keep.file, points());
        } catch (err) {
          saving = false;
          keep.warn(`validation losses not saved to ${keep.file} (a resumed chart will not continue them): ${(err as Error).message}`);
        }
      }
      redraw();
      opts.onValidation?.(e);
    },
    onNorms: (e) => {
      norms.push(e);
      opts.onNorms?.(e);
    },
  };
  return { validation, norms, handlers, points };
}

/**
 * Train with a live view: a progress line, the loss chart (loss, smoothed loss, learning rate on a
 * second axis, checkpoint markers) and the latest preview, each one display updated in place.
 * Outside a notebook the chart is `<outputDir>/loss.html`, the preview `<outputDir>/preview.png`,
 * and progress goes to the terminal. Returns the run handle right away (`stop()` works); its
 * `done` resolves with the result plus the chart data.
 */
export function train(base: BaseModel, net: Hypernetwork, opts: TrainLiveOptions): TrainingRun & { done: Promise<TrainLiveResult> } {
  enablePlotly();
  const progress = liveDisplay("progress");
  const chart = liveDisplay("loss");
  const previewDisplay = liveDisplay("preview");
  // Notebook runs go under the git-ignored out/ unless the notebook names a folder.
  const logDir = opts.logDir ?? defaultRunDir(net.name);
  // A resumed run's chart continues the earlier curve: the points its CSV holds up to the network's step.
  const points: LossPoint[] = opts.resumeFrom ? readLossCsv(resumedLossCsv(opts.resumeFrom, opts.logDir), net.info.step) : [];
  const checkpoints: number[] = [];
  const previews: number[] = [];
  const messages: string[] = [];
  // Validation losses are few: each one redraws the chart as it comes. A resumed run's curve starts
  // with the points the earlier run measured before the resumed step (it measures that step again).
  const earlier = opts.resumeFrom
    ? readValidationCsv(validationCsv(path.dirname(resumedLossCsv(opts.resumeFrom, opts.logDir))), net.info.step)
    : [];
  const measured = measurementLog(opts, () => draw(), { earlier, file: validationCsv(logDir), warn: (m) => messages.push(m) });
  const title = `${net.name}: training loss`;
  const everyMs = opts.chartEveryMs ?? 1000;
  const chartId = `hn-loss-${net.name}-${Date.now().toString(36)}`;
  let lastDraw = 0;
  let lastProgress = 0;
  let totalSteps = opts.maxSteps;

  const draw = (): void => {
    const fig = lossFigure(points, { smoothing: opts.smoothing, checkpoints, previews, totalSteps, title, validation: measured.points() });
    // Standalone chart files load plotly.js from node_modules instead of embedding 10 MB per write.
    chart.update({ html: (displayMode() === "notebook" ? "" : plotlyFileScriptTag() + "\n") + figureHtml(fig, chartId) });
    lastDraw = Date.now();
  };
  const progressLine = (s: {
    step: number;
    maxSteps: number;
    loss: number;
    lossAverage: number;
    lr: number;
    epoch: number;
    stepsPerSecond: number;
    etaSeconds: number;
  }): string =>
    `step ${s.step}/${s.maxSteps}  epoch ${s.epoch}  loss ${s.loss.toFixed(4)} (avg ${s.lossAverage.toFixed(4)})  lr ${s.lr.toExponential(2)}  ${s.stepsPerSecond.toFixed(2)} step/s  ETA ${formatSeconds(s.etaSeconds)}`;

  const run = runTraining(base, net, {
    ...opts,
    logDir,
    progress: false,
    onStep: (e) => {
      totalSteps = e.maxSteps;
      points.push({ step: e.step, loss: e.loss, lr: e.lr });
      const now = Date.now();
      const last = e.step >= e.maxSteps;
      if (last || now - lastDraw >= everyMs) draw();
      // A terminal line is rewritten in place; a log gets one line per few seconds.
      if (displayMode() === "notebook" || process.stdout.isTTY || last || now - lastProgress >= 5000) {
        progress.update({ text: progressLine(e) });
        lastProgress = now;
      }
      opts.onStep?.(e);
    },
    ...measured.handlers,
    onCheckpoint: (e) => {
      checkpoints.push(e.step);
      opts.onCheckpoint?.(e);
    },
    onPreview: async (e) => {
      previews.push(e.step);
      if (displayMode() === "notebook") {
        const imgs = e.png
          .map((p, i) => pngImgTag(p, { width: Math.max(128, e.images[i]?.width ?? 128), alt: e.prompts[i] ?? "" }))
          .join(" ");
        previewDisplay.update({ html: `<div><b>preview at step ${e.step}</b>: ${escapeHtml(e.prompts[0] ?? "")}<br>${imgs}</div>` });
      } else if (e.png[0]) {
        previewDisplay.update({ png: e.png[0] });
      }
      await opts.onPreview?.(e);
    },
    onLog: (m) => {
      messages.push(m);
      if (opts.onLog) opts.onLog(m);
      else if (displayMode() !== "notebook") console.log(m);
    },
  });
  const done = run.done.then(async (result) => {
    // The last chart carries a PNG of itself, for viewers without plotly.js (and saved notebooks).
    const fig = lossFigure(points, { smoothing: opts.smoothing, checkpoints, previews, totalSteps, title, validation: measured.points() });
    const final = await finalLossChart(fig, chartId, points, title, measured.points());
    chart.update(displayMode() === "notebook" ? final : { html: plotlyFileScriptTag() + "\n" + final.html });
    progress.finish();
    const last = points[points.length - 1];
    const summary = `${result.message}${last ? ` — final loss ${last.loss.toFixed(4)}` : ""}`;
    if (displayMode() === "notebook") {
      progress.update({
        text: `${last ? progressLine({ ...last, lr: last.lr ?? 0, maxSteps: totalSteps, lossAverage: NaN, epoch: NaN, stepsPerSecond: NaN, etaSeconds: NaN }).replace(/ +epoch NaN| +\(avg NaN\)| +NaN step\/s| +ETA \?/g, "") + "\n" : ""}${summary}${messages.some((m) => m !== result.message) ? "\n" + messages.filter((m) => m !== result.message).join("\n") : ""}`,
      });
    } else if (messages.includes(result.message) && !opts.onLog) {
      // The trainer's own log line already printed the message: add only the final loss.
      if (last) console.log(`final loss ${last.loss.toFixed(4)}`);
    } else {
      console.log(summary);
    }
    return {
      ...result,
      points,
      checkpoints,
      validation: measured.validation,
      norms: measured.norms,
      displayUpdates: { chart: chart.updates, progress: progress.updates, preview: previewDisplay.updates },
    };
  });
  return { done, stop: () => run.stop() };
}

/** Options of the {@link txt2img} verb: the library txt2img's, plus an in-memory network to apply and the display width. */
export interface Txt2ImgShowOptions extends Txt2ImgOptions {
  /** A network (not yet saved) to attach for this call, with its multiplier (default 1). */
  network?: Hypernetwork;
  multiplier?: number;
  /** Display width of each image in px (default 4× the image, at least 128). */
  displayWidth?: number;
}

function imagesHtml(result: Txt2ImgResult, title: string, width: number): string {
  const imgs = result.png.map((p, i) => pngImgTag(p, { width, alt: result.infotexts[i] ?? "" })).join(" ");
  return `<div><b>${escapeHtml(title)}</b><br>${imgs}<pre style="font-size:11px;white-space:pre-wrap">${escapeHtml(result.infotexts[0] ?? "")}</pre></div>`;
}

/**
 * Generate and show images (`core.txt2img`). Prompt tags `<hypernet:name:m>` are looked up in
 * `hypernetworkDir`; `network` attaches an in-memory network for this call only.
 */
export async function txt2img(base: BaseModel, opts: Txt2ImgShowOptions): Promise<Txt2ImgResult> {
  const { network, multiplier, displayWidth, ...rest } = opts;
  const prompt = opts.prompt;
  const attachment = network ? attachHypernetworks(base.unet, [{ network, multiplier: multiplier ?? 1 }]) : undefined;
  let result: Txt2ImgResult;
  try {
    result = await generate(base, rest);
  } finally {
    attachment?.detach();
  }
  const width = displayWidth ?? Math.max(128, 4 * base.imageSize > 512 ? base.imageSize : 4 * base.imageSize);
  if (displayMode() === "notebook")
    show("preview", { html: imagesHtml(result, prompt + (network ? `  [+ ${network.name} × ${multiplier ?? 1}]` : ""), width) });
  else result.png.forEach((p, i) => show(`sample-${result.seed}-${i}`, { png: p }));
  // Shown above already: echo the value as one line, not its pixel arrays and PNG bytes.
  return compactInspect(
    result,
    (r) =>
      `Txt2ImgResult { ${r.png.length} image(s) ${r.shape[2]}×${r.shape[1]}, seed ${r.seed}${r.hypernetworks.length ? `, hypernetworks ${r.hypernetworks.map((h) => h.name).join(", ")}` : ""} }`,
  );
}

/** Save a network (A1111 `.pt`, or `.safetensors` by extension) and show its size and hash. */
export function saveHypernetwork(net: Hypernetwork, file: string, opts: SaveOptions = {}): { file: string; bytes: number; hash: string } {
  writeNetwork(net, file, opts);
  const bytes = fs.statSync(file).size;
  const hash = shortHash(file);
  show("saved", { text: `saved ${path.resolve(file)}: ${(bytes / 1024).toFixed(1)} KiB, hash ${hash}` });
  return { file: path.resolve(file), bytes, hash };
}

/** Load a network file (`trainable: true` to train it further) and show its layer table. */
export function loadHypernetwork(file: string, opts: { trainable?: boolean } = {}): Hypernetwork {
  const net = readNetwork(file, opts);
  inspectHypernetwork(net);
  return net;
}

/**
 * The multiplier sweep: one image per (seed, multiplier), same prompt and seed along each row, so
 * the only change across a row is the network's strength. Shown as one labelled grid; returns it
 * as PNG bytes.
 */
export async function multiplierSweep(
  base: BaseModel,
  network: Hypernetwork,
  prompt: string,
  multipliers: readonly number[] = [0, 0.25, 0.5, 0.75, 1],
  opts: Omit<Txt2ImgOptions, "prompt" | "seed" | "batch"> & { seeds?: readonly number[]; cell?: number } = {},
): Promise<Buffer> {
  const { seeds = [1, 2], cell, ...rest } = opts;
  const items: GridItem[] = [];
  for (const seed of seeds) {
    for (const m of multipliers) {
      const attachment = attachHypernetworks(base.unet, [{ network, multiplier: m }]);
      try {
        const r = await generate(base, { ...rest, prompt, seed });
        items.push({ image: r.png[0]!, caption: `×${m} seed ${seed}` });
      } finally {
        attachment.detach();
      }
    }
  }
  const png = await renderGrid(items, { cell: cell ?? 96, columns: multipliers.length, captionLines: 1, max: items.length });
  show("multiplier-sweep", { png });
  return compactInspect(
    png,
    (b) => `[multiplier sweep PNG, ${b.length} bytes: ${seeds.length} seed(s) × multipliers ${multipliers.join(", ")}]`,
  );
}

export type { LiveDisplay };
