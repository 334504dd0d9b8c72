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
 * every cross-attention layer (each upsampled to the image size), on one UNet forward pass of the
 * generated image noised to timestep t. The capture is an attention processor, set with
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
}

/** Per-token maps averaged over layers, on the image grid, one set per row (bare, then each network). */
export interface AttentionMapResult {
  tokens: string[];
  rows: Array<{ label: string; maps: Float32Array[] }>;
  size: number;
  png: Buffer;
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

/** A map as a PNG heatmap (dark blue → yellow), normalised to its own max. */
async function heatmapPng(map: Float32Array, size: number): Promise<Buffer> {
  let max = 1e-12;
  for (const v of map) max = Math.max(max, v);
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
 * per condition, a column per token. The UNet's processors are restored afterwards.
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
  const rows: AttentionMapResult["rows"] = [];
  const t = opts.timestep ?? 400;
  const x0 = base.encodeImages(image);
  const cond = base.encodeText([prompt]);
  const noise = randn(x0.shape, new Rng(opts.seed ?? 0));
  const xt = qSample(x0, noise, [t], sd15Schedule()) as tf.Tensor4D;
  try {
    for (const c of conditions) {
      const sink: LayerAttention[] = [];
      unet.setProcessor(attentionCaptureProcessor(sink, paths, c.stack));
      tf.tidy(() => {
        unet.forward(xt, [t], cond);
      });
      const shown = Math.min(labels.length, sink[0]?.tokens ?? 0);
      rows.push({ label: c.label, maps: averageMaps(sink, shown, size) });
    }
  } finally {
    unet.setProcessor(previous);
    tf.dispose([x0, cond, noise, xt]);
  }
  const tokens = labels.slice(0, rows[0]!.maps.length);
  const items: GridItem[] = [];
  for (const r of rows) {
    for (let j = 0; j < tokens.length; j++)
      items.push({ image: await heatmapPng(r.maps[j]!, size), caption: j === 0 ? `${r.label}: ${tokens[j]}` : tokens[j] });
  }
  const png = await renderGrid(items, { cell: opts.cell ?? 72, columns: tokens.length, captionLines: 2, max: items.length });
  show("attention-maps", { png });
  return { tokens, rows, size, png };
}
