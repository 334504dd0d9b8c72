/**
 * Plotly figures for training, and the HTML that draws them with no network access.
 *
 * A figure is plain data (`{data, layout}`), built here and drawn by plotly.js in the page. The
 * plotly.js bundle from the `plotly.js-dist` package is embedded once per notebook (or referenced
 * from node_modules in a standalone HTML file); every chart after that is a small `<div>` plus a
 * `Plotly.react` call, so a live chart can be re-sent on every update cheaply.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import type { Data, Layout } from "plotly.js-dist";

/** A Plotly figure: traces plus layout. */
export interface Figure {
  data: Data[];
  layout: Partial<Layout>;
}

/** One training step as the loss chart sees it. */
export interface LossPoint {
  step: number;
  loss: number;
  /** Learning rate used at this step. */
  lr?: number;
}

/** Options for {@link lossFigure}. */
export interface LossFigureOptions {
  /** EMA factor for the smoothed curve, 0 ≤ β < 1 (default 0.9; 0 hides the curve). */
  smoothing?: number;
  /** Steps at which a checkpoint was saved: drawn as markers on the loss curve. */
  checkpoints?: number[];
  /** Steps at which a preview was rendered: drawn as faint vertical lines. */
  previews?: number[];
  title?: string;
  /** Total steps planned: fixes the x range so the chart does not rescale as it grows. */
  totalSteps?: number;
}

/**
 * Exponential moving average with bias correction (as TensorBoard smooths):
 *
 *   m_i = β·m_{i−1} + (1−β)·x_i,  m_0 = 0;   s_i = m_i / (1 − β^i)
 *
 * The correction makes early values unbiased toward 0. Non-finite values are skipped (the
 * smoothed value carries over) so one NaN step does not blank the rest of the curve.
 */
export function smoothEma(values: readonly number[], beta: number): number[] {
  if (!(beta >= 0 && beta < 1)) throw new Error(`smoothing must be in [0, 1), got ${beta}`);
  const out: number[] = [];
  let m = 0;
  let n = 0;
  for (const x of values) {
    if (Number.isFinite(x)) {
      m = beta * m + (1 - beta) * x;
      n++;
    }
    out.push(n === 0 ? NaN : m / (1 - beta ** n));
  }
  return out;
}

/**
 * Loss chart: raw loss per step, its smoothed curve, checkpoint markers, and the learning rate on
 * a second (log) y axis.
 */
export function lossFigure(points: readonly LossPoint[], opts: LossFigureOptions = {}): Figure {
  const beta = opts.smoothing ?? 0.9;
  const steps = points.map((p) => p.step);
  const losses = points.map((p) => p.loss);
  const data: Data[] = [
    { type: "scatter", mode: "lines", name: "loss", x: steps, y: losses, line: { color: "rgba(31,119,180,0.35)", width: 1 } },
  ];
  if (beta > 0) {
    data.push({ type: "scatter", mode: "lines", name: `smoothed (β=${beta})`, x: steps, y: smoothEma(losses, beta), line: { color: "#1f77b4", width: 2.5 } });
  }
  const ckpt = new Set(opts.checkpoints ?? []);
  if (ckpt.size > 0) {
    const at = points.filter((p) => ckpt.has(p.step));
    data.push({
      type: "scatter",
      mode: "markers",
      name: "checkpoint",
      x: at.map((p) => p.step),
      y: at.map((p) => p.loss),
      marker: { symbol: "diamond", size: 10, color: "#d62728" },
    });
  }
  const lrPoints = points.filter((p) => p.lr !== undefined);
  if (lrPoints.length > 0) {
    data.push({
      type: "scatter",
      mode: "lines",
      name: "learning rate",
      x: lrPoints.map((p) => p.step),
      y: lrPoints.map((p) => p.lr!),
      yaxis: "y2",
      line: { color: "#2ca02c", width: 1.5, dash: "dot" },
    });
  }
  const layout: Partial<Layout> = {
    title: { text: opts.title ?? "Training loss" },
    xaxis: { title: { text: "step" }, ...(opts.totalSteps ? { range: [0, opts.totalSteps] } : {}) },
    yaxis: { title: { text: "loss (ε-MSE)" } },
    yaxis2: { title: { text: "learning rate" }, overlaying: "y", side: "right", type: "log", showgrid: false },
    legend: { orientation: "h", y: -0.2 },
    margin: { l: 60, r: 60, t: 40, b: 40 },
    height: 360,
    shapes: (opts.previews ?? []).map((s) => ({ type: "line", xref: "x", yref: "paper", x0: s, x1: s, y0: 0, y1: 1, line: { color: "rgba(0,0,0,0.12)", width: 1 } })),
  };
  return { data, layout };
}

/**
 * Bar chart of the mean output norm of each hypernetwork module (the size of the change it makes
 * to k or v, per context width). `norms` maps a label like "768 k" to a value.
 */
export function normsFigure(norms: ReadonlyMap<string, number> | Record<string, number>, title = "Hypernetwork output norm per module"): Figure {
  const entries = norms instanceof Map ? [...norms.entries()] : Object.entries(norms);
  return {
    data: [{ type: "bar", x: entries.map(([k]) => k), y: entries.map(([, v]) => v), marker: { color: "#9467bd" } }],
    layout: { title: { text: title }, yaxis: { title: { text: "mean ‖Δ‖ per token" } }, height: 300, margin: { l: 60, r: 20, t: 40, b: 60 } },
  };
}

const nodeRequire = createRequire(__filename);
let plotlySource: string | undefined;

/** Path of the plotly.js bundle shipped in `plotly.js-dist`. */
export function plotlyBundlePath(): string {
  return nodeRequire.resolve("plotly.js-dist");
}

/**
 * A `<script>` that defines `window.Plotly` from the embedded bundle (about 10 MB, once per
 * notebook). The bundle's UMD header assigns `module.exports` when a `module` object exists, so it
 * runs with `module` shadowed to make it take the browser path in every frontend.
 */
export function plotlyLoaderHtml(): string {
  plotlySource ??= fs.readFileSync(plotlyBundlePath(), "utf8").replace(/<\/script/gi, "<\\/script");
  return `<script type="text/javascript">if (!window.Plotly) { (function (module, exports, define) {\n${plotlySource}\n})(undefined, undefined, undefined); }</script>`;
}

/** A `<script src>` to the bundle in node_modules, for standalone HTML files on this machine. */
export function plotlyFileScriptTag(): string {
  return `<script src="${pathToFileURL(plotlyBundlePath()).href}"></script>`;
}

/**
 * HTML that draws `fig` into a div with this id: a `<div>` and a script that waits for
 * `window.Plotly` (loaded by an earlier output) and calls `Plotly.react`, which redraws in place
 * when the same div is updated.
 */
export function figureHtml(fig: Figure, divId: string): string {
  const id = divId.replace(/[^A-Za-z0-9_-]/g, "_");
  const json = JSON.stringify(fig).replace(/</g, "\\u003c");
  return (
    `<div id="${id}" class="hn-plot" style="width:100%;min-height:${(fig.layout.height as number | undefined) ?? 360}px"></div>` +
    `<script type="text/javascript">(function () { var fig = ${json}; var n = 0;` +
    ` function draw() { var el = document.getElementById("${id}");` +
    ` if (window.Plotly && el) { window.Plotly.react(el, fig.data, fig.layout, {responsive: true, displaylogo: false}); }` +
    ` else if (n++ < 200) { setTimeout(draw, 50); } } draw(); })();</script>`
  );
}
