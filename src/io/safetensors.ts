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
import { DTYPE_BYTES, type DType, type HostTensor, decodeTensor, encodeTensor, numel } from "./host-tensor";

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
    let got = 0;
    while (got < bytes.byteLength) {
      const n = fs.readSync(this.fd, bytes, got, bytes.byteLength - got, e.begin + got);
      if (n === 0) throw new Error(`${this.file}: tensor "${name}" is truncated (file ended early)`);
      got += n;
    }
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

function parseHeader(file: string, fd: number): { entries: Map<string, SafetensorsEntry>; metadata: Record<string, string> } {
  const size = fs.fstatSync(fd).size;
  const bad = (what: string): Error => new Error(`${file}: not a valid safetensors file: ${what}`);
  if (size < 8) throw bad(`only ${size} bytes long`);
  const lenBuf = Buffer.alloc(8);
  fs.readSync(fd, lenBuf, 0, 8, 0);
  const headerLen = lenBuf.readBigUInt64LE(0);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) throw bad(`header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const hlen = Number(headerLen);
  if (8 + hlen > size) throw bad(`header length ${hlen} runs past the end of the ${size}-byte file`);
  const hbuf = Buffer.alloc(hlen);
  fs.readSync(fd, hbuf, 0, hlen, 8);
  let json: unknown;
  try {
    json = JSON.parse(hbuf.toString("utf8"));
  } catch (err) {
    throw bad(`header is not JSON (${(err as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw bad("header is not a JSON object");
  const dataStart = 8 + hlen;
  const dataLen = size - dataStart;
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  const ranges: Array<[number, number, string]> = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad("__metadata__ is not an object");
      for (const [k, v] of Object.entries(raw)) if (typeof v !== "string") throw bad(`__metadata__["${k}"] is not a string`);
      metadata = raw as Record<string, string>;
      continue;
    }
    const r = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof r !== "object" || r === null) throw bad(`entry "${name}" is not an object`);
    if (typeof r.dtype !== "string" || !KNOWN_DTYPES.has(r.dtype)) throw bad(`tensor "${name}" has unsupported dtype ${JSON.stringify(r.dtype)}`);
    const dtype = r.dtype as DType;
    if (!Array.isArray(r.shape) || !r.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad(`tensor "${name}" has an invalid shape`);
    const shape = r.shape as number[];
    if (!Array.isArray(r.data_offsets) || r.data_offsets.length !== 2 || !r.data_offsets.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw bad(`tensor "${name}" has invalid data_offsets`);
    }
    const [b, e] = r.data_offsets as [number, number];
    if (e < b || e > dataLen) throw bad(`tensor "${name}" data [${b}, ${e}) lies outside the ${dataLen} data bytes`);
    const n = numel(shape);
    if (!Number.isSafeInteger(n) || n * DTYPE_BYTES[dtype] !== e - b) {
      throw bad(`tensor "${name}" is ${dtype} [${shape.join(", ")}] but its data range holds ${e - b} bytes`);
    }
    entries.set(name, { dtype, shape, begin: dataStart + b, end: dataStart + e });
    ranges.push([b, e, name]);
  }
  ranges.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i]![0] < ranges[i - 1]![1]) throw bad(`tensors "${ranges[i - 1]![2]}" and "${ranges[i]![2]}" overlap`);
  }
  return { entries, metadata };
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
