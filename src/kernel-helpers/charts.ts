/**
 * Plotly figures for training, and the HTML that draws them with no network access.
 *
 * A figure is plain data (`{data, layout}`), built here and drawn by plotly.js in the page. The
 * plotly.js bundle from the `plotly.js-dist` package is embedded once per kernel (or referenced
 * from node_modules in a standalone HTML file); every chart after that is a small `<div>` plus a
 * `Plotly.react` call, so a live chart can be re-sent on every update cheaply. A chart's final
 * output also carries a PNG of itself (inside the div and as `image/png`), so it still shows where
 * the bundle is missing: a re-run cell replaced the output that held it, or the viewer runs no
 * scripts (GitHub, untrusted notebooks).
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import type { Data, Layout } from "plotly.js-dist";
import sharp from "sharp";
import { encodePngFrom } from "../io/png";

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

/** A validation loss measured after `step` steps (the trainer's `onValidation`). */
export interface ValidationPoint {
  step: number;
  loss: number;
}

/** Options for {@link lossFigure}. */
export interface LossFigureOptions {
  /** Validation losses on the fixed batch: drawn as a second curve with markers, next to the training loss. */
  validation?: readonly ValidationPoint[];
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
    data.push({
      type: "scatter",
      mode: "lines",
      name: `smoothed (β=${beta})`,
      x: steps,
      y: smoothEma(losses, beta),
      line: { color: "#1f77b4", width: 2.5 },
    });
  }
  if (opts.validation && opts.validation.length > 0) {
    data.push({
      type: "scatter",
      mode: "lines+markers",
      name: "validation loss",
      x: opts.validation.map((p) => p.step),
      y: opts.validation.map((p) => p.loss),
      line: { color: "#ff7f0e", width: 2 },
      marker: { size: 6, color: "#ff7f0e" },
      cliponaxis: false,
    });
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
      // The last checkpoint sits on the right edge of a fixed x range: draw it whole.
      cliponaxis: false,
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
    yaxis2: {
      title: { text: "learning rate" },
      overlaying: "y",
      side: "right",
      type: "log",
      showgrid: false,
      ...lrTicks(lrPoints.map((p) => p.lr!)),
    },
    legend: { orientation: "h", y: -0.2 },
    margin: { l: 60, r: 60, t: 40, b: 40 },
    height: 360,
    shapes: (opts.previews ?? []).map((s) => ({
      type: "line",
      xref: "x",
      yref: "paper",
      x0: s,
      x1: s,
      y0: 0,
      y1: 1,
      line: { color: "rgba(0,0,0,0.12)", width: 1 },
    })),
  };
  return { data, layout };
}

/**
 * Tick marks for the log learning-rate axis. Plotly's own log ticks label the minor marks with a
 * bare digit ("1 3 9 2"), unreadable for a learning rate: instead mark the rates the schedule
 * uses (an A1111 schedule has a handful), or five log-spaced rates when it uses many (cosine),
 * each written like 5e-3.
 */
export function lrTicks(lrs: readonly number[]): { tickvals?: number[]; ticktext?: string[] } {
  const distinct = [...new Set(lrs.filter((v) => v > 0 && Number.isFinite(v)))].sort((a, b) => a - b);
  if (distinct.length === 0) return {};
  let vals = distinct;
  if (distinct.length > 6) {
    const lo = Math.log10(distinct[0]!);
    const hi = Math.log10(distinct[distinct.length - 1]!);
    vals = [0, 1, 2, 3, 4].map((i) => 10 ** (lo + ((hi - lo) * i) / 4));
  }
  const text = (v: number): string => v.toExponential(1).replace(/\.0e/, "e").replace("e-0", "e-").replace("e+0", "e");
  return { tickvals: vals, ticktext: vals.map(text) };
}

/**
 * Bar chart of the mean output norm of each hypernetwork module (the size of the change it makes
 * to k or v, per context width). `norms` maps a label like "768 k" to a value.
 */
export function normsFigure(
  norms: ReadonlyMap<string, number> | Record<string, number>,
  title = "Hypernetwork output norm per module",
): Figure {
  const entries = norms instanceof Map ? [...norms.entries()] : Object.entries(norms);
  return {
    data: [{ type: "bar", x: entries.map(([k]) => k), y: entries.map(([, v]) => v), marker: { color: "#9467bd" } }],
    layout: {
      title: { text: title },
      yaxis: { title: { text: "mean ‖Δ‖ per token" } },
      height: 300,
      margin: { l: 60, r: 20, t: 40, b: 60 },
    },
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

/** Options of {@link figureHtml}. */
export interface FigureHtmlOptions {
  /**
   * A picture of the same chart (e.g. {@link lossChartPng}), put inside the div as an `<img>`: it
   * is what shows wherever plotly.js is absent (a saved notebook whose bundle output was replaced
   * by a re-run, GitHub, an untrusted notebook) and is removed when Plotly draws.
   */
  fallbackPng?: Uint8Array;
}

/**
 * HTML that draws `fig` into a div with this id: a `<div>` and a script that waits for
 * `window.Plotly` (loaded by an earlier output) and calls `Plotly.react`, which redraws in place
 * when the same div is updated. The div's content before Plotly draws is the fallback picture if
 * one is given, else a line saying the chart is waiting for plotly.js; if plotly.js never comes
 * (10 s), that line says how to load it. Without scripts the fallback simply stays.
 */
export function figureHtml(fig: Figure, divId: string, opts: FigureHtmlOptions = {}): string {
  const id = divId.replace(/[^A-Za-z0-9_-]/g, "_");
  const json = JSON.stringify(fig).replace(/</g, "\\u003c");
  const height = (fig.layout.height as number | undefined) ?? 360;
  const inner = opts.fallbackPng
    ? `<img class="hn-plot-fallback" src="data:image/png;base64,${Buffer.from(opts.fallbackPng).toString("base64")}" alt="chart (static picture; plotly.js not loaded)" style="max-width:100%">`
    : `<span class="hn-plot-wait" style="color:#888;font:12px sans-serif">chart: waiting for plotly.js…</span>`;
  return (
    `<div id="${id}" class="hn-plot" style="width:100%;min-height:${height}px">${inner}</div>` +
    `<script type="text/javascript">(function () { var fig = ${json}; var n = 0;` +
    ` function draw() { var el = document.getElementById("${id}");` +
    ` if (window.Plotly && el) { var w = el.querySelector(".hn-plot-fallback, .hn-plot-wait"); if (w) { el.removeChild(w); }` +
    ` window.Plotly.react(el, fig.data, fig.layout, {responsive: true, displaylogo: false}); }` +
    ` else if (n++ < 200) { setTimeout(draw, 50); }` +
    ` else if (el) { var s = el.querySelector(".hn-plot-wait"); if (s) { s.textContent = "chart: plotly.js is not loaded in this page (run hn.enablePlotly({ force: true }) and rerun the cell)"; } } } draw(); })();</script>`
  );
}

// ---- the same loss chart as a picture, without a browser ---------------------------------------------

/** Options for {@link lossChartSvg} / {@link lossChartPng}. */
export interface LossChartImageOptions {
  /** Image size in px (default 720 × 360). */
  width?: number;
  height?: number;
  /** EMA factor of the smoothed curve (default 0.9; 0 hides it). */
  smoothing?: number;
  title?: string;
  /** Validation losses, drawn as a second curve with markers (as in {@link lossFigure}). */
  validation?: readonly ValidationPoint[];
}

/** About five "nice" tick values (1, 2, 5 × 10ⁿ steps) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function fmtTick(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(0) : String(Number(v.toPrecision(3)));
}

function escapeSvg(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/**
 * The loss chart of {@link lossFigure} drawn directly as SVG: raw loss (faint), its smoothed curve,
 * and the learning rate on a right-hand axis (log scale when it spans more than a factor of 3), with
 * tick labels and a legend. Plain markup, so `sharp` can rasterise it with no browser.
 */
export function lossChartSvg(points: readonly LossPoint[], opts: LossChartImageOptions = {}): string {
  const W = opts.width ?? 720;
  const H = opts.height ?? 360;
  if (!(W >= 200 && H >= 150)) throw new Error(`lossChartSvg: the image must be at least 200×150 px, got ${W}×${H}`);
  const beta = opts.smoothing ?? 0.9;
  const m = { l: 64, r: 70, t: 34, b: 58 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const pts = points.filter((p) => Number.isFinite(p.step));
  const steps = pts.map((p) => p.step);
  const losses = pts.map((p) => p.loss);
  const val = (opts.validation ?? []).filter((p) => Number.isFinite(p.step) && Number.isFinite(p.loss));
  const finite = [...losses.filter(Number.isFinite), ...val.map((p) => p.loss)];
  const allSteps = [...steps, ...val.map((p) => p.step)];
  const x0 = allSteps.length ? Math.min(0, ...allSteps) : 0;
  const x1 = allSteps.length ? Math.max(x0 + 1, ...allSteps) : 1;
  let y0 = finite.length ? Math.min(...finite) : 0;
  let y1 = finite.length ? Math.max(...finite) : 1;
  if (y1 - y0 < 1e-12) [y0, y1] = [y0 - 0.5 * (Math.abs(y0) || 1), y1 + 0.5 * (Math.abs(y1) || 1)];
  const pad = 0.05 * (y1 - y0);
  [y0, y1] = [y0 >= 0 ? Math.max(0, y0 - pad) : y0 - pad, y1 + pad];
  const sx = (x: number): number => m.l + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number): number => m.t + (1 - (y - y0) / (y1 - y0)) * ph;
  const path = (xs: number[], ys: number[], map: (y: number) => number): string => {
    let d = "";
    let pen = false;
    xs.forEach((x, i) => {
      const y = ys[i]!;
      if (!Number.isFinite(y)) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${map(y).toFixed(1)}`;
      pen = true;
    });
    return d;
  };

  const parts: string[] = [];
  parts.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  parts.push(
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">${escapeSvg(opts.title ?? "Training loss")}</text>`,
  );
  // Grid and left axis (loss), bottom axis (step).
  for (const v of niceTicks(y0, y1)) {
    const y = sy(v).toFixed(1);
    parts.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${y}" y2="${y}" stroke="#e6e6e6"/>`);
    parts.push(`<text x="${m.l - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" font-size="11">${fmtTick(v)}</text>`);
  }
  for (const v of niceTicks(x0, x1)) {
    const x = sx(v).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${m.t}" y2="${m.t + ph}" stroke="#f0f0f0"/>`);
    parts.push(`<text x="${x}" y="${m.t + ph + 16}" text-anchor="middle" font-size="11">${fmtTick(v)}</text>`);
  }
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`);
  parts.push(`<text x="${m.l + pw / 2}" y="${H - 22}" text-anchor="middle" font-size="12">step</text>`);
  parts.push(`<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">loss (ε-MSE)</text>`);

  const legend: Array<[string, string, string]> = [];
  parts.push(`<path d="${path(steps, losses, sy)}" fill="none" stroke="rgba(31,119,180,0.35)" stroke-width="1"/>`);
  legend.push(["loss", "rgba(31,119,180,0.45)", ""]);
  if (beta > 0 && finite.length) {
    parts.push(`<path d="${path(steps, smoothEma(losses, beta), sy)}" fill="none" stroke="#1f77b4" stroke-width="2.5"/>`);
    legend.push([`smoothed (β=${beta})`, "#1f77b4", ""]);
  }
  if (val.length) {
    parts.push(validationSvg(val, sx, sy));
    legend.push(["validation loss", "#ff7f0e", ""]);
  }
  // Learning rate on the right axis.
  const lrPts = pts.filter((p) => p.lr !== undefined && Number.isFinite(p.lr) && p.lr > 0);
  if (lrPts.length) {
    const lrs = lrPts.map((p) => p.lr!);
    const lo = Math.min(...lrs);
    const hi = Math.max(...lrs);
    const log = hi / lo > 3;
    const f = (v: number): number => (log ? Math.log10(v) : v);
    let a = f(lo);
    let b = f(hi);
    if (b - a < 1e-12) [a, b] = log ? [a - 0.5, b + 0.5] : [a * 0.5, b * 1.5];
    const syr = (v: number): number => m.t + (1 - (f(v) - a) / (b - a)) * ph;
    // A schedule is piecewise constant: draw it as steps (hold each rate until the next point).
    const lrX: number[] = [];
    const lrY: number[] = [];
    lrPts.forEach((p, i) => {
      if (i > 0) {
        lrX.push(p.step);
        lrY.push(lrs[i - 1]!);
      }
      lrX.push(p.step);
      lrY.push(lrs[i]!);
    });
    parts.push(`<path d="${path(lrX, lrY, syr)}" fill="none" stroke="#2ca02c" stroke-width="1.5" stroke-dasharray="4 3"/>`);
    const logTicks = (): number[] => {
      const out: number[] = [];
      for (let e = Math.floor(a); e <= Math.ceil(b); e++) for (const f of [1, 2, 5]) out.push(Number((f * 10 ** e).toPrecision(3)));
      return out.filter((v) => Math.log10(v) >= a - 1e-9 && Math.log10(v) <= b + 1e-9);
    };
    const ticks = log ? logTicks() : niceTicks(a, b);
    for (const v of ticks.length ? ticks : [lo, hi]) {
      parts.push(
        `<text x="${m.l + pw + 6}" y="${syr(v).toFixed(1)}" dominant-baseline="middle" font-size="11" fill="#2ca02c">${fmtTick(v)}</text>`,
      );
    }
    parts.push(
      `<text transform="translate(${W - 12} ${m.t + ph / 2}) rotate(90)" text-anchor="middle" font-size="12" fill="#2ca02c">learning rate${log ? " (log)" : ""}</text>`,
    );
    legend.push(["learning rate", "#2ca02c", ` stroke-dasharray="4 3"`]);
  }
  let lx = m.l;
  for (const [label, color, dash] of legend) {
    parts.push(`<line x1="${lx}" x2="${lx + 22}" y1="${H - 7}" y2="${H - 7}" stroke="${color}" stroke-width="2.5"${dash}/>`);
    parts.push(`<text x="${lx + 27}" y="${H - 7}" dominant-baseline="middle" font-size="11">${escapeSvg(label)}</text>`);
    lx += 40 + label.length * 6.5;
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" fill="#222">${parts.join("")}</svg>`;
}

/** The validation curve of {@link lossChartSvg}: a line through the (finite) points and a dot on each, in chart pixels. */
function validationSvg(val: readonly ValidationPoint[], x: (step: number) => number, y: (loss: number) => number): string {
  const d = val.map((p, i) => `${i ? "L" : "M"}${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join("");
  const dots = val.map((p) => `<circle cx="${x(p.step).toFixed(1)}" cy="${y(p.loss).toFixed(1)}" r="3" fill="#ff7f0e"/>`);
  return `<path d="${d}" fill="none" stroke="#ff7f0e" stroke-width="2"/>${dots.join("")}`;
}

/** {@link lossChartSvg} rasterised to PNG bytes with sharp (no browser needed). */
export async function lossChartPng(points: readonly LossPoint[], opts: LossChartImageOptions = {}): Promise<Buffer> {
  return encodePngFrom(sharp(Buffer.from(lossChartSvg(points, opts))));
}
