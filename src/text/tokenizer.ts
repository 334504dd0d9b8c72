/**
 * Tokenizers: text → rows of token ids that the text encoder reads.
 *
 * `ClipTokenizer` is CLIP's byte-level BPE, built from the `vocab.json` + `merges.txt` pair that
 * ships in every diffusers `tokenizer/` folder (nothing is downloaded). `SimpleTokenizer` is a
 * word-level tokenizer for the embedded tiny model. Both share the same framing logic
 * (`frameTokens`): BOS + up to 75 tokens + EOS, padded to 77, with prompts longer than 75 tokens
 * either truncated or split into 75-token chunks the way AUTOMATIC1111 does.
 *
 * Chunking matches A1111's `tokenize_line` (window of 75, comma backtrack 20, empty windows to
 * equalise a batch) except that A1111 first parses its emphasis syntax — `(word:1.2)`, `[word]`,
 * `BREAK` — and textual-inversion embedding names; here the prompt text is tokenized literally
 * (brackets become tokens, there are no per-token weights).
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** What to do with a prompt longer than one window (75 content tokens for SD). */
export type LongPromptMode = "chunk" | "truncate";

/** Options for `encode`. */
export interface EncodeOptions {
  /**
   * `"chunk"` (default, as AUTOMATIC1111): split into windows of `maxLength − 2` tokens, each
   * framed as BOS + tokens + EOS padding; every prompt of a batch gets as many windows as the
   * longest one (extra windows are empty: BOS + all EOS). `"truncate"` (as CLIP/diffusers): keep the
   * first window, drop the rest and flag the prompt as truncated.
   */
  longPrompts?: LongPromptMode;
  /**
   * AUTOMATIC1111's "comma padding backtrack" (default 20; 0 disables): when a window fills up
   * and the last comma is at most this many tokens back, the tokens after that comma move to the
   * next window so a phrase is not cut in half. Used only in `"chunk"` mode.
   */
  commaBacktrack?: number;
}

/** The result of `encode` for a batch of prompts. */
export interface TokenizedBatch {
  /**
   * One row per prompt. Each row is `k · maxLength` ids: `k` windows of `maxLength` ids laid end
   * to end (`k = 1` unless a prompt needed chunking). All rows of a batch have the same length.
   */
  ids: number[][];
  /** Windows per row (`ids[i].length / maxLength`, the same for every row). */
  chunks: number;
  /** Content tokens of each prompt before framing (without BOS/EOS/padding). */
  tokenCounts: number[];
  /** Per prompt: whether tokens were dropped (only in `"truncate"` mode). */
  truncated: boolean[];
  /** Human-readable notes: dropped tokens, characters missing from the vocabulary. */
  warnings: string[];
}

/** The interface both tokenizers implement. */
export interface Tokenizer {
  /** Window length including BOS and EOS (77 for SD 1.x). */
  readonly maxLength: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  /** Text → content token ids (no BOS/EOS, no padding, no length limit). */
  tokenize(text: string, warnings?: string[]): number[];
  /** Prompts → framed, padded id rows. */
  encode(texts: string | string[], opts?: EncodeOptions): TokenizedBatch;
}

// ---- text cleanup ---------------------------------------------------------------------------

const HTML_ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: " " };

/** Decode the common HTML entities (`&amp;`, `&#39;`, `&#x27;`…), as CLIP's `html.unescape` does. */
function htmlUnescape(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (m, body: string) => {
    if (body[0] === "#") {
      const code = body[1] === "x" || body[1] === "X" ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
      return Number.isFinite(code) && code <= 0x10ffff ? String.fromCodePoint(code) : m;
    }
    return HTML_ENTITIES[body.toLowerCase()] ?? m;
  });
}

/**
 * CLIP's text cleanup: unescape HTML entities (twice, as CLIP does), collapse every run of
 * whitespace to one space, trim, lower-case. (CLIP also runs `ftfy.fix_text`, which repairs
 * mojibake; that is not reproduced — well-formed text is unaffected.)
 */
export function cleanText(text: string): string {
  return htmlUnescape(htmlUnescape(text)).replace(/\s+/gu, " ").trim().toLowerCase();
}

// ---- framing shared by both tokenizers ------------------------------------------------------

interface FrameIds {
  bos: number;
  eos: number;
  pad: number;
  comma: number | undefined;
  maxLength: number;
}

/** BOS + tokens + EOS, then `pad` up to `maxLength`. `tokens.length` must be ≤ maxLength − 2. */
function frame(tokens: number[], f: FrameIds): number[] {
  const row = [f.bos, ...tokens, f.eos];
  while (row.length < f.maxLength) row.push(f.pad);
  return row;
}

/**
 * Split one prompt's tokens into windows of at most `maxLength − 2` tokens, following
 * AUTOMATIC1111's `tokenize_line`: a window is closed when the next token would not fit; if at
 * that moment the last comma is at most `backtrack` tokens back, the tokens after the comma move
 * to the new window. An empty prompt gives one empty window.
 */
export function splitIntoChunks(tokens: number[], windowTokens: number, comma: number | undefined, backtrack: number): number[][] {
  const chunks: number[][] = [];
  let chunk: number[] = [];
  let lastComma = -1;
  const next = (): void => {
    chunks.push(chunk);
    chunk = [];
    lastComma = -1;
  };
  for (const token of tokens) {
    if (token === comma) {
      lastComma = chunk.length;
    } else if (backtrack !== 0 && chunk.length === windowTokens && lastComma !== -1 && chunk.length - lastComma <= backtrack) {
      const moved = chunk.slice(lastComma + 1);
      chunk = chunk.slice(0, lastComma + 1);
      next();
      chunk = moved;
    }
    if (chunk.length === windowTokens) next();
    chunk.push(token);
  }
  if (chunk.length > 0 || chunks.length === 0) next();
  return chunks;
}

/** Frame a batch of tokenized prompts (the body of both tokenizers' `encode`). */
function encodeBatch(tok: Tokenizer, comma: number | undefined, texts: string | string[], opts: EncodeOptions): TokenizedBatch {
  const list = typeof texts === "string" ? [texts] : texts;
  const mode = opts.longPrompts ?? "chunk";
  const backtrack = opts.commaBacktrack ?? 20;
  if (mode !== "chunk" && mode !== "truncate")
    throw new Error(`encode: longPrompts must be "chunk" or "truncate", got ${JSON.stringify(mode)}`);
  if (!Number.isInteger(backtrack) || backtrack < 0)
    throw new Error(`encode: commaBacktrack must be a non-negative integer, got ${backtrack}`);
  const f: FrameIds = { bos: tok.bosId, eos: tok.eosId, pad: tok.padId, comma, maxLength: tok.maxLength };
  const window = tok.maxLength - 2;
  const warnings: string[] = [];
  const tokenCounts: number[] = [];
  const truncated: boolean[] = [];
  const perPrompt: number[][][] = [];
  list.forEach((text, i) => {
    const tokens = tok.tokenize(text, warnings);
    tokenCounts.push(tokens.length);
    if (mode === "truncate") {
      const cut = tokens.length > window;
      truncated.push(cut);
      if (cut) warnings.push(`prompt ${i}: ${tokens.length} tokens, only the first ${window} are used (${tokens.length - window} dropped)`);
      perPrompt.push([tokens.slice(0, window)]);
    } else {
      truncated.push(false);
      perPrompt.push(splitIntoChunks(tokens, window, comma, backtrack));
    }
  });
  const chunks = Math.max(1, ...perPrompt.map((c) => c.length));
  const ids = perPrompt.map((cs) => {
    const row: number[] = [];
    for (let k = 0; k < chunks; k++) row.push(...frame(cs[k] ?? [], f));
    return row;
  });
  return { ids, chunks, tokenCounts, truncated, warnings };
}

// ---- CLIP byte-level BPE --------------------------------------------------------------------

/**
 * GPT-2/CLIP's reversible byte → character table: printable Latin-1 bytes map to themselves,
 * the other 68 bytes to code points 256, 257, … in byte order, so every byte string becomes a
 * string of "visible" characters that BPE can merge.
 */
export function bytesToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) keep.push(b); // '!'..'~'
  for (let b = 0xa1; b <= 0xac; b++) keep.push(b); // '¡'..'¬'
  for (let b = 0xae; b <= 0xff; b++) keep.push(b); // '®'..'ÿ'
  const table: string[] = new Array<string>(256);
  const kept = new Set(keep);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = String.fromCodePoint(kept.has(b) ? b : 256 + extra++);
  }
  return table;
}

/** CLIP's pre-tokenizer: special tokens, English contractions, letter runs, single digits, punctuation runs. */
const CLIP_PATTERN = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

const END_OF_WORD = "</w>";

/**
 * CLIP's BPE tokenizer. Each pre-tokenized word is UTF-8 encoded, mapped byte by byte to
 * characters (`bytesToUnicode`), its last character marked with `</w>`, then merged pairwise:
 * repeatedly the adjacent pair with the lowest merge rank (its line in `merges.txt`) is joined
 * everywhere in the word, until no adjacent pair has a rank. The resulting symbols are looked up
 * in `vocab.json`. Because all 256 byte characters (alone and with `</w>`) are in CLIP's
 * vocabulary, any character can be encoded — as its UTF-8 bytes if nothing better merges.
 */
export class ClipTokenizer implements Tokenizer {
  readonly maxLength: number;
  readonly bosId: number;
  readonly eosId: number;
  /** SD 1.x pads with EOS (49407). */
  readonly padId: number;
  /** Id of `,</w>`, used by the comma backtrack when chunking (undefined if absent). */
  readonly commaId: number | undefined;
  private readonly vocab: Map<string, number>;
  private readonly ranks: Map<string, number>;
  private readonly byteChars = bytesToUnicode();
  private readonly cache = new Map<string, string[]>();

  /**
   * @param vocab token string → id (the parsed `vocab.json`)
   * @param merges merge rules in rank order, each `"a b"` (the lines of `merges.txt` after the `#version` header)
   * @param maxLength window length with BOS/EOS (77)
   */
  constructor(vocab: Record<string, number>, merges: string[], opts: { maxLength?: number; source?: string } = {}) {
    const where = opts.source ?? "ClipTokenizer";
    this.vocab = new Map(Object.entries(vocab));
    for (const [k, v] of this.vocab) {
      if (!Number.isInteger(v) || v < 0)
        throw new Error(`${where}: vocab entry ${JSON.stringify(k)} has id ${JSON.stringify(v)}, expected a non-negative integer`);
    }
    const bos = this.vocab.get("<|startoftext|>");
    const eos = this.vocab.get("<|endoftext|>");
    if (bos === undefined || eos === undefined) {
      throw new Error(`${where}: the vocabulary has no "<|startoftext|>" / "<|endoftext|>" entries; is this CLIP's vocab.json?`);
    }
    this.bosId = bos;
    this.eosId = eos;
    this.padId = eos;
    this.commaId = this.vocab.get("," + END_OF_WORD);
    this.maxLength = opts.maxLength ?? 77;
    if (this.maxLength < 3) throw new Error(`${where}: maxLength must be at least 3`);
    this.ranks = new Map();
    merges.forEach((line, i) => {
      const parts = line.split(" ");
      if (parts.length !== 2 || !parts[0] || !parts[1])
        throw new Error(`${where}: merge rule ${i + 1} ${JSON.stringify(line)} is not two symbols separated by one space`);
      if (!this.ranks.has(line)) this.ranks.set(line, i);
    });
  }

  /**
   * Load from a tokenizer folder (holding `vocab.json` and `merges.txt`, e.g. a diffusers
   * `tokenizer/` folder) or from the two file paths.
   */
  static fromFiles(vocabOrDir: string, mergesPath?: string, opts: { maxLength?: number } = {}): ClipTokenizer {
    let vocabPath = vocabOrDir;
    let merges = mergesPath;
    if (merges === undefined) {
      if (!fs.existsSync(vocabOrDir) || !fs.statSync(vocabOrDir).isDirectory()) {
        throw new Error(`${vocabOrDir}: expected a folder holding vocab.json and merges.txt, or pass both file paths`);
      }
      vocabPath = path.join(vocabOrDir, "vocab.json");
      merges = path.join(vocabOrDir, "merges.txt");
    }
    const read = (p: string): string => {
      try {
        return fs.readFileSync(p, "utf8");
      } catch (err) {
        throw new Error(`${p}: cannot read tokenizer file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      }
    };
    let vocab: unknown;
    try {
      vocab = JSON.parse(read(vocabPath));
    } catch (err) {
      if ((err as Error).message.includes("cannot read")) throw err;
      throw new Error(`${vocabPath}: not valid JSON (${(err as Error).message})`);
    }
    if (typeof vocab !== "object" || vocab === null || Array.isArray(vocab))
      throw new Error(`${vocabPath}: expected a JSON object mapping tokens to ids`);
    const lines = read(merges)
      .split(/\r?\n/)
      .filter((l, i) => l.length > 0 && !(i === 0 && l.startsWith("#version")));
    return new ClipTokenizer(vocab as Record<string, number>, lines, { ...opts, source: `${vocabPath} + ${merges}` });
  }

  /** Vocabulary size (49408 for CLIP ViT-L/14). */
  get vocabSize(): number {
    return this.vocab.size;
  }

  /** BPE symbols of one pre-tokenized word (cached). */
  bpe(word: string): string[] {
    const hit = this.cache.get(word);
    if (hit) return hit;
    const chars = [...Buffer.from(word, "utf8")].map((b) => this.byteChars[b]!);
    let symbols = chars.slice(0, -1).concat(chars[chars.length - 1] + END_OF_WORD);
    while (symbols.length > 1) {
      // Find the adjacent pair with the lowest rank…
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < symbols.length - 1; i++) {
        const r = this.ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      // …and merge every occurrence of that pair, left to right.
      const a = symbols[best]!;
      const b = symbols[best + 1]!;
      const merged: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i < symbols.length - 1 && symbols[i] === a && symbols[i + 1] === b) {
          merged.push(a + b);
          i++;
        } else merged.push(symbols[i]!);
      }
      symbols = merged;
    }
    this.cache.set(word, symbols);
    return symbols;
  }

  tokenize(text: string, warnings?: string[]): number[] {
    const ids: number[] = [];
    for (const m of cleanText(text).matchAll(CLIP_PATTERN)) {
      const word = m[0];
      for (const sym of this.bpe(word)) {
        const id = this.vocab.get(sym);
        if (id === undefined) {
          // CLIP's full vocabulary contains every byte symbol, so this happens only with a cut-down vocabulary.
          warnings?.push(`symbol ${JSON.stringify(sym)} of ${JSON.stringify(word)} is not in the vocabulary; using <|endoftext|>`);
          ids.push(this.eosId);
        } else ids.push(id);
      }
    }
    return ids;
  }

  encode(texts: string | string[], opts: EncodeOptions = {}): TokenizedBatch {
    return encodeBatch(this, this.commaId, texts, opts);
  }
}

// ---- word-level tokenizer for the tiny model ------------------------------------------------

/** Special tokens of `SimpleTokenizer`, at ids 0..3. */
export const SIMPLE_SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"] as const;

/**
 * A word-level tokenizer for the embedded tiny model: ids 0..3 are `<pad>`, `<bos>`, `<eos>`,
 * `<unk>`, then one id per vocabulary word. Text is cleaned like CLIP's, then split into letter/
 * digit runs and single punctuation marks; words not in the list become `<unk>`. Framing
 * (BOS/EOS, padding with `<pad>`, truncation/chunking) is the same as `ClipTokenizer`'s.
 */
export class SimpleTokenizer implements Tokenizer {
  readonly maxLength: number;
  readonly padId = 0;
  readonly bosId = 1;
  readonly eosId = 2;
  readonly unkId = 3;
  readonly words: readonly string[];
  private readonly index = new Map<string, number>();

  constructor(words: string[], opts: { maxLength?: number } = {}) {
    this.maxLength = opts.maxLength ?? 77;
    if (this.maxLength < 3) throw new Error("SimpleTokenizer: maxLength must be at least 3");
    this.words = [...words];
    words.forEach((w, i) => {
      if (w !== cleanText(w) || /\s/.test(w) || w.length === 0)
        throw new Error(`SimpleTokenizer: word ${i} ${JSON.stringify(w)} must be a non-empty lower-case token without spaces`);
      if (this.index.has(w)) throw new Error(`SimpleTokenizer: word ${JSON.stringify(w)} appears twice`);
      this.index.set(w, SIMPLE_SPECIAL_TOKENS.length + i);
    });
  }

  /** Vocabulary size including the four special tokens. */
  get vocabSize(): number {
    return SIMPLE_SPECIAL_TOKENS.length + this.words.length;
  }

  tokenize(text: string, warnings?: string[]): number[] {
    const ids: number[] = [];
    for (const m of cleanText(text).matchAll(/[\p{L}\p{N}]+|[^\s\p{L}\p{N}]/gu)) {
      const id = this.index.get(m[0]);
      if (id === undefined) warnings?.push(`word ${JSON.stringify(m[0])} is not in the vocabulary; using <unk>`);
      ids.push(id ?? this.unkId);
    }
    return ids;
  }

  encode(texts: string | string[], opts: EncodeOptions = {}): TokenizedBatch {
    return encodeBatch(this, this.index.get(","), texts, opts);
  }

  /** Ids back to words (special tokens by name), for display. */
  decode(ids: number[]): string[] {
    return ids.map((id) =>
      id < SIMPLE_SPECIAL_TOKENS.length ? SIMPLE_SPECIAL_TOKENS[id]! : (this.words[id - SIMPLE_SPECIAL_TOKENS.length] ?? "<unk>"),
    );
  }
}
