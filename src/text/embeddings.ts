/**
 * Textual-inversion embeddings, read and looked up the way AUTOMATIC1111 1.10 does
 * (modules/textual_inversion/textual_inversion.py, `EmbeddingDatabase`):
 *
 * - Files: `.pt` and `.bin` are torch pickles (read with the safe reader, never executed), either
 *   A1111's layout `{"string_to_param": {"*": vec}, "name", "step", "sd_checkpoint", …}` or a
 *   diffusers concept `{token: vec}`; `.safetensors` holds one tensor (kohya's `emb_params`, or any
 *   single name). `vec` is `[vectors, width]`; a 1-D tensor is one vector. Images with embedded
 *   embeddings and SDXL embeddings (`clip_g`/`clip_l`) are not read.
 * - Name: the file name without its extension — what the prompt must contain. A1111 ignores the
 *   `name` stored in a `.pt` (it is kept here as `storedName`).
 * - Lookup: the name is tokenized like prompt text (no BOS/EOS); a prompt whose tokens contain that
 *   id sequence gets the embedding's vectors in its place, one token slot per vector. Longer names
 *   are tried first (`findAt`), so "red star" wins over "red" where both exist. With CLIP's
 *   tokenizer the match is case-insensitive, as in A1111.
 * - A folder is walked recursively; empty files are skipped; a name seen again replaces the earlier
 *   file (files are visited in case-insensitive path order; A1111 uses the file system's order).
 *   An embedding whose width differs from the text encoder's is skipped, as A1111 skips it; a file
 *   that cannot be read is listed with the reason, and the others still load.
 *
 * The `hash` is A1111's `shorthash` for embeddings (first 12 hex digits of the file's SHA-256),
 * which A1111 writes to the infotext as `TI hashes: "name: hash"`.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { SafetensorsFile } from "../io/safetensors";
import { openTorchFile } from "../io/torch-file";
import { PyDict, type PyValue, isTorchTensor, pyNumber } from "../io/pyvalue";
import type { DType } from "../io/host-tensor";
import type { Tokenizer } from "./tokenizer";

/** File extensions read as embeddings (compared case-insensitively). */
export const EMBEDDING_EXTENSIONS = [".pt", ".bin", ".safetensors"] as const;

/** Most vectors an embedding file may hold before it is refused unread (A1111's largest are ~75). */
export const MAX_EMBEDDING_VECTORS = 1024;

/** One textual-inversion embedding. */
export interface TextualInversionEmbedding {
  /** The word that calls it in a prompt: the file name without its extension. */
  name: string;
  /** `count × width` float32 values, one vector per token slot, row-major. */
  vectors: Float32Array;
  count: number;
  width: number;
  file: string;
  /** `"a1111"`: `string_to_param`; `"concept"`: one tensor (diffusers `{token: vec}`, `.safetensors`). */
  layout: "a1111" | "concept";
  /** What an A1111 `.pt` stores beside the vectors (null when absent). */
  storedName: string | null;
  step: number | null;
  sdCheckpoint: string | null;
  sdCheckpointName: string | null;
  /** A1111's short hash of the file (first 12 hex digits of its SHA-256). */
  hash: string;
}

const FLOAT_DTYPES: ReadonlySet<DType> = new Set<DType>(["F32", "F16", "BF16", "F64"]);

function refuse(file: string, what: string): Error {
  return new Error(`${file}: ${what}`);
}

/** Check a tensor's shape and dtype before reading it; returns [vectors, width]. */
function embeddingShape(file: string, key: string, dtype: DType, shape: readonly number[]): [number, number] {
  if (!FLOAT_DTYPES.has(dtype)) throw refuse(file, `tensor "${key}" is ${dtype}; an embedding holds float vectors`);
  if (shape.length === 1) return [1, shape[0]!];
  if (shape.length !== 2)
    throw refuse(file, `tensor "${key}" has shape [${shape.join(", ")}]; an embedding is [vectors, width] (or one vector [width])`);
  const [n, w] = shape as [number, number];
  if (n < 1 || w < 1) throw refuse(file, `tensor "${key}" has shape [${n}, ${w}], which holds no vectors`);
  if (n > MAX_EMBEDDING_VECTORS)
    throw refuse(file, `tensor "${key}" holds ${n} vectors, more than the ${MAX_EMBEDDING_VECTORS} an embedding can use`);
  return [n, w];
}

function stringOrNull(v: PyValue | undefined): string | null {
  return typeof v === "string" ? v : null;
}

/** A1111's `shorthash` of an embedding file. */
function embeddingHash(file: string): string {
  return createHash("sha256").update(fs.readFileSync(file)).digest("hex").slice(0, 12);
}

/** The vectors of an opened torch pickle, as A1111's `create_embedding_from_data` finds them. */
function fromTorch(file: string, root: PyValue): Omit<TextualInversionEmbedding, "name" | "file" | "hash"> {
  if (!(root instanceof PyDict))
    throw refuse(
      file,
      "not an embedding: the pickle holds no dict; expected A1111's {string_to_param: {*: tensor}} or a diffusers {token: tensor}",
    );
  const meta = {
    storedName: stringOrNull(root.get("name")),
    step: pyNumber(root.get("step")) ?? null,
    sdCheckpoint: stringOrNull(root.get("sd_checkpoint")),
    sdCheckpointName: stringOrNull(root.get("sd_checkpoint_name")),
  };
  let key: string;
  let tensor: PyValue | undefined;
  let layout: TextualInversionEmbedding["layout"];
  const params = root.get("string_to_param");
  if (params !== undefined) {
    if (!(params instanceof PyDict)) throw refuse(file, "string_to_param is not a dict of tensors");
    if (params.map.size !== 1)
      throw refuse(file, `string_to_param has ${params.map.size} terms; an embedding file holds exactly one (A1111 refuses it too)`);
    const [k, v] = [...params.map][0]!;
    key = `string_to_param.${String(k)}`;
    tensor = v;
    layout = "a1111";
  } else if (root.has("clip_g") && root.has("clip_l")) {
    throw refuse(file, "an SDXL embedding (clip_g and clip_l); this project runs SD 1.x, whose embeddings hold one tensor");
  } else {
    const first = [...root.map][0];
    if (!first || !isTorchTensor(first[1])) {
      throw refuse(file, "not an embedding: expected A1111's {string_to_param: {*: tensor}} or a diffusers concept {token: tensor}");
    }
    if (root.map.size !== 1) throw refuse(file, `holds ${root.map.size} entries; a diffusers concept holds exactly one {token: tensor}`);
    key = String(first[0]);
    tensor = first[1];
    layout = "concept";
  }
  if (!isTorchTensor(tensor)) throw refuse(file, `"${key}" is not a tensor`);
  const [count, width] = embeddingShape(file, key, tensor.dtype, tensor.shape);
  const vectors = Float32Array.from(tensor.read().data);
  return { vectors, count, width, layout, ...meta };
}

/** The one tensor of an embedding `.safetensors` file. */
function fromSafetensors(file: string): Omit<TextualInversionEmbedding, "name" | "file" | "hash"> {
  const st = SafetensorsFile.open(file);
  try {
    const keys = st.keys();
    if (keys.includes("clip_g") && keys.includes("clip_l"))
      throw refuse(file, "an SDXL embedding (clip_g and clip_l); this project runs SD 1.x, whose embeddings hold one tensor");
    if (keys.length !== 1)
      throw refuse(
        file,
        `holds ${keys.length} tensors (${keys.slice(0, 5).join(", ")}); an SD 1.x embedding holds exactly one (e.g. "emb_params")`,
      );
    const key = keys[0]!;
    const e = st.entries.get(key)!;
    const [count, width] = embeddingShape(file, key, e.dtype, e.shape);
    const vectors = Float32Array.from(st.read(key).data);
    return { vectors, count, width, layout: "concept", storedName: null, step: null, sdCheckpoint: null, sdCheckpointName: null };
  } finally {
    st.close();
  }
}

/**
 * Read one embedding file (`.pt`, `.bin` or `.safetensors`; see the module comment). Its name is the
 * file name without the extension unless `opts.name` is given. Errors name the file and what is
 * wrong with it.
 */
export function readEmbeddingFile(file: string, opts: { name?: string } = {}): TextualInversionEmbedding {
  const ext = path.extname(file).toLowerCase();
  if (!(EMBEDDING_EXTENSIONS as readonly string[]).includes(ext)) {
    throw refuse(file, `not an embedding file: expected one of ${EMBEDDING_EXTENSIONS.join(", ")}`);
  }
  if (!fs.existsSync(file)) throw refuse(file, "no such embedding file");
  let body: Omit<TextualInversionEmbedding, "name" | "file" | "hash">;
  if (ext === ".safetensors") {
    body = fromSafetensors(file);
  } else {
    let torchFile: ReturnType<typeof openTorchFile>;
    try {
      torchFile = openTorchFile(file);
    } catch (err) {
      const msg = (err as Error).message;
      if (/ParameterDict/.test(msg))
        throw refuse(
          file,
          `${msg.replace(`${file}: `, "")} — this embedding keeps its vectors in a torch.nn.ParameterDict (saved by torch 1.11 or older), which the safe reader does not build; re-save it as a plain dict (or .safetensors)`,
        );
      throw err;
    }
    try {
      body = fromTorch(file, torchFile.root);
    } finally {
      torchFile.close();
    }
  }
  const name = opts.name ?? path.basename(file, path.extname(file));
  if (!name.trim()) throw refuse(file, "an embedding needs a name: the file name (without extension) is what a prompt uses");
  return { name, file, hash: embeddingHash(file), ...body };
}

/** What `findAt` finds: the embedding, the token slots it takes, the prompt tokens its name spans (the shape `prompt-chunks.ts` expects). */
export interface EmbeddingAt {
  embedding: TextualInversionEmbedding;
  vectors: number;
  length: number;
}

/** A file that was found but not registered, and why. */
export interface EmbeddingProblem {
  file: string;
  name: string;
  reason: string;
}

/** Options of `EmbeddingDatabase` / `loadEmbeddings`. */
export interface EmbeddingDatabaseOptions {
  /** The text encoder's width (768 for SD 1.x): embeddings of another width are skipped. */
  width?: number;
}

/**
 * Embeddings by name, with A1111's token lookup. `findAt` fits `ChunkOptions.findEmbedding` of
 * `prompt-chunks.ts`, so the chunker places the vectors as A1111's `tokenize_line` does.
 */
export class EmbeddingDatabase {
  private readonly byName = new Map<string, { ids: number[]; embedding: TextualInversionEmbedding }>();
  private readonly lookup = new Map<number, { ids: number[]; embedding: TextualInversionEmbedding }[]>();
  /** Files that were read but not registered (width mismatch, a name the tokenizer cannot spell, too many vectors). */
  readonly skipped: EmbeddingProblem[] = [];
  /** Files that could not be read, with the error. */
  readonly errors: EmbeddingProblem[] = [];

  constructor(
    readonly tokenizer: Tokenizer,
    readonly opts: EmbeddingDatabaseOptions = {},
  ) {}

  /** Registered names, sorted case-insensitively (A1111's listing order). */
  get names(): string[] {
    return [...this.byName.keys()].sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
  }

  get size(): number {
    return this.byName.size;
  }

  /** The embedding registered as `name`, if any. */
  get(name: string): TextualInversionEmbedding | undefined {
    return this.byName.get(name)?.embedding;
  }

  /**
   * Add an embedding (replacing one of the same name). Returns false, and lists it in `skipped`,
   * when it cannot be used with this tokenizer and text encoder.
   */
  register(embedding: TextualInversionEmbedding): boolean {
    const skip = (reason: string): boolean => {
      this.skipped.push({ file: embedding.file, name: embedding.name, reason });
      return false;
    };
    if (this.opts.width !== undefined && embedding.width !== this.opts.width) {
      return skip(
        `its vectors are ${embedding.width} wide but the text encoder is ${this.opts.width} wide (an embedding for another model family)`,
      );
    }
    const chunk = this.tokenizer.maxLength - 2;
    if (embedding.count > chunk) return skip(`it has ${embedding.count} vectors, more than the ${chunk} token slots of a prompt chunk`);
    const ids = this.tokenizer.tokenize(embedding.name);
    const unk = (this.tokenizer as { unkId?: number }).unkId;
    if (ids.length === 0) return skip(`its name "${embedding.name}" gives no tokens, so no prompt can call it`);
    if (unk !== undefined && ids.includes(unk))
      return skip(`its name "${embedding.name}" has words the tokenizer does not know, so no prompt can call it; rename the file`);
    const old = this.byName.get(embedding.name);
    if (old) {
      const list = this.lookup.get(old.ids[0]!)!.filter((x) => x.embedding.name !== embedding.name);
      if (list.length) this.lookup.set(old.ids[0]!, list);
      else this.lookup.delete(old.ids[0]!);
    }
    const entry = { ids, embedding };
    this.byName.set(embedding.name, entry);
    const list = [...(this.lookup.get(ids[0]!) ?? []), entry];
    list.sort((a, b) => b.ids.length - a.ids.length); // stable: earlier registrations first among equals
    this.lookup.set(ids[0]!, list);
    return true;
  }

  /**
   * A1111's `find_embedding_at_position`: the longest registered name whose ids start at
   * `tokens[position]`, with how many vectors it takes and how many tokens it consumes.
   */
  findAt(tokens: readonly number[], position: number): EmbeddingAt | undefined {
    const candidates = this.lookup.get(tokens[position]!);
    if (!candidates) return undefined;
    for (const { ids, embedding } of candidates) {
      if (ids.every((id, i) => tokens[position + i] === id)) return { embedding, vectors: embedding.count, length: ids.length };
    }
    return undefined;
  }
}

/** Files under `dir` with an embedding extension, recursively, in case-insensitive path order. */
function embeddingFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, depth: number): void => {
    if (depth > 32) return;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const isDir = e.isDirectory() || (e.isSymbolicLink() && fs.statSync(p, { throwIfNoEntry: false })?.isDirectory());
      if (isDir) walk(p, depth + 1);
      else if ((EMBEDDING_EXTENSIONS as readonly string[]).includes(path.extname(e.name).toLowerCase())) out.push(p);
    }
  };
  walk(dir, 0);
  return out.sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
}

/**
 * Load every embedding in `dir` (recursively; see the module comment) for `tokenizer`. Files that
 * cannot be read are listed in `errors`, unusable ones in `skipped`; neither stops the others. A
 * missing folder is an error naming it.
 */
export function loadEmbeddings(dir: string, tokenizer: Tokenizer, opts: EmbeddingDatabaseOptions = {}): EmbeddingDatabase {
  const st = fs.statSync(dir, { throwIfNoEntry: false });
  if (!st)
    throw new Error(
      `embedding folder ${dir} does not exist; create it or pass the folder that holds your .pt/.bin/.safetensors embeddings`,
    );
  if (!st.isDirectory())
    throw new Error(`embedding folder ${dir} is a file, not a folder; pass the folder that holds it (or load it with readEmbeddingFile)`);
  const db = new EmbeddingDatabase(tokenizer, opts);
  for (const file of embeddingFiles(dir)) {
    const name = path.basename(file, path.extname(file));
    try {
      if (fs.statSync(file).size === 0) continue;
      db.register(readEmbeddingFile(file));
    } catch (err) {
      db.errors.push({ file, name, reason: (err as Error).message });
    }
  }
  return db;
}
