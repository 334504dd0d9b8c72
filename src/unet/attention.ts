/**
 * Attention in the SD UNet (LDM `ldm/modules/attention.py`), and THE hook of this project: the
 * attention processor.
 *
 * SpatialTransformer (one per attention site) turns the feature map into a sequence of H·W tokens:
 *
 *   h = proj_in(GroupNorm(x))            1×1 conv (SD 1.x) or Linear (SD 2.x) — both per-token linear maps
 *   h = BasicTransformerBlock(h, context)   × transformer_depth
 *   out = x + proj_out(h)
 *
 * BasicTransformerBlock, pre-norm residual:
 *
 *   h = h + attn1(norm1(h))              self-attention: tokens look at each other
 *   h = h + attn2(norm2(h), context)     cross-attention: tokens look at the text
 *   h = h + ff(norm3(h))                 GEGLU feed-forward
 *
 * CrossAttention computes  softmax(Q Kᵀ / √d) V  per head with Q = to_q(x), K = to_k(ctx),
 * V = to_v(ctx) (ctx = x for attn1), then to_out. The forward itself is delegated to a replaceable
 * `processor(layer, x, context)` — a hypernetwork is a processor that rewrites the context fed to
 * to_k and to_v; an attention-map viewer is a processor that records the softmax. `defaultProcessor`
 * and `attend` are the building blocks such processors reuse.
 */
import * as tf from "@tensorflow/tfjs";
import { GroupNorm, IndexedModules, LayerNorm, Linear, ModuleList, gelu } from "../nn/layers";
import { Module, type ModuleOptions, type Param, zerosInit } from "../nn/module";
import { fusedGeglu, fusedKernelsActive } from "../backend/webgpu-fused";
import { fusedAttention, fusedAttentionActive } from "../backend/webgpu-attention";

/**
 * Computes one attention layer's output `[B, N, C]` from its input `x` `[B, N, C]` and `context`
 * (`[B, T, contextDim]` for cross-attention; `undefined` for self-attention, meaning "use x").
 * It may use any of the layer's weights (`layer.to_q`, `layer.to_k`, `layer.to_v`, `layer.to_out`)
 * and `attend`. Called inside the UNet's `tidy`, so intermediate tensors need no disposal.
 */
export type AttentionProcessor = (layer: CrossAttention, x: tf.Tensor, context: tf.Tensor | undefined) => tf.Tensor;

/**
 * The standard processor: `q = to_q(x)`, `k = to_k(ctx)`, `v = to_v(ctx)` with `ctx = context ?? x`,
 * then `attend`.
 */
export const defaultProcessor: AttentionProcessor = (layer, x, context) => {
  const ctx = context ?? x;
  return attend(layer, layer.to_q.apply(x), layer.to_k.apply(ctx), layer.to_v.apply(ctx));
};

/**
 * Default cap on the number of attention scores computed at once: 2^24 floats = 64 MiB. WebGPU's
 * default `maxStorageBufferBindingSize` is 128 MiB, and a score chunk and its softmax are separate
 * buffers of that size, so a chunk must stay below it: SD 1.5's 64×64 self-attention (8 heads ×
 * 4096 × 4096 = 512 MiB per image) runs as 64 MiB chunks instead of failing to bind.
 */
export const DEFAULT_SCORE_BUDGET = 2 ** 24;

/**
 * How `attend` splits the score matrix `[BH, N, T]` so that one chunk holds at most `budget`
 * floats: `bhPerChunk` (batch·head) slices × `rowsPerChunk` query rows × T. Whole rows are never
 * split (each query's softmax needs its full row); only when one row per batch·head already
 * exceeds the budget are the batch·heads split too. A single row larger than the budget is the
 * floor (1 × 1 × T).
 */
export function attentionChunks(bh: number, n: number, t: number, budget: number): { bhPerChunk: number; rowsPerChunk: number } {
  const bhPerChunk = Math.min(bh, Math.max(1, Math.floor(budget / t)));
  const rowsPerChunk = Math.min(n, Math.max(1, Math.floor(budget / (bhPerChunk * t))));
  return { bhPerChunk, rowsPerChunk };
}

/**
 * Multi-head scaled dot-product attention followed by the output projection:
 *
 *   out = to_out( concat_h softmax(Q_h K_hᵀ / √d) V_h )
 *
 * `q` is `[B, N, inner]`, `k` and `v` are `[B, T, inner]` (already projected). Heads are split off
 * the channel axis. When `B·heads·N·T` scores exceed `layer.scoreBudget`, the work is split
 * (`attentionChunks`): queries in chunks of rows (each query's softmax only needs its own row of
 * scores), and batch·heads too if needed, so a 64×64 latent (N = 4096) fits in memory and in
 * WebGPU's buffer limits. K is transposed once, explicitly, so every forward matMul is
 * untransposed (the wasm backend's transposed matMul is much slower).
 */
export function attend(layer: CrossAttention, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    // webgpu: one fused kernel for all heads (no score matrix, no head transposes; its own backward)
    if (fusedAttentionActive())
      return layer.to_out.at(0).apply(fusedAttention(q as tf.Tensor3D, k as tf.Tensor3D, v as tf.Tensor3D, layer.heads, layer.scale));
    const [b, n] = q.shape as [number, number, number];
    const t = k.shape[1]!;
    const h = layer.heads;
    const d = layer.dimHead;
    const bh = b * h;
    // [B, N, h·d] → [B·h, N, d], pre-scaled by 1/√d (N·d multiplies instead of N·T)
    const qh = q.reshape([b, n, h, d]).transpose([0, 2, 1, 3]).reshape([bh, n, d]).mul(layer.scale) as tf.Tensor3D;
    // Kᵀ: [B, T, h·d] → [B·h, d, T]
    const kt = k.reshape([b, t, h, d]).transpose([0, 2, 3, 1]).reshape([bh, d, t]) as tf.Tensor3D;
    const vh = v.reshape([b, t, h, d]).transpose([0, 2, 1, 3]).reshape([bh, t, d]) as tf.Tensor3D;
    const { bhPerChunk, rowsPerChunk } = attentionChunks(bh, n, t, layer.scoreBudget);
    const groups: tf.Tensor3D[] = [];
    for (let g0 = 0; g0 < bh; g0 += bhPerChunk) {
      const gl = Math.min(bhPerChunk, bh - g0);
      const whole = gl === bh;
      const qg = whole ? qh : qh.slice([g0, 0, 0], [gl, n, d]);
      const kg = whole ? kt : kt.slice([g0, 0, 0], [gl, d, t]);
      const vg = whole ? vh : vh.slice([g0, 0, 0], [gl, t, d]);
      const pieces: tf.Tensor3D[] = [];
      for (let start = 0; start < n; start += rowsPerChunk) {
        const len = Math.min(rowsPerChunk, n - start);
        const qc = len === n ? qg : qg.slice([0, start, 0], [gl, len, d]);
        const probs = tf.softmax(tf.matMul(qc, kg)); // [gl, len, T]
        pieces.push(tf.matMul(probs, vg)); // [gl, len, d]
      }
      groups.push(pieces.length === 1 ? pieces[0]! : tf.concat(pieces, 1));
    }
    const out = groups.length === 1 ? groups[0]! : tf.concat(groups, 0);
    const merged = out
      .reshape([b, h, n, d])
      .transpose([0, 2, 1, 3])
      .reshape([b, n, h * d]);
    return layer.to_out.at(0).apply(merged);
  });
}

/**
 * Multi-head attention with separate query and context widths (LDM `CrossAttention`).
 * Paths: `to_q`, `to_k`, `to_v` (Linear, no bias) and `to_out.0` (Linear with bias).
 */
export class CrossAttention extends Module {
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  readonly to_out: ModuleList<Linear>;
  /** `heads · dimHead`: width of q, k and v. */
  readonly innerDim: number;
  /** 1/√dimHead. */
  readonly scale: number;
  /** Max attention scores materialised at once; lower it to save memory, raise it for speed. */
  scoreBudget = DEFAULT_SCORE_BUDGET;
  /** The function that computes this layer's forward pass (see `AttentionProcessor`). */
  processor: AttentionProcessor = defaultProcessor;

  constructor(
    /** Width of the tokens (the SpatialTransformer width). */
    readonly queryDim: number,
    /** Width of the context fed to to_k/to_v: `queryDim` for self-attention, the text width for cross. */
    readonly contextDim: number,
    readonly heads: number,
    readonly dimHead: number,
    /** True for `attn1` (context is the tokens themselves). */
    readonly isSelfAttention: boolean,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    const o = this.childOptions;
    this.innerDim = heads * dimHead;
    this.scale = 1 / Math.sqrt(dimHead);
    this.to_q = this.child("to_q", new Linear(queryDim, this.innerDim, { ...o, bias: false }));
    this.to_k = this.child("to_k", new Linear(contextDim, this.innerDim, { ...o, bias: false }));
    this.to_v = this.child("to_v", new Linear(contextDim, this.innerDim, { ...o, bias: false }));
    this.to_out = this.child("to_out", new ModuleList([new Linear(this.innerDim, queryDim, o)]));
  }

  /** `x`: `[B, N, queryDim]`; `context`: `[B, T, contextDim]`, or undefined for self-attention. */
  apply(x: tf.Tensor, context?: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.processor(this, x, context));
  }
}

/** GEGLU (Shazeer 2020): `proj` maps c → 2·inner; the first half is the value, the second the gate: `value · GELU(gate)`. */
export class GEGLU extends Module {
  readonly proj: Linear;
  constructor(
    dimIn: number,
    readonly dimOut: number,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.proj = this.child("proj", new Linear(dimIn, dimOut * 2, this.childOptions));
  }
  apply(x: tf.Tensor): tf.Tensor {
    const n = this.dimOut;
    const lead = x.shape.slice(0, -1);
    if (fusedKernelsActive()) return fusedGeglu(this.proj.apply(x).reshape([-1, 2 * n]) as tf.Tensor2D).reshape([...lead, n]);
    // [tokens, 2·inner] → [2, tokens, inner]: the two halves become contiguous blocks, which every
    // backend splits cheaply (a last-axis split is a slow strided copy on the cpu backend).
    const halves = this.proj.apply(x).reshape([-1, 2, n]).transpose([1, 0, 2]);
    const [value, gate] = tf.split(halves, 2, 0);
    return tf.mul(value!, gelu(gate!)).reshape([...lead, n]);
  }
}

/** Feed-forward `ff.net = [GEGLU(c → 4c), Dropout, Linear(4c → c)]`. */
export class FeedForward extends Module {
  readonly geglu: GEGLU;
  readonly out: Linear;
  constructor(dim: number, mult = 4, opts: ModuleOptions = {}) {
    super(opts);
    const inner = dim * mult;
    this.geglu = new GEGLU(dim, inner, this.childOptions);
    this.out = new Linear(inner, dim, this.childOptions);
    this.child(
      "net",
      new IndexedModules([
        [0, this.geglu],
        [2, this.out],
      ]),
    );
  }
  apply(x: tf.Tensor): tf.Tensor {
    return this.out.apply(this.geglu.apply(x));
  }
}

/** Self-attention, cross-attention and feed-forward, each pre-LayerNorm with a residual. */
export class BasicTransformerBlock extends Module {
  readonly attn1: CrossAttention;
  readonly ff: FeedForward;
  readonly attn2: CrossAttention;
  readonly norm1: LayerNorm;
  readonly norm2: LayerNorm;
  readonly norm3: LayerNorm;
  constructor(dim: number, heads: number, dimHead: number, contextDim: number, opts: ModuleOptions = {}) {
    super(opts);
    const o = this.childOptions;
    this.attn1 = this.child("attn1", new CrossAttention(dim, dim, heads, dimHead, true, o));
    this.ff = this.child("ff", new FeedForward(dim, 4, o));
    this.attn2 = this.child("attn2", new CrossAttention(dim, contextDim, heads, dimHead, false, o));
    this.norm1 = this.child("norm1", new LayerNorm(dim, 1e-5, o));
    this.norm2 = this.child("norm2", new LayerNorm(dim, 1e-5, o));
    this.norm3 = this.child("norm3", new LayerNorm(dim, 1e-5, o));
  }
  /** `x`: `[B, N, dim]`, `context`: `[B, T, contextDim]`. */
  apply(x: tf.Tensor, context: tf.Tensor): tf.Tensor {
    let h = tf.add(x, this.attn1.apply(this.norm1.apply(x)));
    h = tf.add(h, this.attn2.apply(this.norm2.apply(h), context));
    return tf.add(h, this.ff.apply(this.norm3.apply(h)));
  }
}

/**
 * A per-token linear map stored either as a 1×1 conv `[out, in, 1, 1]` (SD 1.x `proj_in/out`) or as
 * a Linear `[out, in]` (SD 2.x). Either way it runs as one matMul on `[…, in]`.
 */
export class TokenProjection extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    asConv: boolean,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.weight = asConv
      ? this.param("weight", [outFeatures, inFeatures, 1, 1], "conv1x1-as-linear")
      : this.param("weight", [outFeatures, inFeatures], "linear");
    this.bias = this.param("bias", [outFeatures], "plain", zerosInit);
  }
  apply(x: tf.Tensor): tf.Tensor {
    const shape = x.shape;
    const y = tf.add(tf.matMul(x.reshape([-1, this.inFeatures]) as tf.Tensor2D, this.weight.value as tf.Tensor2D), this.bias.value);
    return y.reshape([...shape.slice(0, -1), this.outFeatures]);
  }
}

/** Attention over the pixels of a feature map, conditioned on a context sequence. */
export class SpatialTransformer extends Module {
  readonly norm: GroupNorm;
  readonly proj_in: TokenProjection;
  readonly transformer_blocks: ModuleList<BasicTransformerBlock>;
  readonly proj_out: TokenProjection;
  constructor(
    readonly channels: number,
    heads: number,
    dimHead: number,
    depth: number,
    contextDim: number,
    useLinear: boolean,
    opts: ModuleOptions = {},
    groups = 32,
  ) {
    super(opts);
    const o = this.childOptions;
    const inner = heads * dimHead;
    this.norm = this.child("norm", new GroupNorm(groups, channels, 1e-6, o));
    this.proj_in = this.child("proj_in", new TokenProjection(channels, inner, !useLinear, o));
    this.transformer_blocks = this.child("transformer_blocks", new ModuleList<BasicTransformerBlock>());
    for (let i = 0; i < depth; i++) this.transformer_blocks.push(new BasicTransformerBlock(inner, heads, dimHead, contextDim, o));
    this.proj_out = this.child("proj_out", new TokenProjection(inner, channels, !useLinear, o));
  }
  /** `x`: `[B, H, W, C]`, `context`: `[B, T, contextDim]` → `[B, H, W, C]`. */
  apply(x: tf.Tensor4D, context: tf.Tensor): tf.Tensor4D {
    return tf.tidy(() => {
      const [b, hgt, wid, c] = x.shape;
      let h = this.proj_in.apply(this.norm.apply(x).reshape([b, hgt * wid, c]));
      for (const block of this.transformer_blocks.items) h = block.apply(h, context);
      h = this.proj_out.apply(h);
      return tf.add(x, h.reshape([b, hgt, wid, c]));
    });
  }
}
