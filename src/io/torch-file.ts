/**
 * PyTorch `.pt` / `.ckpt` files without PyTorch.
 *
 * Two container formats exist:
 * - **zip** (torch ≥ 1.6): a ZIP archive with one top-level folder; `data.pkl` holds the pickled
 *   object, `data/<key>` the raw bytes of each storage, `version` the format version.
 * - **legacy** (older torch, or `_use_new_zipfile_serialization=False`): five pickles back to back —
 *   magic number, protocol version (1001), system info, the object, the sorted list of storage
 *   keys — then each storage as an 8-byte little-endian element count followed by its bytes.
 *
 * In both, tensors are pickled as calls to `torch._utils._rebuild_tensor_v2(storage, offset, size,
 * stride, …)` where `storage` is a persistent id naming a storage record. The safe unpickler
 * (`pickle.ts`) turns those into lazy `TorchTensor`s that read their bytes only when asked, so a
 * multi-GB checkpoint can be walked tensor by tensor.
 */
import * as fs from "node:fs";
import { withOpenFile } from "./open";
import * as path from "node:path";
import { writeFileAtomic } from "./atomic";
import { CorruptFileError, UnsupportedFileError } from "./errors";
import { DTYPE_BYTES, type HostTensor, describedTensor, encodeTensor } from "./host-tensor";
import { type StorageHandle, type StorageRequest, StorageTensor, TruncatedPickleError, pickleTorch, unpickle } from "./pickle";
import { PyDict, type PyKey, PyTuple, type PyValue, type TorchTensor, isTorchTensor } from "./pyvalue";
import { ReadBudget } from "./view-budget";
import { ZipReader, readAt, zipChunks, type ZipSource } from "./zip";

export { CorruptFileError, UnsafePickleError, UnsupportedFileError } from "./errors";
export { StorageTensor } from "./pickle";

/** The magic number that starts a legacy torch file (its first pickle). */
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;
/** Most bytes read at once while looking for the end of the legacy pickles. */
const LEGACY_PICKLE_LIMIT = 1 << 30;

export interface OpenTorchOptions {
  /**
   * Zip format: storages up to this many bytes are CRC-checked when a tensor reads them whole
   * (default 256 MiB; `Infinity` checks all, 0 none). `data.pkl` is always checked.
   */
  crcLimit?: number;
}

/** An opened torch file: the unpickled value with lazy tensors. Call `close()` when done. */
export interface TorchFile {
  readonly file: string;
  readonly format: "zip" | "legacy";
  /** The object `torch.save` was given; tensors are `TorchTensor`s reading from this file. */
  readonly root: PyValue;
  /** Release the file; tensors cannot be read afterwards. */
  close(): void;
}

/**
 * Open a torch file, unpickle its object safely and return it with lazy tensors.
 * Throws UnsafePickleError if the pickle reaches for anything but tensors and plain containers,
 * CorruptFileError for damaged files, UnsupportedFileError for valid but unhandled features.
 */
export function openTorchFile(file: string, opts: OpenTorchOptions = {}): TorchFile {
  return withOpenFile(file, (fd) => {
    const size = fs.fstatSync(fd).size;
    const head = readAt(file, fd, 0, Math.min(4, size));
    if (head.length === 4 && head.readUInt32LE(0) === 0x04034b50) return openZip(file, fd, opts);
    if (head[0] === 0x80) return openLegacy(file, fd, size);
    throw new CorruptFileError(file, "not a torch file: it is neither a zip archive (torch ≥ 1.6) nor a legacy torch pickle");
  });
}

/**
 * Read a (small) torch file whole: like `openTorchFile`, with every tensor read into a HostTensor.
 * Reading is held to the file's expansion budget (`view-budget.ts`): views that would decode to far
 * more than the file holds are refused with an error naming the file and the tensor.
 */
export function readTorchFile(file: string): PyValue {
  const f = openTorchFile(file);
  try {
    return materialize(f.root);
  } finally {
    f.close();
  }
}

/**
 * Read a torch file's structure without reading any tensor values: every tensor becomes a
 * `describedTensor` (dtype and shape only; its `data` throws). For listing a file — `inspect`,
 * parameter counts — at a cost set by the pickle's size, whatever sizes its views describe.
 * Views are still checked to lie inside their storages and storages against their records.
 */
export function describeTorchFile(file: string): PyValue {
  const f = openTorchFile(file);
  try {
    return copyWithTensors(f.root, (t, name) => describedTensor(t.dtype, [...t.shape], `${file}: tensor "${name}"`), new Map(), "");
  } finally {
    f.close();
  }
}

/**
 * Copy a value, replacing each lazy tensor by its data (shared sub-values stay shared). Each tensor
 * is read under the name of its path of keys from the root (`768/0/linear.0.weight`,
 * `state_dict/model.x.weight`), which errors — e.g. a refused expansion — quote.
 */
export function materialize(v: PyValue, seen = new Map<object, PyValue>()): PyValue {
  return copyWithTensors(v, (t, name) => (t instanceof StorageTensor ? t.read(name) : t.read()), seen, "");
}

function copyWithTensors(v: PyValue, tensor: (t: TorchTensor, name: string) => PyValue, seen: Map<object, PyValue>, name: string): PyValue {
  if (v === null || typeof v !== "object" || v instanceof Uint8Array) return v;
  const hit = seen.get(v);
  if (hit !== undefined) return hit;
  const sub = (k: PyKey | number): string => (name === "" ? String(k) : `${name}/${String(k)}`);
  let out: PyValue;
  if (isTorchTensor(v)) out = tensor(v, name === "" ? "(root)" : name);
  else if (Array.isArray(v)) {
    const arr: PyValue[] = [];
    seen.set(v, arr);
    v.forEach((x, i) => arr.push(copyWithTensors(x, tensor, seen, sub(i))));
    return arr;
  } else if (v instanceof PyTuple) out = new PyTuple(v.items.map((x, i) => copyWithTensors(x, tensor, seen, sub(i))));
  else if (v instanceof PyDict) {
    const d = new PyDict(v.kind);
    seen.set(v, d);
    for (const [k, x] of v.map) d.map.set(k, copyWithTensors(x, tensor, seen, sub(k)));
    if (v.state !== undefined) d.state = copyWithTensors(v.state, tensor, seen, sub("(state)"));
    return d;
  } else out = v;
  seen.set(v, out);
  return out;
}

// ---- zip format ---------------------------------------------------------------------------------

function openZip(file: string, fd: number, opts: OpenTorchOptions): TorchFile {
  const zip = ZipReader.fromFd(file, fd, { crcLimit: opts.crcLimit });
  const first = zip.entries[0];
  const slash = first ? first.name.indexOf("/") : -1;
  if (!first || slash <= 0) throw new CorruptFileError(file, "zip archive has no top-level folder, so it is not a torch file");
  const prefix = first.name.slice(0, slash + 1);
  const pkl = zip.entry(`${prefix}data.pkl`);
  if (!pkl) throw new CorruptFileError(file, `no "${prefix}data.pkl" record: this zip is not a torch file`);
  if (pkl.size > LEGACY_PICKLE_LIMIT) throw new CorruptFileError(file, `data.pkl is ${pkl.size} bytes, implausibly large`);

  const storages = new Map<string, StorageHandle>();
  const budget = new ReadBudget(file, zip.fileSize);
  const persistentLoad = (req: StorageRequest): StorageHandle => {
    const known = storages.get(req.key);
    if (known) {
      if (known.dtype !== req.dtype || known.numel !== req.numel) {
        throw new CorruptFileError(file, `storage "${req.key}" is described twice with different types or sizes`);
      }
      return known;
    }
    const name = `${prefix}data/${req.key}`;
    const entry = zip.entry(name);
    if (!entry) throw new CorruptFileError(file, `storage record "${name}" is missing`);
    const es = DTYPE_BYTES[req.dtype];
    if (req.numel * es !== entry.size) {
      throw new CorruptFileError(
        file,
        `storage "${req.key}" claims ${req.numel} ${req.dtype} elements (${req.numel * es} bytes) but its record holds ${entry.size} bytes`,
      );
    }
    const handle: StorageHandle = {
      key: req.key,
      dtype: req.dtype,
      numel: req.numel,
      file,
      budget,
      readElements: (start, count) => (start === 0 && count === req.numel ? zip.read(entry) : zip.readRange(entry, start * es, count * es)),
    };
    storages.set(req.key, handle);
    return handle;
  };
  const pickle = zip.read(pkl, true);
  const { value, end } = unpickle(pickle, 0, { file, persistentLoad });
  if (end !== pickle.length) throw new CorruptFileError(file, `data.pkl has ${pickle.length - end} bytes after the end of the pickle`);
  return { file, format: "zip", root: value, close: () => zip.close() };
}

// ---- legacy format ------------------------------------------------------------------------------

function openLegacy(file: string, fd: number, size: number): TorchFile {
  // The pickles come first and are small; read a prefix and grow it if a pickle runs past it. A
  // pickle that claims more bytes than the file has is refused before anything that size is read,
  // and each retry reads at least what the failed read asked for, so memory follows the file.
  let prefixLen = Math.min(size, 1 << 20);
  for (;;) {
    const prefix = readAt(file, fd, 0, prefixLen);
    try {
      return parseLegacy(file, fd, size, prefix);
    } catch (err) {
      if (!(err instanceof TruncatedPickleError) || prefixLen >= Math.min(size, LEGACY_PICKLE_LIMIT)) throw err;
      if (!(err.needed <= size)) {
        throw new CorruptFileError(
          file,
          `${err.detail}; the file is only ${size} bytes long, so the pickle is damaged or its lengths are forged`,
        );
      }
      if (err.needed > LEGACY_PICKLE_LIMIT) {
        throw new UnsupportedFileError(
          file,
          `the legacy pickle needs ${err.needed} bytes before its storages, more than the ${LEGACY_PICKLE_LIMIT}-byte limit for a pickle`,
        );
      }
      prefixLen = Math.min(size, LEGACY_PICKLE_LIMIT, Math.max(prefixLen * 8, err.needed));
    }
  }
}

function parseLegacy(file: string, fd: number, size: number, data: Buffer): TorchFile {
  const magic = unpickle(data, 0, { file });
  const m = magic.value;
  if ((typeof m !== "number" && typeof m !== "bigint") || BigInt(m) !== LEGACY_MAGIC) {
    throw new CorruptFileError(file, "not a torch file: starts with a pickle that is not torch's magic number");
  }
  const proto = unpickle(data, magic.end, { file });
  if (proto.value !== LEGACY_PROTOCOL) {
    throw new UnsupportedFileError(file, `legacy torch protocol ${String(proto.value)} is not supported (only ${LEGACY_PROTOCOL})`);
  }
  const info = unpickle(data, proto.end, { file });
  if (info.value instanceof PyDict && info.value.get("little_endian") === false) {
    throw new UnsupportedFileError(file, "file was written on a big-endian machine; not supported");
  }

  // Storages: described while unpickling the object, located only after the key list is read.
  interface Pending {
    req: StorageRequest;
    start?: number; // absolute file offset of element 0 of the root storage
  }
  const roots = new Map<string, Pending>();
  const handles = new Map<string, StorageHandle>();
  const budget = new ReadBudget(file, size);
  let closed = false;
  const persistentLoad = (req: StorageRequest): StorageHandle => {
    const id = req.view ? `${req.view.key}` : req.key;
    const known = handles.get(id);
    if (known) return known;
    let root = roots.get(req.key);
    if (!root) roots.set(req.key, (root = { req }));
    else if (root.req.dtype !== req.dtype || root.req.numel !== req.numel) {
      throw new CorruptFileError(file, `storage "${req.key}" is described twice with different types or sizes`);
    }
    const base = req.view?.offset ?? 0;
    const numel = req.view?.numel ?? req.numel;
    if (base + numel > req.numel) throw new CorruptFileError(file, `storage view "${id}" runs past storage "${req.key}"`);
    const es = DTYPE_BYTES[req.dtype];
    const r = root;
    const handle: StorageHandle = {
      key: id,
      dtype: req.dtype,
      numel,
      file,
      budget,
      readElements: (start, count) => {
        if (closed) throw new Error(`${file}: file already closed`);
        if (r.start === undefined) throw new CorruptFileError(file, `storage "${req.key}" has no data in the file`);
        if (start < 0 || start + count > numel) throw new CorruptFileError(file, `read past the end of storage "${id}"`);
        return readAt(file, fd, r.start + (base + start) * es, count * es);
      },
    };
    handles.set(id, handle);
    return handle;
  };
  const obj = unpickle(data, info.end, { file, persistentLoad });
  const keys = unpickle(data, obj.end, { file });
  if (!Array.isArray(keys.value) || !keys.value.every((k) => typeof k === "string")) {
    throw new CorruptFileError(file, "legacy storage key list is not a list of strings");
  }

  // Walk the storage blobs in key order: [u64 count][count × element bytes] each.
  let pos = keys.end;
  for (const key of keys.value as string[]) {
    const root = roots.get(key);
    if (!root) throw new CorruptFileError(file, `storage "${key}" is listed but no tensor uses it`);
    if (pos + 8 > size) throw new CorruptFileError(file, `file ends before storage "${key}"`);
    const count = readAt(file, fd, pos, 8).readBigInt64LE(0);
    if (count !== BigInt(root.req.numel)) {
      throw new CorruptFileError(file, `storage "${key}" claims ${root.req.numel} elements but its record says ${count}`);
    }
    const bytes = root.req.numel * DTYPE_BYTES[root.req.dtype];
    root.start = pos + 8;
    pos = root.start + bytes;
    if (pos > size) throw new CorruptFileError(file, `storage "${key}" (${bytes} bytes) runs past the end of the file`);
  }
  for (const [key, root] of roots) {
    if (root.start === undefined) throw new CorruptFileError(file, `storage "${key}" is used but not stored in the file`);
  }
  return {
    file,
    format: "legacy",
    root: obj.value,
    close: () => {
      if (!closed) fs.closeSync(fd);
      closed = true;
    },
  };
}

// ---- writer -------------------------------------------------------------------------------------

export interface WriteTorchOptions {
  /** Top-level folder inside the zip (default: the target's basename without extension). */
  archiveName?: string;
  /** Replace an existing file (default false). */
  overwrite?: boolean;
}

/**
 * Write `value` as `torch.save` would (zip format, pickle protocol 2), atomically.
 *
 * Tensors (`HostTensor` or `TorchTensor`) are stored in their own dtype (F32 → FloatStorage,
 * F16 → HalfStorage, BF16 → BFloat16Storage, F64 → DoubleStorage, I64 → LongStorage, …), each in its
 * own storage at offset 0, contiguous, `requires_grad=False`. Python floats must be `PyFloat`s.
 */
export function writeTorchFile(file: string, value: PyValue, opts: WriteTorchOptions = {}): void {
  const archive = opts.archiveName ?? defaultArchiveName(file);
  if (!/^[A-Za-z0-9_.\- ]+$/.test(archive) || archive === "." || archive === "..") {
    throw new Error(`writeTorchFile: archive name "${archive}" must be a plain ASCII folder name`);
  }
  const { pickle, storages } = pickleTorch(value);
  const sources: ZipSource[] = [
    { name: `${archive}/data.pkl`, data: pickle },
    { name: `${archive}/.format_version`, data: Buffer.from("1") },
    { name: `${archive}/.storage_alignment`, data: Buffer.from("64") },
    { name: `${archive}/byteorder`, data: Buffer.from("little") },
  ];
  for (const s of storages) {
    sources.push({
      name: `${archive}/data/${s.key}`,
      data: () => {
        const host: HostTensor = isTorchTensor(s.tensor) ? s.tensor.read() : s.tensor;
        return encodeTensor(host, s.dtype);
      },
    });
  }
  sources.push({ name: `${archive}/version`, data: Buffer.from("3\n") });
  writeFileAtomic(file, zipChunks(sources), { overwrite: opts.overwrite });
}

/** torch's archive folder: the basename without extension, or `archive` when that is not plain ASCII. */
function defaultArchiveName(file: string): string {
  const base = path.basename(file, path.extname(file));
  return /^[A-Za-z0-9_.\- ]+$/.test(base) && base !== "." && base !== ".." ? base : "archive";
}

export type { StorageHandle } from "./pickle";

/** True for a tensor read from a file (with storage, offset and strides available). */
export function isStorageTensor(v: PyValue | undefined): v is StorageTensor {
  return v instanceof StorageTensor;
}
