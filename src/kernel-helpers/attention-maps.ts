/**
 * Cross-attention maps: where in the image each prompt token is looked at, with and without a
 * hypernetwork — the teaching view of what a hypernetwork changes.
 *
 * In a cross-attention layer every image position i attends over the text tokens j with weights
 *
 *     A[i, j] = softmax_j( q_i · k_j / √d ),   q = to_q(x),  k = to_k(ctx')
 *
 * where ctx' is the context after the hypernetwork stack (ctx itself without one). Column j of A,
 * reshaped to the layer's h×w grid, is token j's attention map. We average it over heads and over
 * every cross-attention layer (each upsampled to the image size), or show one layer, on one UNet
 * forward pass of the generated image noised to timestep t. A token's maps share one colour scale
 * across the rows, and each network's row carries its measured difference from the bare model
 * (mean |Δ| of the attention weights over the image), so a change in level shows as well as a
 * change in shape. The capture is an attention processor, set with
 * `unet.setProcessor` and removed afterwards; the layer's output is computed exactly as the
 * default (or hypernetwork) processor would, so capturing changes nothing downstream.
 */
import * as tf from "@tensorflow/tfjs";
import { encodePng } from "../io/png";
import type { BaseModel } from "../pipeline/base-model";
import { applyStack, type StackEntry } from "../hypernet/attach";
import type { Hypernetwork } from "../hypernet/network";
import { attend, type AttentionProcessor } from "../unet/attention";
import { qSample, sd15Schedule } from "../diffusion/schedule";
import { Rng, randn } from "../diffusion/random";
import { renderGrid, type GridItem } from "../data/view";
import { show } from "./display";
import { compactInspect } from "./results";

/** One layer's captured attention: token maps on that layer's grid. */
export interface LayerAttention {
  path: string;
  height: number;
  width: number;
  /** `[T, height·width]`, row-major per token, averaged over heads (batch 1). */
  maps: Float32Array;
  tokens: number;
}

/**
 * A processor that records cross-attention probabilities into `sink` and returns the layer's
 * normal output. `stack` is the hypernetwork stack to apply to the context (empty = none), so the
 * captured maps are those the attached networks produce. Self-attention layers are not recorded.
 */
export function attentionCaptureProcessor(
  sink: LayerAttention[],
  paths: Map<object, string>,
  stack: readonly StackEntry[] = [],
): AttentionProcessor {
  return (layer, x, context) => {
    const ctxK = context ? applyStack(stack, "k", context) : x;
    const ctxV = context ? applyStack(stack, "v", context) : x;
    const q = layer.to_q.apply(x);
    const k = layer.to_k.apply(ctxK);
    if (context) {
      const [b, n] = x.shape as [number, number, number];
      const t = k.shape[1]!;
      const h = layer.heads;
      const d = layer.dimHead;
      // probs[b·h, n, t] = softmax(q kᵀ / √d); mean over heads of batch item 0 → [t, n]
      const probs = tf.tidy(() => {
        const qh = q
          .reshape([b, n, h, d])
          .transpose([0, 2, 1, 3])
          .reshape([b * h, n, d])
          .mul(layer.scale) as tf.Tensor3D;
        const kt = k
          .reshape([b, t, h, d])
          .transpose([0, 2, 3, 1])
          .reshape([b * h, d, t]) as tf.Tensor3D;
        const p = tf.softmax(tf.matMul(qh, kt)).reshape([b, h, n, t]);
        return p.slice([0, 0, 0, 0], [1, h, n, t]).mean(1).reshape([n, t]).transpose();
      });
      const side = Math.round(Math.sqrt(n));
      sink.push({ path: paths.get(layer) ?? "?", height: side, width: n / side, maps: probs.dataSync() as Float32Array, tokens: t });
      probs.dispose();
    }
    return attend(layer, q, k, layer.to_v.apply(ctxV));
  };
}

/** Labels for the context positions of `prompt`: BOS, one label per content token, EOS. */
export function tokenLabels(base: BaseModel, prompt: string): string[] {
  const labels = ["<start>"];
  for (const word of prompt.trim().split(/\s+/).filter(Boolean)) {
    const ids = base.tokenizer.tokenize(word);
    ids.forEach((_, i) => labels.push(ids.length > 1 ? `${word}(${i + 1}/${ids.length})` : word));
  }
  labels.push("<end>");
  return labels;
}

/** Options of {@link attentionMaps}. */
export interface AttentionMapOptions {
  /** Networks to compare against the bare model (each row of the figure adds one). */
  networks?: Array<{ network: Hypernetwork; multiplier?: number }>;
  /** Timestep the image is noised to before the capturing forward pass (default 400). */
  timestep?: number;
  /** Noise seed (default 0). */
  seed?: number;
  /** Cell size of the shown grid in px (default 72). */
  cell?: number;
  /**
   * Which cross-attention layer to show: its path (as `unet.attentionLayers()` names it),
   * "largest" for the layer whose maps the first network changes most, or "mean" (default) for the
   * average over every cross-attention layer.
   */
  layer?: string;
}

/** Per-token maps averaged over layers, on the image grid, one set per row (bare, then each network). */
export interface AttentionMapResult {
  tokens: string[];
  /** The layer shown: a path, or "mean" (every cross-attention layer averaged). */
  layer: string;
  /**
   * One set per row. `difference[j]` is token j's mean |Δ attention weight| over the image against
   * the first row (the bare model; all zero there).
   */
  rows: Array<{ label: string; maps: Float32Array[]; difference: number[] }>;
  /** Per cross-attention layer, the largest per-token mean |Δ| the first network causes (empty without one). */
  layerChanges: Array<{ path: string; change: number; token: string }>;
  size: number;
  png: Buffer;
}

/** Mean |a − b| over the pixels of two maps of one token. */
function meanAbsDiff(a: Float32Array, b: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += Math.abs(a[i]! - b[i]!);
  return sum / a.length;
}

/** Per layer (same order in both), the largest per-token mean |Δ| between two captures of one pass. */
function layerChanges(bare: LayerAttention[], net: LayerAttention[], labels: string[]): AttentionMapResult["layerChanges"] {
  return bare.map((b, i) => {
    const n = b.height * b.width;
    const shown = Math.min(labels.length, b.tokens);
    let change = 0;
    let token = 0;
    for (let j = 0; j < shown; j++) {
      const d = meanAbsDiff(b.maps.subarray(j * n, (j + 1) * n), net[i]!.maps.subarray(j * n, (j + 1) * n));
      if (d > change) [change, token] = [d, j];
    }
    return { path: b.path, change, token: labels[token]! };
  });
}

/** Average a set of layer captures to `size`×`size` per token (nearest upsampling, then mean). */
function averageMaps(captures: LayerAttention[], tokens: number, size: number): Float32Array[] {
  const out = Array.from({ length: tokens }, () => new Float32Array(size * size));
  for (const c of captures) {
    for (let j = 0; j < tokens; j++) {
      const dst = out[j]!;
      for (let y = 0; y < size; y++) {
        const sy = Math.min(c.height - 1, Math.floor((y * c.height) / size));
        for (let x = 0; x < size; x++) {
          const sx = Math.min(c.width - 1, Math.floor((x * c.width) / size));
          dst[y * size + x]! += c.maps[j * c.height * c.width + sy * c.width + sx]! / captures.length;
        }
      }
    }
  }
  return out;
}

/** A map as a PNG heatmap (dark blue → yellow), scaled so that `max` is yellow. */
async function heatmapPng(map: Float32Array, size: number, max: number): Promise<Buffer> {
  max = Math.max(max, 1e-12);
  const rgb = Buffer.alloc(size * size * 3);
  for (let i = 0; i < map.length; i++) {
    const v = map[i]! / max;
    rgb[3 * i] = Math.round(255 * Math.min(1, 1.6 * v));
    rgb[3 * i + 1] = Math.round(255 * v * v);
    rgb[3 * i + 2] = Math.round(255 * (0.45 * (1 - v)));
  }
  return encodePng({ data: rgb, width: size, height: size, channels: 3 });
}

/**
 * Capture cross-attention maps of `image` (NHWC in [−1, 1], batch 1, e.g. from txt2img) for
 * `prompt`, on the bare model and with each network attached, and show them as one grid: a row
 * per condition, a column per token (`layer`: the mean over layers, one layer, or the one that
 * changes most), then each network's mean |Δ attention| per token as text. The UNet's processors
 * are restored afterwards. The result echoes as one line.
 */
export async function attentionMaps(
  base: BaseModel,
  prompt: string,
  image: tf.Tensor4D,
  opts: AttentionMapOptions = {},
): Promise<AttentionMapResult> {
  const unet = base.unet;
  const previous = unet.getProcessors();
  const paths = new Map<object, string>(unet.attentionLayers().map(([p, l]) => [l, p]));
  const labels = tokenLabels(base, prompt);
  const size = base.sampleSize;
  const conditions: Array<{ label: string; stack: StackEntry[] }> = [{ label: "no hypernetwork", stack: [] }];
  for (const n of opts.networks ?? [])
    conditions.push({ label: `${n.network.name} ×${n.multiplier ?? 1}`, stack: [{ network: n.network, multiplier: n.multiplier ?? 1 }] });
  const t = opts.timestep ?? 400;
  const x0 = base.encodeImages(image);
  const cond = base.encodeText([prompt]);
  const noise = randn(x0.shape, new Rng(opts.seed ?? 0));
  const xt = qSample(x0, noise, [t], sd15Schedule()) as tf.Tensor4D;
  const sinks: LayerAttention[][] = [];
  try {
    for (const c of conditions) {
      const sink: LayerAttention[] = [];
      unet.setProcessor(attentionCaptureProcessor(sink, paths, c.stack));
      tf.tidy(() => {
        unet.forward(xt, [t], cond);
      });
      sinks.push(sink);
    }
  } finally {
    unet.setProcessor(previous);
    tf.dispose([x0, cond, noise, xt]);
  }
  const changes = sinks.length > 1 ? layerChanges(sinks[0]!, sinks[1]!, labels) : [];
  const layer = pickLayer(opts.layer ?? "mean", changes, sinks[0]!);
  const shown = Math.min(labels.length, sinks[0]![0]?.tokens ?? 0);
  const tokens = labels.slice(0, shown);
  const rows: AttentionMapResult["rows"] = sinks.map((sink, r) => ({
    label: conditions[r]!.label,
    maps: averageMaps(layer === "mean" ? sink : sink.filter((l) => l.path === layer), shown, size),
    difference: [],
  }));
  for (const r of rows) r.difference = r.maps.map((m, j) => meanAbsDiff(m, rows[0]!.maps[j]!));
  const png = await mapsGrid(rows, tokens, size, opts.cell ?? 72);
  show("attention-maps", { png });
  const where = layer === "mean" ? "mean over every cross-attention layer" : `layer ${layer}`;
  const lines = rows
    .slice(1)
    .map(
      (r) =>
        `${r.label}, ${where}: mean |Δ attention| per token ${tokens.map((tok, k) => `${tok} ${r.difference[k]!.toFixed(3)}`).join(", ")}`,
    );
  if (lines.length) show("attention-differences", { text: lines.join("\n") });
  return compactInspect(
    { tokens, layer, rows, layerChanges: changes, size, png },
    (v) => `AttentionMaps { ${v.rows.length} row(s) × ${v.tokens.length} tokens, ${where} }`,
  );
}

/** The layer to show: "mean", a path the UNet has, or "largest" (the layer the first network changes most). */
function pickLayer(choice: string, changes: AttentionMapResult["layerChanges"], bare: LayerAttention[]): string {
  if (choice === "mean") return choice;
  if (choice === "largest") {
    if (changes.length === 0) throw new Error('attentionMaps: layer "largest" needs a network to compare with (options.networks)');
    return changes.reduce((a, b) => (b.change > a.change ? b : a)).path;
  }
  if (!bare.some((l) => l.path === choice))
    throw new Error(
      `attentionMaps: no cross-attention layer "${choice}"; the model has ${bare.map((l) => l.path).join(", ")} (or use "mean" or "largest")`,
    );
  return choice;
}

/** The grid: a row per condition, a column per token; a token's maps share one scale, network rows show their Δ. */
async function mapsGrid(rows: AttentionMapResult["rows"], tokens: string[], size: number, cell: number): Promise<Buffer> {
  const items: GridItem[] = [];
  const scale = tokens.map((_, j) => Math.max(...rows.map((r) => r.maps[j]!.reduce((a, v) => Math.max(a, v), 0))));
  for (const [i, r] of rows.entries()) {
    for (let j = 0; j < tokens.length; j++) {
      const caption = `${j === 0 ? `${r.label}: ` : ""}${tokens[j]}${i > 0 ? ` Δ${r.difference[j]!.toFixed(3)}` : ""}`;
      items.push({ image: await heatmapPng(r.maps[j]!, size, scale[j]!), caption });
    }
  }
  return renderGrid(items, { cell, columns: tokens.length, captionLines: 2, max: items.length });
}
