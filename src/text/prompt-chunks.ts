/**
 * AUTOMATIC1111's text-encoder front end (modules/sd_hijack_clip.py, sd_emphasis.py): prompt →
 * weighted 77-token chunks → CLIP → emphasis.
 *
 * - `tokenizeLine` = `tokenize_line`: the prompt is parsed with `parsePromptAttention`, each run is
 *   tokenized on its own, and tokens are packed into chunks of 75 (plus BOS/EOS = 77), each token
 *   carrying its run's weight. When a chunk is full and the last comma is at most 20 tokens back
 *   ("comma padding backtrack"), the tokens after that comma move to the next chunk. `BREAK` closes
 *   the current chunk, padding it with EOS. A textual-inversion embedding (found by the optional
 *   `findEmbedding` hook) takes as many slots as it has vectors and never straddles two chunks.
 * - `chunkBatch` = `process_texts` + `forward`'s padding: every prompt of a batch gets as many
 *   chunks as the longest, extra ones empty (BOS + 76 EOS, weight 1).
 * - `applyEmphasis` = `EmphasisOriginal.after_transformers`, per chunk position: multiply each
 *   token's output vector by its weight, then rescale the whole chunk batch so its mean is what it
 *   was before ("No norm" skips the rescale; "Ignore" and "None" leave the output alone).
 * The whole path on this project's tokenizer and CLIP text model, textual-inversion embeddings
 * included, is `encodePrompts` (encode-prompts.ts).
 */
import * as tf from "@tensorflow/tfjs";
import { type WeightedText, isBreak, parsePromptAttention } from "./prompt-attention";

/** A1111's "Emphasis mode" setting (`opts.emphasis`). */
export type EmphasisMode = "Original" | "No norm" | "Ignore" | "None";

/** A textual-inversion embedding found in the token stream by `findEmbedding`. */
export interface EmbeddingMatch<E> {
  embedding: E;
  /** Number of vectors, i.e. token slots it occupies. */
  vectors: number;
  /** Number of prompt tokens its name spans (consumed from the stream). */
  length: number;
}

/** Options of `tokenizeLine` / `chunkBatch`. */
export interface ChunkOptions<E = unknown> {
  /** Text → token ids without BOS/EOS (called once per parsed run, as A1111 does). */
  tokenize: (text: string) => number[];
  bosId: number;
  eosId: number;
  /** Id of the `,` token for the comma backtrack (none: no backtrack). */
  commaId?: number;
  /** Tokens per chunk without BOS/EOS (75). */
  chunkLength?: number;
  /** A1111's "Prompt word wrap length limit" (`comma_padding_backtrack`, default 20; 0 = off). */
  commaBacktrack?: number;
  /** Emphasis mode; "None" skips the bracket parsing entirely (default "Original"). */
  emphasis?: EmphasisMode;
  /** Textual-inversion lookup at `position` of one run's tokens (A1111's `find_embedding_at_position`). */
  findEmbedding?: (tokens: readonly number[], position: number) => EmbeddingMatch<E> | undefined;
}

/** One chunk: `chunkLength + 2` token ids, their weights, and where embeddings go. */
export interface PromptChunk<E = unknown> {
  tokens: number[];
  multipliers: number[];
  /** Embedding vectors to write over the token embeddings starting at `offset` (0 placeholder ids there). */
  fixes: { offset: number; embedding: E }[];
}

function checkInt(v: number, what: string, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new Error(`A1111 prompt chunks: ${what} must be an integer ≥ ${min}, got ${v}`);
}

/** A1111's `empty_chunk`: BOS, then EOS to the end, every weight 1. */
export function emptyChunk<E = unknown>(opts: Pick<ChunkOptions, "bosId" | "eosId" | "chunkLength">): PromptChunk<E> {
  const len = opts.chunkLength ?? 75;
  return {
    tokens: [opts.bosId, ...new Array<number>(len + 1).fill(opts.eosId)],
    multipliers: new Array<number>(len + 2).fill(1),
    fixes: [],
  };
}

/**
 * A1111's `tokenize_line`: one prompt → its chunks and its token count (full chunks count 75, the
 * last its real length; A1111 shows this as "n/75" under the prompt box).
 */
export function tokenizeLine<E = unknown>(line: string, opts: ChunkOptions<E>): { chunks: PromptChunk<E>[]; tokenCount: number } {
  const len = opts.chunkLength ?? 75;
  const backtrack = opts.commaBacktrack ?? 20;
  checkInt(len, "chunkLength", 1);
  checkInt(backtrack, "commaBacktrack", 0);
  const parsed: WeightedText[] = (opts.emphasis ?? "Original") === "None" ? [[line, 1]] : parsePromptAttention(line);
  const chunks: PromptChunk<E>[] = [];
  let chunk: PromptChunk<E> = { tokens: [], multipliers: [], fixes: [] };
  let tokenCount = 0;
  let lastComma = -1;
  const nextChunk = (isLast = false): void => {
    tokenCount += isLast ? chunk.tokens.length : len;
    const toAdd = len - chunk.tokens.length;
    if (toAdd > 0) {
      chunk.tokens.push(...new Array<number>(toAdd).fill(opts.eosId));
      chunk.multipliers.push(...new Array<number>(toAdd).fill(1));
    }
    chunk.tokens = [opts.bosId, ...chunk.tokens, opts.eosId];
    chunk.multipliers = [1, ...chunk.multipliers, 1];
    lastComma = -1;
    chunks.push(chunk);
    chunk = { tokens: [], multipliers: [], fixes: [] };
  };
  for (const piece of parsed) {
    if (isBreak(piece)) {
      nextChunk();
      continue;
    }
    const [text, weight] = piece;
    const tokens = opts.tokenize(text);
    let position = 0;
    while (position < tokens.length) {
      const token = tokens[position]!;
      if (token === opts.commaId) {
        lastComma = chunk.tokens.length;
      } else if (backtrack !== 0 && chunk.tokens.length === len && lastComma !== -1 && chunk.tokens.length - lastComma <= backtrack) {
        const cut = lastComma + 1;
        const relocTokens = chunk.tokens.slice(cut);
        const relocMults = chunk.multipliers.slice(cut);
        chunk.tokens = chunk.tokens.slice(0, cut);
        chunk.multipliers = chunk.multipliers.slice(0, cut);
        nextChunk();
        chunk.tokens = relocTokens;
        chunk.multipliers = relocMults;
      }
      if (chunk.tokens.length === len) nextChunk();
      const found = opts.findEmbedding?.(tokens, position);
      if (!found) {
        chunk.tokens.push(token);
        chunk.multipliers.push(weight);
        position++;
        continue;
      }
      if (chunk.tokens.length + found.vectors > len) nextChunk();
      chunk.fixes.push({ offset: chunk.tokens.length, embedding: found.embedding });
      chunk.tokens.push(...new Array<number>(found.vectors).fill(0));
      chunk.multipliers.push(...new Array<number>(found.vectors).fill(weight));
      position += found.length;
    }
  }
  if (chunk.tokens.length > 0 || chunks.length === 0) nextChunk(true);
  return { chunks, tokenCount };
}

/**
 * A batch of prompts → chunks, every prompt padded with empty chunks to the longest one's count
 * (A1111 encodes chunk k of every prompt together). `tokenCount` is the largest prompt's.
 */
export function chunkBatch<E = unknown>(
  lines: readonly string[],
  opts: ChunkOptions<E>,
): { chunks: PromptChunk<E>[][]; tokenCount: number } {
  const cache = new Map<string, { chunks: PromptChunk<E>[]; tokenCount: number }>();
  let tokenCount = 0;
  const per = lines.map((line) => {
    let hit = cache.get(line);
    if (!hit) {
      hit = tokenizeLine(line, opts);
      cache.set(line, hit);
      tokenCount = Math.max(tokenCount, hit.tokenCount);
    }
    return hit.chunks;
  });
  const count = Math.max(1, ...per.map((c) => c.length));
  return { chunks: per.map((c) => Array.from({ length: count }, (_, k) => c[k] ?? emptyChunk<E>(opts))), tokenCount };
}

/**
 * A1111's emphasis on one chunk position of a batch: `z` is `[B, T, C]` row-major (the CLIP output
 * for chunk k of every prompt), `multipliers` B rows of T weights. Returns a new array; see the
 * module comment for the modes. Means are accumulated in float64 (torch sums float32 in its own
 * order, so results agree to float32 rounding, not bit for bit).
 */
export function applyEmphasis(
  z: Float32Array,
  shape: readonly [number, number, number],
  multipliers: readonly (readonly number[])[],
  mode: EmphasisMode = "Original",
): Float32Array {
  const [b, t, c] = shape;
  if (z.length !== b * t * c) throw new Error(`applyEmphasis: ${z.length} values do not make [${b}, ${t}, ${c}]`);
  if (multipliers.length !== b || multipliers.some((row) => row.length !== t)) {
    throw new Error(`applyEmphasis: need ${b} rows of ${t} weights (one per token), got ${multipliers.map((r) => r.length).join(", ")}`);
  }
  if (mode === "Ignore" || mode === "None") return z.slice();
  const out = new Float32Array(z.length);
  let before = 0;
  let after = 0;
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < t; j++) {
      const m = Math.fround(multipliers[i]![j]!);
      for (let k = 0; k < c; k++) {
        const at = (i * t + j) * c + k;
        out[at] = z[at]! * m;
        before += z[at]!;
        after += out[at]!;
      }
    }
  }
  if (mode === "No norm") return out;
  const scale = Math.fround(Math.fround(before / z.length) / Math.fround(after / z.length));
  for (let i = 0; i < out.length; i++) out[i] = out[i]! * scale;
  return out;
}

/**
 * `applyEmphasis` on the text encoder's output `[B, k·chunk, C]`: each of the k chunk positions is
 * weighted and re-normalised over the batch on its own, as A1111 encodes them one at a time.
 * `multipliers` are B rows of k·chunk weights. The caller owns the returned tensor.
 */
export function applyEmphasisTensor(
  z: tf.Tensor3D,
  multipliers: readonly (readonly number[])[],
  mode: EmphasisMode = "Original",
  chunk = 77,
): tf.Tensor3D {
  const [b, len, c] = z.shape;
  if (len % chunk !== 0) throw new Error(`applyEmphasisTensor: ${len} positions are not whole chunks of ${chunk}`);
  if (multipliers.length !== b || multipliers.some((row) => row.length !== len)) {
    throw new Error(
      `applyEmphasisTensor: need ${b} rows of ${len} weights (one per token), got ${multipliers.map((r) => r.length).join(", ")}`,
    );
  }
  if (mode === "Ignore" || mode === "None") return z.clone();
  // All weights 1: A1111's z·1·(mean/mean) is z itself whenever the mean is not 0; skipping the
  // rescale gives that bit for bit and keeps a zero-mean z (a freshly initialised encoder's layer
  // norm) from turning into 0/0.
  if (multipliers.every((row) => row.every((m) => m === 1))) return z.clone();
  return tf.tidy(() => {
    const k = len / chunk;
    const zc = z.reshape([b, k, chunk, c]);
    const m = tf.tensor(multipliers.flat(), [b, k, chunk, 1], "float32");
    const weighted = tf.mul(zc, m);
    if (mode === "No norm") return weighted.reshape([b, len, c]) as tf.Tensor3D;
    // Mean over (batch, tokens, width) for each chunk position k.
    const before = tf.mean(zc, [0, 2, 3], true);
    const after = tf.mean(weighted, [0, 2, 3], true);
    return tf.mul(weighted, tf.div(before, after)).reshape([b, len, c]) as tf.Tensor3D;
  });
}
