/**
 * Prompts → CLIP context as AUTOMATIC1111 encodes them for txt2img, textual-inversion embeddings
 * included:
 *
 *   prompt ──tokenizeLine (emphasis, BREAK, 75-token chunks, embedding names)──▶ chunks
 *   chunk ids ──CLIP, with each embedding's vectors written over its token slots──▶ z
 *   z ──emphasis (multiply by the weights, restore the mean)──▶ context
 *
 * The chunking and emphasis are `prompt-chunks.ts` (A1111's `tokenize_line` and
 * `EmphasisOriginal`); this file adds the embedding lookup (`EmbeddingDatabase.findAt`) and hands
 * the vectors to the text encoder through `ClipEncodeOptions.embeddings`: a fix at chunk offset `o`
 * fills positions `o + 1 …` of that chunk's 77-id window (after its BOS), as A1111's
 * `EmbeddingsWithFixes` does.
 *
 * The prompts of one call are padded to the same number of chunks (so a prompt and its negative
 * can be batched), but each prompt's emphasis is re-normalised on its own: A1111 encodes the prompt
 * and the negative prompt in separate calls, and every image of a batch has the same prompt.
 */
import * as tf from "@tensorflow/tfjs";
import type { ClipTextModel, TokenVectors } from "./clip";
import type { EmbeddingDatabase, TextualInversionEmbedding } from "./embeddings";
import { type EmphasisMode, type PromptChunk, applyEmphasisTensor, chunkBatch } from "./prompt-chunks";
import type { Tokenizer } from "./tokenizer";

/** Options of `encodePrompts`. */
export interface EncodePromptsOptions {
  /** Embeddings whose names the prompts may use. */
  embeddings?: EmbeddingDatabase;
  /** A1111's "Emphasis mode" (default "Original"; "None" reads brackets literally). */
  emphasis?: EmphasisMode;
  /** A1111's "Clip skip" (default 1). */
  clipSkip?: number;
  /** A1111's comma padding backtrack (default 20). */
  commaBacktrack?: number;
  /**
   * Over what "Original" emphasis restores the mean: "prompt" (default), each prompt on its own,
   * as A1111's separate calls for the prompt and the negative prompt; "batch", all prompts of this
   * call together, as one A1111 encoder batch (e.g. the texts of one prompt-editing schedule).
   */
  emphasisScope?: "prompt" | "batch";
}

/** What `encodePrompts` returns. */
export interface EncodedPrompts {
  /** `[prompts, k·maxLength, width]`; the caller owns it. */
  context: tf.Tensor3D;
  /** Per prompt, the embeddings it used, in A1111's order (chunk by chunk, left to right, each once). */
  used: TextualInversionEmbedding[][];
  /** Tokens of the longest prompt, as A1111 counts them ("n/75"). */
  tokenCount: number;
  /** Per prompt, the 77-token windows encoded (ids, emphasis weights, embedding slots). */
  chunks: PromptChunk<TextualInversionEmbedding>[][];
}

/** The id of `,` in this tokenizer (CLIP's `,</w>`), for the comma backtrack. */
function commaIdOf(tokenizer: Tokenizer): number | undefined {
  const own = (tokenizer as { commaId?: number }).commaId;
  if (own !== undefined) return own;
  const ids = tokenizer.tokenize(",");
  const unk = (tokenizer as { unkId?: number }).unkId;
  return ids.length === 1 && ids[0] !== unk ? ids[0] : undefined;
}

/**
 * Encode prompts the A1111 way (see the module comment). With `opts.embeddings`, a prompt word
 * equal to an embedding's name is replaced by the embedding's vectors.
 */
export function encodePrompts(
  textModel: ClipTextModel,
  tokenizer: Tokenizer,
  prompts: readonly string[],
  opts: EncodePromptsOptions = {},
): EncodedPrompts {
  if (prompts.length === 0) throw new Error("encodePrompts: give at least one prompt");
  const db = opts.embeddings;
  const emphasis = opts.emphasis ?? "Original";
  const win = tokenizer.maxLength;
  const { chunks, tokenCount } = chunkBatch<TextualInversionEmbedding>(prompts, {
    tokenize: (t) => tokenizer.tokenize(t),
    bosId: tokenizer.bosId,
    eosId: tokenizer.eosId,
    commaId: commaIdOf(tokenizer),
    chunkLength: win - 2,
    commaBacktrack: opts.commaBacktrack,
    emphasis,
    ...(db ? { findEmbedding: (tokens: readonly number[], position: number) => db.findAt(tokens, position) } : {}),
  });
  // After the first EOS a chunk is padded with the tokenizer's pad id when it has its own (A1111's
  // process_tokens does this for SD 2; the tiny model pads with <pad>, as it was trained).
  const padRow = (tokens: number[]): number[] => {
    if (tokenizer.padId === tokenizer.eosId) return tokens;
    const end = tokens.indexOf(tokenizer.eosId);
    return tokens.map((id, i) => (i > end ? tokenizer.padId : id));
  };
  const ids = chunks.map((row) => row.flatMap((ch) => padRow(ch.tokens)));
  const multipliers = chunks.map((row) => row.flatMap((ch) => ch.multipliers));
  const vectors: TokenVectors[] = [];
  const used = prompts.map(() => new Map<string, TextualInversionEmbedding>());
  const nChunks = chunks[0]!.length;
  for (let k = 0; k < nChunks; k++) {
    chunks.forEach((row, r) => {
      for (const fix of row[k]!.fixes) {
        vectors.push({ row: r, start: k * win + fix.offset + 1, values: fix.embedding.vectors });
        if (!used[r]!.has(fix.embedding.name)) used[r]!.set(fix.embedding.name, fix.embedding);
      }
    });
  }
  const context = tf.tidy(() => {
    const z = textModel.encode(ids, { clipSkip: opts.clipSkip, embeddings: vectors });
    if (opts.emphasisScope === "batch") return applyEmphasisTensor(z, multipliers, emphasis, win);
    const rows = tf.split(z, prompts.length, 0) as tf.Tensor3D[];
    return tf.concat(
      rows.map((zr, r) => applyEmphasisTensor(zr, [multipliers[r]!], emphasis, win)),
      0,
    ) as tf.Tensor3D;
  });
  return { context, used: used.map((m) => [...m.values()]), tokenCount, chunks };
}
