/**
 * CLIP's text transformer (the text tower of OpenAI CLIP ViT-L/14), which SD 1.x uses to turn a
 * prompt into the context `[B, 77, 768]` that every cross-attention layer of the UNet reads.
 *
 * A GPT-2-like pre-norm transformer:
 *   h₀ = token_embedding[ids] + position_embedding[0..T−1]
 *   hₗ = hₗ₋₁ + Attn(LN₁(hₗ₋₁))            (causal: token t attends to tokens ≤ t)
 *   hₗ = hₗ  + fc2(quickGELU(fc1(LN₂(hₗ))))
 *   out = final_layer_norm(h_L)
 *
 * Module paths are the HuggingFace `CLIPTextModel` names below `text_model.`; the same tree loads
 * from an LDM single file (`cond_stage_model.transformer.text_model.` prefix) and from a diffusers
 * `text_encoder/model.safetensors` (`text_model.` prefix).
 */
import * as tf from "@tensorflow/tfjs";
import { Module, type ModuleOptions, type Param } from "../nn/module";
import { LayerNorm, Linear, ModuleList, gelu, quickGelu } from "../nn/layers";

/** Shape of a CLIP text tower. */
export interface ClipTextConfig {
  vocabSize: number;
  /** Number of positions (77): the window length the tokenizer frames prompts to. */
  maxPositions: number;
  width: number;
  layers: number;
  heads: number;
  mlpWidth: number;
  /** CLIP ViT-L/14 uses quick GELU; OpenCLIP ViT-H (SD 2.x) uses exact GELU. */
  activation: "quick_gelu" | "gelu";
  /** LayerNorm epsilon (1e-5). */
  eps: number;
}

/** SD 1.x's text encoder: openai/clip-vit-large-patch14, text tower (123,060,480 parameters). */
export const CLIP_VIT_L14_TEXT: Readonly<ClipTextConfig> = Object.freeze({
  vocabSize: 49408,
  maxPositions: 77,
  width: 768,
  layers: 12,
  heads: 12,
  mlpWidth: 3072,
  activation: "quick_gelu",
  eps: 1e-5,
});

/** A small text tower with the same structure, for tests and the embedded tiny model. */
export function tinyClipTextConfig(overrides: Partial<ClipTextConfig> = {}): ClipTextConfig {
  return {
    vocabSize: 64,
    maxPositions: 77,
    width: 32,
    layers: 2,
    heads: 4,
    mlpWidth: 128,
    activation: "quick_gelu",
    eps: 1e-5,
    ...overrides,
  };
}

/** A lookup table `weight [num, dim]` (PyTorch `nn.Embedding`). */
export class Embedding extends Module {
  readonly weight: Param;
  constructor(
    readonly num: number,
    readonly dim: number,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.weight = this.param("weight", [num, dim], "plain");
  }

  /** Rows of the table for integer ids of any shape → `[...ids.shape, dim]`. */
  apply(ids: tf.Tensor): tf.Tensor {
    return tf.gather(this.weight.value, ids.flatten()).reshape([...ids.shape, this.dim]);
  }
}

/** `embeddings.token_embedding` and `embeddings.position_embedding`. */
export class ClipTextEmbeddings extends Module {
  readonly token_embedding: Embedding;
  readonly position_embedding: Embedding;
  constructor(cfg: ClipTextConfig, opts: ModuleOptions = {}) {
    super(opts);
    this.token_embedding = this.child("token_embedding", new Embedding(cfg.vocabSize, cfg.width, this.childOptions));
    this.position_embedding = this.child("position_embedding", new Embedding(cfg.maxPositions, cfg.width, this.childOptions));
  }

  /**
   * h₀ = E_tok[ids] + E_pos[0..T−1]. Positions are always 0..T−1: the `position_ids` buffer some
   * checkpoints carry is never read (merged models can hold corrupted float copies of it).
   * `vectors` (textual inversion) replace rows of E_tok[ids] before the positions are added.
   */
  apply(ids: tf.Tensor2D, vectors: readonly TokenVectors[] = []): tf.Tensor3D {
    const [n, t] = ids.shape;
    const pos = tf.slice(this.position_embedding.weight.value, [0, 0], [t, -1]);
    let tok = this.token_embedding.apply(ids);
    if (vectors.length > 0) tok = replaceTokenVectors(tok, vectors, n, t, this.token_embedding.dim);
    return tf.add(tok, pos) as tf.Tensor3D;
  }
}

/** Multi-head causal self-attention with biased q/k/v/out projections. */
export class ClipAttention extends Module {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly out_proj: Linear;
  readonly headDim: number;
  constructor(
    readonly width: number,
    readonly heads: number,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    if (width % heads !== 0) throw new Error(`ClipAttention: width ${width} is not divisible by ${heads} heads`);
    this.headDim = width / heads;
    this.q_proj = this.child("q_proj", new Linear(width, width, this.childOptions));
    this.k_proj = this.child("k_proj", new Linear(width, width, this.childOptions));
    this.v_proj = this.child("v_proj", new Linear(width, width, this.childOptions));
    this.out_proj = this.child("out_proj", new Linear(width, width, this.childOptions));
  }

  /**
   * softmax(Q Kᵀ / √d + M) V per head, where M is 0 on and below the diagonal and −∞ above it
   * (`mask`, shape `[T, T]`), then the heads are concatenated and projected by `out_proj`.
   */
  apply(x: tf.Tensor3D, mask: tf.Tensor2D): tf.Tensor3D {
    const [b, t] = x.shape;
    const split = (y: tf.Tensor): tf.Tensor4D => y.reshape([b, t, this.heads, this.headDim]).transpose([0, 2, 1, 3]);
    const q = split(tf.mul(this.q_proj.apply(x), 1 / Math.sqrt(this.headDim)));
    const k = split(this.k_proj.apply(x));
    const v = split(this.v_proj.apply(x));
    const scores = tf.add(tf.matMul(q, k, false, true), mask);
    const attended = tf.matMul(tf.softmax(scores, -1), v); // [B, H, T, d]
    const merged = attended.transpose([0, 2, 1, 3]).reshape([b, t, this.width]);
    return this.out_proj.apply(merged) as tf.Tensor3D;
  }
}

/** The feed-forward block: fc2(act(fc1(x))). */
export class ClipMlp extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(
    width: number,
    mlpWidth: number,
    readonly activation: ClipTextConfig["activation"],
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.fc1 = this.child("fc1", new Linear(width, mlpWidth, this.childOptions));
    this.fc2 = this.child("fc2", new Linear(mlpWidth, width, this.childOptions));
  }

  apply(x: tf.Tensor): tf.Tensor {
    const h = this.fc1.apply(x);
    return this.fc2.apply(this.activation === "quick_gelu" ? quickGelu(h) : gelu(h));
  }
}

/** One pre-norm transformer layer: x + Attn(LN₁ x), then + MLP(LN₂ x). */
export class ClipEncoderLayer extends Module {
  readonly self_attn: ClipAttention;
  readonly layer_norm1: LayerNorm;
  readonly mlp: ClipMlp;
  readonly layer_norm2: LayerNorm;
  constructor(cfg: ClipTextConfig, opts: ModuleOptions = {}) {
    super(opts);
    // Registration order follows the HF state dict: self_attn, layer_norm1, mlp, layer_norm2.
    this.self_attn = this.child("self_attn", new ClipAttention(cfg.width, cfg.heads, this.childOptions));
    this.layer_norm1 = this.child("layer_norm1", new LayerNorm(cfg.width, cfg.eps, this.childOptions));
    this.mlp = this.child("mlp", new ClipMlp(cfg.width, cfg.mlpWidth, cfg.activation, this.childOptions));
    this.layer_norm2 = this.child("layer_norm2", new LayerNorm(cfg.width, cfg.eps, this.childOptions));
  }

  apply(x: tf.Tensor3D, mask: tf.Tensor2D): tf.Tensor3D {
    const h = tf.add(x, this.self_attn.apply(this.layer_norm1.apply(x) as tf.Tensor3D, mask));
    return tf.add(h, this.mlp.apply(this.layer_norm2.apply(h))) as tf.Tensor3D;
  }
}

/** `encoder.layers.N`. */
export class ClipEncoder extends Module {
  readonly layers: ModuleList<ClipEncoderLayer>;
  constructor(cfg: ClipTextConfig, opts: ModuleOptions = {}) {
    super(opts);
    this.layers = this.child("layers", new ModuleList<ClipEncoderLayer>());
    for (let i = 0; i < cfg.layers; i++) this.layers.push(new ClipEncoderLayer(cfg, this.childOptions));
  }
}

/** Options for `ClipTextModel.encode`. */
export interface ClipEncodeOptions {
  /**
   * AUTOMATIC1111's "Clip skip" (default 1): use the hidden state `n` layers from the end —
   * i.e. run only the first `layers − n + 1` layers — then apply `final_layer_norm`.
   * 1 is the normal output; 2 is the popular setting for NovelAI-derived models.
   */
  clipSkip?: number;
  /**
   * Textual-inversion hook: vectors written over the token embeddings (`E_tok[ids]`) before the
   * position embeddings are added and the transformer runs — what A1111's `EmbeddingsWithFixes`
   * does. Each entry fills positions `start, start+1, …` of row `row` (positions count across the
   * row's 77-id windows); vectors that would run past the end of their window are dropped, as in
   * A1111. See `text/embeddings.ts` for where the entries come from.
   */
  embeddings?: readonly TokenVectors[];
}

/** Vectors that replace token embeddings at some positions of one row (see `ClipEncodeOptions.embeddings`). */
export interface TokenVectors {
  /** Batch row. */
  row: number;
  /** First position replaced (0 is the window's BOS; A1111 places embeddings from 1 on). */
  start: number;
  /** `count × width` values, row-major (one vector per position). */
  values: Float32Array;
}

/**
 * `tok` `[n, t, width]` with the given positions replaced. Entries address rows and positions of
 * the `[n, t]` id grid; values past the end of a row are dropped. Inside the caller's tidy.
 */
function replaceTokenVectors(tok: tf.Tensor, vectors: readonly TokenVectors[], n: number, t: number, width: number): tf.Tensor {
  const mask = new Uint8Array(n * t);
  const values = new Float32Array(n * t * width);
  for (const v of vectors) {
    if (!Number.isSafeInteger(v.row) || v.row < 0 || v.row >= n || !Number.isSafeInteger(v.start) || v.start < 0 || v.start >= t) {
      throw new Error(
        `ClipTextModel.encode: embedding vectors at row ${v.row}, position ${v.start} are outside the [${n}, ${t}] token grid`,
      );
    }
    if (v.values.length === 0 || v.values.length % width !== 0) {
      throw new Error(`ClipTextModel.encode: embedding vectors must be whole vectors of width ${width}, got ${v.values.length} values`);
    }
    const count = Math.min(v.values.length / width, t - v.start);
    mask.fill(1, v.row * t + v.start, v.row * t + v.start + count);
    values.set(v.values.subarray(0, count * width), (v.row * t + v.start) * width);
  }
  const where = tf.tensor3d(mask, [n, t, 1], "bool");
  return tf.where(where, tf.tensor3d(values, [n, t, width]), tok);
}

/** CLIP's text transformer; its module paths are the checkpoint keys after `text_model.`. */
export class ClipTextModel extends Module {
  readonly embeddings: ClipTextEmbeddings;
  readonly encoder: ClipEncoder;
  readonly final_layer_norm: LayerNorm;
  constructor(
    readonly config: ClipTextConfig,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.embeddings = this.child("embeddings", new ClipTextEmbeddings(config, this.childOptions));
    this.encoder = this.child("encoder", new ClipEncoder(config, this.childOptions));
    this.final_layer_norm = this.child("final_layer_norm", new LayerNorm(config.width, config.eps, this.childOptions));
  }

  /**
   * Token ids → context `[B, T, width]`.
   *
   * `ids` rows may hold several windows laid end to end (length `k · maxPositions`, as
   * `ClipTokenizer.encode` produces for long prompts): each window is encoded on its own and the
   * results are concatenated along the sequence axis, giving `[B, k · maxPositions, width]` —
   * AUTOMATIC1111's treatment of prompts longer than 75 tokens. Rows of length ≤ maxPositions are
   * encoded as one window. The caller owns the returned tensor.
   */
  encode(ids: number[][] | tf.Tensor2D, opts: ClipEncodeOptions = {}): tf.Tensor3D {
    const skip = opts.clipSkip ?? 1;
    const nLayers = this.config.layers;
    if (!Number.isInteger(skip) || skip < 1 || skip > nLayers)
      throw new Error(`ClipTextModel.encode: clipSkip must be an integer in 1..${nLayers}, got ${skip}`);
    return tf.tidy(() => {
      if (Array.isArray(ids)) {
        const v = this.config.vocabSize;
        const bad = ids.flat().find((id) => !Number.isInteger(id) || id < 0 || id >= v);
        if (bad !== undefined)
          throw new Error(
            `ClipTextModel.encode: token id ${bad} is outside the vocabulary 0..${v - 1}; was the prompt tokenized for another model?`,
          );
      }
      const idsT = Array.isArray(ids) ? tokenIdsTensor(ids) : ids;
      if (idsT.rank !== 2) throw new Error(`ClipTextModel.encode: ids must be [batch, tokens], got shape [${idsT.shape.join(", ")}]`);
      const [b, len] = idsT.shape;
      const win = this.config.maxPositions;
      let windows: tf.Tensor2D = idsT.toInt();
      let k = 1;
      if (len > win) {
        if (len % win !== 0)
          throw new Error(`ClipTextModel.encode: a row of ${len} ids is neither ≤ ${win} nor a whole number of ${win}-id windows`);
        k = len / win;
        windows = windows.reshape([b * k, win]);
      }
      const t = windows.shape[1];
      const mask = causalMask(t);
      // Window j of row r is row r·k + j of the window grid; positions restart at 0 in each window.
      const vectors = (opts.embeddings ?? []).map((v) => {
        if (!Number.isSafeInteger(v.row) || v.row < 0 || v.row >= b || !Number.isSafeInteger(v.start) || v.start < 0 || v.start >= len) {
          throw new Error(
            `ClipTextModel.encode: embedding vectors at row ${v.row}, position ${v.start} are outside the [${b}, ${len}] ids`,
          );
        }
        return { row: v.row * k + Math.floor(v.start / t), start: v.start % t, values: v.values };
      });
      let h = this.embeddings.apply(windows, vectors);
      for (let i = 0; i <= nLayers - skip; i++) h = this.encoder.layers.at(i).apply(h, mask);
      const out = this.final_layer_norm.apply(h);
      return out.reshape([b, k * t, this.config.width]) as tf.Tensor3D;
    });
  }
}

/** `[T, T]` additive mask: 0 where key ≤ query, −1e9 above the diagonal (future tokens). */
export function causalMask(t: number): tf.Tensor2D {
  return tf.tidy(() => {
    const lower = tf.linalg.bandPart(tf.ones([t, t]), -1, 0);
    return tf.mul(tf.sub(1, lower), -1e9) as tf.Tensor2D;
  });
}

/** Rows of ids → an int32 tensor, checking all rows have the same length. */
export function tokenIdsTensor(ids: number[][]): tf.Tensor2D {
  if (ids.length === 0) throw new Error("token ids: empty batch");
  const len = ids[0]!.length;
  if (len === 0 || ids.some((r) => r.length !== len)) throw new Error("token ids: every row must have the same, non-zero length");
  return tf.tensor2d(ids, [ids.length, len], "int32");
}
