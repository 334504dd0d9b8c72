/**
 * Charts of the training tools — the LR range test, loss against timestep, per-module norms over
 * training — each built once as a plain line-chart spec and drawn two ways: as a Plotly figure for
 * the live notebook, and as SVG → PNG (no browser) for viewers without plotly.js, like the loss
 * chart's fallback (`charts.ts`).
 */
import type { Data, Layout } from "plotly.js-dist";
import sharp from "sharp";
import { encodePngFrom } from "../io/png";
import type { LrRangeResult } from "../train/lr-range";
import type { NormsEvent, ValidationEvent } from "../train/events";
import { timestepLossOverRun } from "../train/timestep-loss";
import { type Figure, niceTicks } from "./charts";

/** One curve of a line chart. */
export interface Series {
  name: string;
  x: number[];
  y: number[];
  color: string;
  /** Draw the points as dots too (default false) / draw faint (default false). */
  markers?: boolean;
  faint?: boolean;
}

/** A line chart: curves, axes, and labelled vertical lines. */
export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  xLog?: boolean;
  yLog?: boolean;
  series: Series[];
  /** Vertical lines at x, with a label (e.g. the suggested learning rate). */
  marks?: Array<{ x: number; label: string; color: string }>;
}

/** The chart as a Plotly figure. */
export function lineFigure(chart: LineChart): Figure {
  const data: Data[] = chart.series.map((s) => ({
    type: "scatter",
    mode: s.markers ? "lines+markers" : "lines",
    name: s.name,
    x: s.x,
    y: s.y,
    line: { color: s.color, width: s.faint ? 1 : 2 },
    opacity: s.faint ? 0.45 : 1,
    marker: { size: 5, color: s.color },
  }));
  const layout: Partial<Layout> = {
    title: { text: chart.title },
    xaxis: { title: { text: chart.xLabel }, type: chart.xLog ? "log" : "linear", exponentformat: "e" },
    yaxis: { title: { text: chart.yLabel }, type: chart.yLog ? "log" : "linear", exponentformat: "e" },
    legend: { orientation: "h", y: -0.25 },
    margin: { l: 60, r: 20, t: 40, b: 50 },
    height: 360,
    shapes: (chart.marks ?? []).map((m) => ({
      type: "line",
      xref: "x",
      yref: "paper",
      x0: m.x,
      x1: m.x,
      y0: 0,
      y1: 1,
      line: { color: m.color, width: 1.5, dash: "dash" },
    })),
    annotations: (chart.marks ?? []).map((m) => ({
      x: chart.xLog ? Math.log10(m.x) : m.x,
      y: 1,
      xref: "x",
      yref: "paper",
      text: m.label,
      showarrow: false,
      yanchor: "bottom",
      font: { color: m.color, size: 11 },
    })),
  };
  return { data, layout };
}

function escapeSvg(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function tickText(v: number, log: boolean): string {
  if (log) return v.toExponential(0).replace("e+", "e");
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(0) : String(Number(v.toPrecision(3)));
}

/** An axis: the map from values to [0, 1] and its ticks (powers of ten on a log axis). */
function axis(values: number[], log: boolean): { at: (v: number) => number; ticks: number[] } {
  const f = (v: number): number => (log ? Math.log10(v) : v);
  const finite = values.filter((v) => Number.isFinite(v) && (!log || v > 0)).map(f);
  let lo = finite.length ? Math.min(...finite) : 0;
  let hi = finite.length ? Math.max(...finite) : 1;
  if (hi - lo < 1e-12) [lo, hi] = [lo - 0.5, hi + 0.5];
  const pad = 0.04 * (hi - lo);
  [lo, hi] = [lo - pad, hi + pad];
  const ticks = log ? Array.from({ length: Math.floor(hi) - Math.ceil(lo) + 1 }, (_, i) => 10 ** (Math.ceil(lo) + i)) : niceTicks(lo, hi);
  return { at: (v) => (f(v) - lo) / (hi - lo), ticks };
}

/** The chart as SVG markup (curves, ticks, marks, legend), for {@link lineChartPng}. */
export function lineChartSvg(chart: LineChart, size: { width?: number; height?: number } = {}): string {
  const W = size.width ?? 720;
  const H = size.height ?? 360;
  const m = { l: 70, r: 20, t: 34, b: 62 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const xa = axis(chart.series.flatMap((s) => s.x).concat((chart.marks ?? []).map((k) => k.x)), !!chart.xLog);
  const ya = axis(
    chart.series.flatMap((s) => s.y),
    !!chart.yLog,
  );
  const sx = (v: number): number => m.l + xa.at(v) * pw;
  const sy = (v: number): number => m.t + (1 - ya.at(v)) * ph;
  const ok = (v: number, log?: boolean): boolean => Number.isFinite(v) && (!log || v > 0);
  const parts: string[] = [`<rect width="${W}" height="${H}" fill="#ffffff"/>`];
  parts.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escapeSvg(chart.title)}</text>`);
  for (const v of ya.ticks) {
    const y = sy(v).toFixed(1);
    parts.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${y}" y2="${y}" stroke="#e6e6e6"/>`);
    parts.push(
      `<text x="${m.l - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" font-size="11">${tickText(v, !!chart.yLog)}</text>`,
    );
  }
  for (const v of xa.ticks) {
    const x = sx(v).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${m.t}" y2="${m.t + ph}" stroke="#f0f0f0"/>`);
    parts.push(`<text x="${x}" y="${m.t + ph + 16}" text-anchor="middle" font-size="11">${tickText(v, !!chart.xLog)}</text>`);
  }
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`);
  parts.push(`<text x="${m.l + pw / 2}" y="${H - 28}" text-anchor="middle" font-size="12">${escapeSvg(chart.xLabel)}</text>`);
  parts.push(
    `<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">${escapeSvg(chart.yLabel)}</text>`,
  );
  for (const s of chart.series) {
    let d = "";
    let pen = false;
    s.x.forEach((x, i) => {
      const y = s.y[i]!;
      if (!ok(x, chart.xLog) || !ok(y, chart.yLog)) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
      pen = true;
      if (s.markers)
        parts.push(
          `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${s.color}"${s.faint ? ' opacity="0.45"' : ""}/>`,
        );
    });
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.faint ? 1 : 2}"${s.faint ? ' opacity="0.45"' : ""}/>`);
  }
  for (const k of chart.marks ?? []) {
    const x = sx(k.x).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${m.t}" y2="${m.t + ph}" stroke="${k.color}" stroke-width="1.5" stroke-dasharray="5 3"/>`);
    parts.push(`<text x="${x}" y="${m.t - 3}" text-anchor="middle" font-size="11" fill="${k.color}">${escapeSvg(k.label)}</text>`);
  }
  let lx = m.l;
  for (const s of chart.series) {
    parts.push(`<line x1="${lx}" x2="${lx + 20}" y1="${H - 8}" y2="${H - 8}" stroke="${s.color}" stroke-width="2.5"/>`);
    parts.push(`<text x="${lx + 25}" y="${H - 8}" dominant-baseline="middle" font-size="11">${escapeSvg(s.name)}</text>`);
    lx += 36 + s.name.length * 6.5;
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" fill="#222">${parts.join("")}</svg>`;
}

/** {@link lineChartSvg} rasterised to PNG bytes with sharp. */
export async function lineChartPng(chart: LineChart, size: { width?: number; height?: number } = {}): Promise<Buffer> {
  return encodePngFrom(sharp(Buffer.from(lineChartSvg(chart, size))));
}

/** The LR range test: measured loss against learning rate (log), the smoothed curve up to the cut, and the valley and suggested rates. */
export function lrRangeChart(result: LrRangeResult): LineChart {
  const lrs = result.points.map((p) => p.lr);
  const s = result.suggestion;
  return {
    title: `LR range test — suggested "${s.schedule}"`,
    xLabel: "learning rate",
    yLabel: "loss",
    xLog: true,
    series: [
      { name: "loss", x: lrs, y: result.points.map((p) => p.loss), color: "#1f77b4", markers: true, faint: true },
      { name: "smoothed", x: lrs, y: s.smoothed, color: "#1f77b4" },
    ],
    marks: [
      { x: s.valleyLr, label: `lowest ${s.valleyLr.toExponential(1)}`, color: "#d62728" },
      { x: s.lr, label: `suggested ${s.lr.toExponential(0)}`, color: "#2ca02c" },
    ],
  };
}

/** A colour from light to dark blue for curve `i` of `n` (older curves lighter). */
function shade(i: number, n: number): string {
  const f = n <= 1 ? 1 : i / (n - 1);
  const c = (a: number, b: number): number => Math.round(a + (b - a) * f);
  return `rgb(${c(158, 8)},${c(202, 48)},${c(225, 107)})`;
}

/**
 * Loss against timestep over a run: one curve per validation (at most `maxCurves`, evenly spaced,
 * the first and last among them), x the bin centres. `bins` defaults to the batch's timesteps per image.
 */
export function timestepLossChart(
  events: readonly ValidationEvent[],
  opts: { bins?: number; range?: readonly [number, number]; maxCurves?: number } = {},
): LineChart {
  const { steps, bins } = timestepLossOverRun(events, opts.bins, opts.range);
  const max = opts.maxCurves ?? 6;
  const pick =
    steps.length <= max
      ? steps.map((_, i) => i)
      : [...new Set(Array.from({ length: max }, (_, i) => Math.round((i * (steps.length - 1)) / (max - 1))))];
  return {
    title: "Validation loss by timestep",
    xLabel: "timestep (bin centre)",
    yLabel: "loss",
    series: pick.map((i, j) => ({
      name: `step ${steps[i]}`,
      x: bins[i]!.map((b) => (b.lo + b.hi) / 2),
      y: bins[i]!.map((b) => b.loss),
      color: shade(j, pick.length),
      markers: true,
    })),
  };
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/** Per-module gradient or output norms over training: one curve per module (log y). */
export function moduleNormsChart(events: readonly NormsEvent[], kind: "gradient" | "output"): LineChart {
  const labels = [...new Set(events.flatMap((e) => Object.keys(e[kind])))];
  return {
    title: kind === "gradient" ? "Gradient norm per module" : "Output norm per module (mean ‖m(c) − c‖ per token)",
    xLabel: "step",
    yLabel: kind === "gradient" ? "‖g‖₂" : "mean ‖Δ‖",
    yLog: true,
    series: labels.map((label, i) => ({
      name: label,
      x: events.map((e) => e.step),
      y: events.map((e) => e[kind][label] ?? NaN),
      color: PALETTE[i % PALETTE.length]!,
      markers: true,
    })),
  };
}
