/**
 * The safetensors format: an 8-byte little-endian header length N, N bytes of JSON describing
 * every tensor (`dtype`, `shape`, `data_offsets` relative to the end of the header) and an
 * optional `__metadata__` map of strings, then the raw little-endian tensor bytes.
 *
 * The reader opens the file, parses and validates the header, and reads each tensor on request
 * at its offset — a 4 GB checkpoint is never held in one Buffer. Nothing in the file can make the
 * reader allocate more than the header (capped) or one tensor at a time (bounded by the file size).
 */
import * as fs from "node:fs";
import { withOpenFile } from "./open";
import { writeFileAtomic, type WriteOptions } from "./atomic";
import { CorruptFileError, UnsupportedFileError } from "./errors";
import { DTYPE_BYTES, type DType, type HostTensor, decodeTensor, encodeTensor } from "./host-tensor";
import { JsonFloat, JsonReader, type StrictJson, StrictJsonError } from "./strict-json";

/** Largest JSON header accepted (the reference implementation uses the same 100 MB cap). */
export const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry in the header. */
export interface SafetensorsEntry {
  dtype: DType;
  shape: number[];
  /** Absolute byte range of the data in the file: [begin, end). */
  begin: number;
  end: number;
}

const KNOWN_DTYPES = new Set<string>(Object.keys(DTYPE_BYTES));

/** A safetensors file opened for reading tensor by tensor. Call `close()` when done. */
export class SafetensorsFile {
  /** Tensor entries in the order the header lists them. */
  readonly entries: Map<string, SafetensorsEntry>;
  /** The `__metadata__` strings (empty when absent). */
  readonly metadata: Record<string, string>;
  private fd: number | undefined;

  private constructor(
    readonly file: string,
    fd: number,
    entries: Map<string, SafetensorsEntry>,
    metadata: Record<string, string>,
  ) {
    this.fd = fd;
    this.entries = entries;
    this.metadata = metadata;
  }

  /** Open `file` and validate its header; throws an error naming the file and the problem. */
  static open(file: string): SafetensorsFile {
    return withOpenFile(file, (fd) => {
      const { entries, metadata } = parseHeader(file, fd);
      return new SafetensorsFile(file, fd, entries, metadata);
    });
  }

  /** Names of all tensors, in header order. */
  keys(): string[] {
    return [...this.entries.keys()];
  }

  /** Read one tensor (floats widened to float32). */
  read(name: string): HostTensor {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.file}: no tensor named "${name}"`);
    if (this.fd === undefined) throw new Error(`${this.file}: file already closed`);
    const bytes = Buffer.allocUnsafe(e.end - e.begin);
    if (!readFully(this.fd, bytes, e.begin)) throw new CorruptFileError(this.file, `tensor "${name}" is truncated (file ended early)`);
    return decodeTensor(bytes, e.dtype, e.shape, `${this.file}: tensor "${name}"`);
  }

  /** Read every tensor into a map (for small files; large ones should use `read` one by one). */
  readAll(): Map<string, HostTensor> {
    const out = new Map<string, HostTensor>();
    for (const k of this.entries.keys()) out.set(k, this.read(k));
    return out;
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

/** dtypes the format defines that this reader does not decode (refused as unsupported, not corrupt). */
const OTHER_FORMAT_DTYPES = new Set(["U16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"]);

/**
 * Header entries (tensors plus metadata keys) allowed without further question. Past this, each
 * entry must be backed by `MIN_BYTES_PER_ENTRY` data bytes on average: a real checkpoint's tensors
 * are kilobytes to megabytes each, while a header of a million empty tensors costs hundreds of
 * bytes of memory per entry and holds nothing.
 */
export const FREE_HEADER_ENTRIES = 10_000;
/** See `FREE_HEADER_ENTRIES`. */
export const MIN_BYTES_PER_ENTRY = 64;

/**
 * Read and validate the header, as strictly as the reference reader (the Rust `safetensors`
 * crate): the JSON must be valid UTF-8 with no duplicate keys; every shape entry and offset a
 * whole non-negative number written without fraction or exponent; and the tensors' byte ranges,
 * sorted, must tile the data section exactly — starting at 0, each beginning where the previous
 * ends, the last ending at the end of the file (no gaps, no overlaps, no trailing bytes).
 * One pass over the header bytes; stops at the first problem, naming the tensor.
 */
function parseHeader(file: string, fd: number): { entries: Map<string, SafetensorsEntry>; metadata: Record<string, string> } {
  const size = fs.fstatSync(fd).size;
  const bad = (what: string): Error => new CorruptFileError(file, `not a valid safetensors file: ${what}`);
  if (size < 8) throw bad(`only ${size} bytes long`);
  const lenBuf = Buffer.alloc(8);
  fs.readSync(fd, lenBuf, 0, 8, 0);
  const headerLen = lenBuf.readBigUInt64LE(0);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) throw bad(`header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const hlen = Number(headerLen);
  if (8 + hlen > size) throw bad(`header length ${hlen} runs past the end of the ${size}-byte file`);
  const hbuf = Buffer.alloc(hlen);
  if (!readFully(fd, hbuf, 8)) throw bad("the file ended while its header was being read");
  const dataStart = 8 + hlen;
  const dataLen = size - dataStart;
  const maxEntries = Math.max(FREE_HEADER_ENTRIES, Math.floor(dataLen / MIN_BYTES_PER_ENTRY));
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> | undefined;
  let metaCount = 0;
  const ranges: Array<[number, number, string]> = [];
  const r = new JsonReader(hbuf);
  let key: string | undefined;
  try {
    r.expect("{");
    if (r.peek() === 0x7d) r.pos++;
    else {
      do {
        key = undefined;
        const at = r.pos;
        const name = r.string();
        if (entries.has(name) || (name === "__metadata__" && metadata !== undefined)) {
          throw bad(
            `${name === "__metadata__" ? "__metadata__" : `tensor "${name}"`} appears twice in the header (at byte ${8 + at}); the reference reader refuses such files`,
          );
        }
        key = name;
        r.expect(":");
        const value = r.value(1);
        if (name === "__metadata__") {
          metadata = readMetadata(value, bad);
          metaCount = Object.keys(metadata).length;
        } else {
          const e = readEntry(file, name, value, dataStart, dataLen, bad);
          entries.set(name, e);
          ranges.push([e.begin - dataStart, e.end - dataStart, name]);
        }
        if (entries.size + metaCount > maxEntries) {
          throw bad(
            `the header lists more than ${maxEntries} entries for ${dataLen} bytes of data; past ${FREE_HEADER_ENTRIES} entries each needs ${MIN_BYTES_PER_ENTRY} data bytes on average (a file of mostly empty tensors costs memory and holds nothing)`,
          );
        }
      } while (r.more("}"));
    }
    r.end();
  } catch (err) {
    if (err instanceof StrictJsonError) {
      throw bad(
        `header is not strict JSON: ${err.reason} at header byte ${err.offset}${key !== undefined ? ` (in the entry for "${key}")` : ""}`,
      );
    }
    throw err;
  }
  checkTiling(ranges, dataLen, bad);
  return { entries, metadata: metadata ?? {} };
}

/** Fill `buf` from `position`; false if the file ends first. */
function readFully(fd: number, buf: Buffer, position: number): boolean {
  let got = 0;
  while (got < buf.byteLength) {
    const n = fs.readSync(fd, buf, got, buf.byteLength - got, position + got);
    if (n === 0) return false;
    got += n;
  }
  return true;
}

function readMetadata(v: StrictJson, bad: (what: string) => Error): Record<string, string> {
  if (v === null) return {}; // the reference reader treats a null __metadata__ as absent
  if (!(v instanceof Map)) throw bad("__metadata__ is not an object of strings");
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [k, s] of v) {
    if (typeof s !== "string") throw bad(`__metadata__["${k}"] is not a string`);
    out[k] = s;
  }
  return out;
}

/** A non-negative integer written as one (no fraction, no exponent), within 2^53 − 1. */
function wholeNumber(v: StrictJson | undefined): number | undefined {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0 && !Object.is(v, -0) ? v : undefined;
}

function describeJson(v: StrictJson | undefined): string {
  if (v === undefined) return "missing";
  if (v instanceof JsonFloat) return `${v.value} (written as a fraction or exponent)`;
  if (typeof v === "bigint") return `${v} (larger than 2^53 - 1)`;
  if (v instanceof Map) return "an object";
  if (Array.isArray(v)) return `[${v.map((x) => describeJson(x)).join(", ")}]`;
  return JSON.stringify(v);
}

function readEntry(
  file: string,
  name: string,
  v: StrictJson,
  dataStart: number,
  dataLen: number,
  bad: (what: string) => Error,
): SafetensorsEntry {
  if (!(v instanceof Map)) throw bad(`entry "${name}" is not an object`);
  const dt = v.get("dtype");
  if (typeof dt !== "string" || !KNOWN_DTYPES.has(dt)) {
    if (typeof dt === "string" && OTHER_FORMAT_DTYPES.has(dt))
      throw new UnsupportedFileError(file, `tensor "${name}" has dtype ${dt}, which this reader does not decode`);
    throw bad(`tensor "${name}" has unknown dtype ${describeJson(dt)}`);
  }
  const dtype = dt as DType;
  const rawShape = v.get("shape");
  const shape = Array.isArray(rawShape) ? rawShape.map(wholeNumber) : undefined;
  if (!shape || shape.some((d) => d === undefined)) {
    throw bad(`tensor "${name}" has shape ${describeJson(rawShape)}; a shape is a list of whole numbers >= 0`);
  }
  const rawOffsets = v.get("data_offsets");
  const offsets = Array.isArray(rawOffsets) && rawOffsets.length === 2 ? rawOffsets.map(wholeNumber) : undefined;
  if (!offsets || offsets.some((d) => d === undefined)) {
    throw bad(`tensor "${name}" has data_offsets ${describeJson(rawOffsets)}; they are two whole numbers [begin, end]`);
  }
  const [b, e] = offsets as [number, number];
  if (e < b || e > dataLen) throw bad(`tensor "${name}" data [${b}, ${e}) lies outside the ${dataLen} data bytes`);
  // Element count, stopping as soon as it exceeds what the range could hold (no overflow).
  const width = DTYPE_BYTES[dtype];
  let n = shape.includes(0) ? 0 : 1;
  for (const d of shape as number[]) {
    if (n === 0 || n * width > e - b) break;
    n *= d;
  }
  if (n * width !== e - b)
    throw bad(`tensor "${name}" is ${dtype} [${shape.join(", ")}] but its data range [${b}, ${e}) holds ${e - b} bytes`);
  return { dtype, shape: shape as number[], begin: dataStart + b, end: dataStart + e };
}

/** The byte ranges, sorted, must cover [0, dataLen) exactly, end to end. */
function checkTiling(ranges: Array<[number, number, string]>, dataLen: number, bad: (what: string) => Error): void {
  ranges.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let at = 0;
  let prev: string | undefined;
  for (const [b, e, name] of ranges) {
    if (b > at) {
      throw bad(
        `${b - at} unused bytes before tensor "${name}" (data [${b}, ${e}); ${prev === undefined ? "the data section starts at 0" : `"${prev}" ends at ${at}`}); tensors must be stored end to end`,
      );
    }
    if (b < at) throw bad(`tensors "${prev}" and "${name}" overlap (data ending at ${at} and data [${b}, ${e}))`);
    at = e;
    prev = name;
  }
  if (at !== dataLen)
    throw bad(`${dataLen - at} bytes after the last tensor's data (the data section is ${dataLen} bytes, the tensors end at ${at})`);
}

/** Read a whole (small) safetensors file: tensors and metadata. */
export function readSafetensors(file: string): { tensors: Map<string, HostTensor>; metadata: Record<string, string> } {
  const f = SafetensorsFile.open(file);
  try {
    return { tensors: f.readAll(), metadata: { ...f.metadata } };
  } finally {
    f.close();
  }
}

/**
 * Write tensors (in the given order) and string metadata as a safetensors file, atomically.
 * Each tensor is stored in its own `dtype` (pass a different one in `dtypes` to convert).
 */
export function writeSafetensors(
  file: string,
  tensors: Iterable<[string, HostTensor]>,
  metadata: Record<string, string> = {},
  opts: WriteOptions = {},
): void {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    if (name === "__metadata__") throw new Error(`${file}: a tensor cannot be named __metadata__`);
    const bytes = encodeTensor(t);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] };
    blobs.push(bytes);
    offset += bytes.byteLength;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts on an 8-byte boundary (as the reference writer does).
  const pad = (8 - (Buffer.byteLength(json) % 8)) % 8;
  json += " ".repeat(pad);
  const hbytes = Buffer.from(json, "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hbytes.byteLength));
  writeFileAtomic(file, [len, hbytes, ...blobs], opts);
}
