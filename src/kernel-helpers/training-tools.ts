/**
 * Notebook verbs for the training tools no web UI has: the LR range test, the checkpoint gallery,
 * loss against timestep and the per-module norms. Each does the work with the library function
 * (`hn.core.*`), shows the result — a chart that plotly.js draws and that carries a PNG of itself
 * for viewers without it, or an image grid — and returns the values.
 *
 *     const lr = await hn.lrRangeTest(base, net, { dataDir: "train" });   // chart + suggested schedule
 *     const run = await hn.train(base, net, { …, learningRate: lr.suggestion.schedule,
 *                                             validationEvery: 50, normsEvery: 50 }).done;
 *     hn.timestepLossChart(run);  hn.moduleNormsChart(run);
 *     await hn.checkpointGallery(base, run.logDir, { prompt: "a photo of a boy" });
 */
import type { Hypernetwork } from "../hypernet/network";
import type { BaseModel } from "../pipeline/base-model";
import type { NormsEvent, ValidationEvent } from "../train/events";
import { type GalleryOptions, type GalleryResult, checkpointGallery as makeGallery } from "../train/gallery";
import { type LrRangeOptions, type LrRangeResult, lrRangeTest as runRangeTest } from "../train/lr-range";
import { figureHtml, plotlyFileScriptTag } from "./charts";
import { displayMode, show } from "./display";
import { compactInspect } from "./results";
import {
  type LineChart,
  lineChartPng,
  lineFigure,
  lrRangeChart,
  moduleNormsChart as normsChart,
  timestepLossChart as tChart,
} from "./tool-charts";
import { enablePlotly } from "./steps";

let chartCount = 0;

/** Show a line chart: the Plotly figure with its PNG inside (and beside it, for viewers without scripts). */
async function showChart(name: string, chart: LineChart): Promise<Buffer> {
  enablePlotly();
  const png = await lineChartPng(chart);
  const html = figureHtml(lineFigure(chart), `hn-${name}-${Date.now().toString(36)}-${chartCount++}`, { fallbackPng: png });
  show(name, displayMode() === "notebook" ? { html, png } : { html: `${plotlyFileScriptTag()}\n${html}` });
  return png;
}

/**
 * The LR range test (`core.lrRangeTest`, on a copy of `net`): shows loss against learning rate with
 * the valley and the suggested rate marked, and a line with the suggested A1111 schedule.
 */
export async function lrRangeTest(base: BaseModel, net: Hypernetwork, opts: LrRangeOptions): Promise<LrRangeResult> {
  const result = await runRangeTest(base, net, opts);
  await showChart("lr-range", lrRangeChart(result));
  const s = result.suggestion;
  show("lr-range-suggestion", {
    text:
      `LR range test: ${result.points.length} steps${result.stoppedEarly ? " (stopped: the loss diverged)" : ""}; lowest loss at lr ${s.valleyLr.toExponential(2)}; ` +
      `suggested learning rate ${s.lr} → learningRate: "${s.schedule}"${s.note ? `\nnote: ${s.note}` : ""}`,
  });
  return compactInspect(result, (r) => `LrRangeResult { ${r.points.length} points, suggested "${r.suggestion.schedule}" }`);
}

/** Every checkpoint of a run sampled at the same seeds (`core.checkpointGallery`), shown as one grid: rows = seeds, columns = checkpoints. */
export async function checkpointGallery(base: BaseModel, runDir: string, opts: GalleryOptions): Promise<GalleryResult> {
  const result = await makeGallery(base, runDir, opts);
  show("checkpoint-gallery", { png: result.grid });
  return compactInspect(
    result,
    (r) => `GalleryResult { ${r.columns.map((c) => c.label).join(", ")} × seeds ${r.seeds.join(", ")}; grid PNG ${r.grid.length} bytes }`,
  );
}

/** The validation events of a `train` result, or the events themselves. */
function validationOf(from: readonly ValidationEvent[] | { validation: readonly ValidationEvent[] }): readonly ValidationEvent[] {
  return "validation" in from ? from.validation : from;
}

/**
 * Loss against timestep over a run (from `train`'s result with `validationEvery`): one curve per
 * validation, binned by timestep. Returns the chart's PNG.
 */
export async function timestepLossChart(
  from: readonly ValidationEvent[] | { validation: readonly ValidationEvent[] },
  opts: { bins?: number; range?: readonly [number, number]; maxCurves?: number } = {},
): Promise<Buffer> {
  const events = validationOf(from);
  if (events.length === 0) throw new Error("timestepLossChart: no validation losses; train with validationEvery: N to measure them");
  return showChart("timestep-loss", tChart(events, opts));
}

/**
 * Per-module gradient and output norms over a run (from `train`'s result with `normsEvery`): two
 * charts, one curve per module. Returns their PNGs.
 */
export async function moduleNormsChart(
  from: readonly NormsEvent[] | { norms: readonly NormsEvent[] },
): Promise<{ gradient: Buffer; output: Buffer }> {
  const events = "norms" in from ? from.norms : from;
  if (events.length === 0) throw new Error("moduleNormsChart: no norms; train with normsEvery: N to measure them");
  return {
    gradient: await showChart("gradient-norms", normsChart(events, "gradient")),
    output: await showChart("output-norms", normsChart(events, "output")),
  };
}
