/**
 * Hostile-file fuzzer for the readers: safetensors, torch `.pt`/`.ckpt` (zip and legacy), the
 * hypernetwork reader and the `.optim` side-file reader.
 *
 * Each case starts from a real file (the PyTorch fixtures, a generated `.ckpt`-style state dict,
 * a generated `.optim`), applies one structure-aware mutation, and feeds the result to EVERY reader.
 * A reader may load the file or refuse it with a clean error: one of the typed errors in
 * `src/io/errors.ts`, or a plain `Error` whose message names the file. Anything else is a finding:
 *
 * - `crash`: a TypeError/RangeError/… or an error that does not name the file;
 * - `hang`:  the reader used more than `hangMs` (1 s) of CPU time, or 10 × that of wall time, on a
 *            file of at most a few hundred KB;
 * - `alloc`: the reader asked for more than `allocBytes` (64 MiB) in one Buffer, or the heap and
 *            array buffers grew by more than that during the call;
 * - `bad-load`: the reader returned a tensor whose data length disagrees with its shape.
 *
 * Every case is reproducible from its case seed alone: `npm run fuzz -- --replay <caseSeed>`.
 *
 *   npm run fuzz -- --seed 1 --cases 10000 --seconds 600 [--out report.json]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as v8 from "node:v8";
import * as vm from "node:vm";
import { CorruptFileError, UnsafePickleError, UnsupportedFileError } from "../src/io/errors";
import type { HostTensor } from "../src/io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyValue } from "../src/io/pyvalue";
import { FREE_HEADER_ENTRIES, MIN_BYTES_PER_ENTRY, SafetensorsFile } from "../src/io/safetensors";
import { materialize, openTorchFile, readTorchFile, writeTorchFile } from "../src/io/torch-file";
import { ZipReader, zipChunks } from "../src/io/zip";
import { type HypernetworkFile, readHypernetworkFile, writeHypernetworkFile } from "../src/hypernet/file";
import { readOptimizerFile, writeOptimizerFile } from "../src/hypernet/optim-file";
import { runFiles } from "../src/train/run-files";
import type { OptimizerState } from "../src/train/optimizer-state";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import * as zlib from "node:zlib";
import sharp from "sharp";
import { DEFAULT_MAX_CAPTION_CHARS } from "../src/data/captions";
import { TrainingDataset } from "../src/data/dataset";
import { preprocess } from "../src/data/preprocess";

// ---- deterministic randomness -------------------------------------------------------------------

/** mulberry32: a small seeded PRNG, enough to make every case reproducible from one 32-bit seed. */
export function rng32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The seed of case `i` of a run seeded with `seed` (a hash, so neighbouring cases are unrelated). */
export function caseSeed(seed: number, i: number): number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(i + 1, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  return h >>> 0;
}

export class Rand {
  constructor(readonly next: () => number) {}
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** 32-bit values that tend to break size arithmetic. */
const HUGE32 = [0xffffffff, 0xfffffffe, 0x7fffffff, 0x80000000, 0x10000000, 0xffff, 0x10000];
/** 64-bit values that tend to break size arithmetic. */
const HUGE64 = [2n ** 64n - 1n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 53n, 2n ** 53n - 1n, 2n ** 40n, 2n ** 32n, 2n ** 31n, 100_000_001n];

// ---- seed corpus --------------------------------------------------------------------------------

type SeedKind = "zip" | "legacy" | "safetensors";
interface SeedFile {
  name: string;
  kind: SeedKind;
  ext: string;
  bytes: Buffer;
}

const FIXTURES = path.join(__dirname, "..", "test", "fixtures");

/** The files every mutation starts from: the PyTorch fixtures plus a generated `.ckpt` and `.optim`. */
export function seedCorpus(workDir: string, host: string): SeedFile[] {
  const seeds: SeedFile[] = [];
  for (const f of fs.readdirSync(FIXTURES).sort()) {
    const p = path.join(FIXTURES, f);
    // views-legit*: torch files whose tensors are broadcast (stride 0), overlapping and transposed views.
    if (/^(hn-.*|ldm-[ab]|views-legit)\.pt$/.test(f)) seeds.push({ name: f, kind: "zip", ext: ".pt", bytes: fs.readFileSync(p) });
    else if (f === "legacy-format.pt" || f === "views-legit-legacy.pt")
      seeds.push({ name: f, kind: "legacy", ext: ".pt", bytes: fs.readFileSync(p) });
    else if (f.endsWith(".safetensors") && fs.statSync(p).size < 1_000_000) {
      seeds.push({ name: f, kind: "safetensors", ext: ".safetensors", bytes: fs.readFileSync(p) });
    }
  }
  // A `.ckpt`-style file: {"state_dict": {LDM key: tensor}, "epoch": …, "global_step": …}.
  const t = (shape: number[], f: (i: number) => number): HostTensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    return { dtype: "F32", shape, data: Float32Array.from({ length: n }, (_, i) => f(i)) };
  };
  const sd = new PyDict("dict");
  sd.set(
    "model.diffusion_model.input_blocks.0.0.weight",
    t([4, 4, 3, 3], (i) => Math.sin(i)),
  );
  sd.set(
    "model.diffusion_model.input_blocks.0.0.bias",
    t([4], (i) => i / 4),
  );
  sd.set("cond_stage_model.transformer.text_model.embeddings.position_ids", {
    dtype: "I64",
    shape: [1, 8],
    data: Int32Array.from({ length: 8 }, (_, i) => i),
  });
  sd.set("first_stage_model.decoder.conv_out.weight", { ...t([3, 4, 1, 1], (i) => -i), dtype: "F16" });
  const ckpt = new PyDict("dict", [
    ["state_dict", sd],
    ["epoch", 6],
    ["global_step", 470000],
    ["lr", new PyFloat(1e-4)],
    ["callbacks", new PyTuple([null, true])],
  ]);
  const ckptFile = path.join(workDir, "seed.ckpt");
  writeTorchFile(ckptFile, ckpt, { overwrite: true });
  seeds.push({ name: "generated.ckpt", kind: "zip", ext: ".ckpt", bytes: fs.readFileSync(ckptFile) });
  // An `.optim` side file keyed to `host` (so the optimizer reader parses past its hash check).
  const optFile = writeOptimizerFile(
    host,
    {
      name: "AdamW",
      lr: 5e-3,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0.01,
      params: [
        { step: 3, expAvg: t([2, 3], (i) => i * 0.1), expAvgSq: t([2, 3], (i) => i * 0.01) },
        { step: 3, expAvg: t([2], (i) => i), expAvgSq: t([2], (i) => i * i) },
      ],
    },
    { overwrite: true },
  );
  seeds.push({ name: "generated.pt.optim", kind: "zip", ext: ".optim", bytes: fs.readFileSync(optFile) });
  fs.rmSync(optFile);
  // A hypernetwork `.safetensors` (this project's layout), for the width-alias mutation.
  const hnSt = path.join(workDir, "generated-hn.safetensors");
  writeHypernetworkFile(readHypernetworkFile(path.join(FIXTURES, "hn-plain121.pt")), hnSt, { overwrite: true });
  seeds.push({ name: "generated-hn.safetensors", kind: "safetensors", ext: ".safetensors", bytes: fs.readFileSync(hnSt) });
  return seeds;
}

// ---- structure walkers --------------------------------------------------------------------------

interface ZipLayout {
  eocd: number;
  z64rec?: number;
  z64loc?: number;
  central: Array<{ at: number; len: number; headerOffset: number }>;
}

/** Locate the end records and central-directory headers of an (intact) seed zip. */
function zipLayout(b: Buffer): ZipLayout {
  const eocd = b.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  const loc = eocd - 20;
  const z64loc = loc >= 0 && b.readUInt32LE(loc) === 0x07064b50 ? loc : undefined;
  const z64rec = z64loc !== undefined ? Number(b.readBigUInt64LE(z64loc + 8)) : undefined;
  const cdOffset = z64rec !== undefined ? Number(b.readBigUInt64LE(z64rec + 48)) : b.readUInt32LE(eocd + 16);
  const count = z64rec !== undefined ? Number(b.readBigUInt64LE(z64rec + 32)) : b.readUInt16LE(eocd + 10);
  const central: ZipLayout["central"] = [];
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    const len = 46 + b.readUInt16LE(p + 28) + b.readUInt16LE(p + 30) + b.readUInt16LE(p + 32);
    central.push({ at: p, len, headerOffset: b.readUInt32LE(p + 42) });
    p += len;
  }
  return { eocd, z64rec, z64loc, central };
}

interface PickleOp {
  pos: number;
  op: number;
  /** Where the length/value argument starts and how many bytes it has (not counting payload). */
  arg: number;
  argLen: number;
  /** Payload bytes after the argument (strings, bytes, long ints). */
  payload: number;
}

const FIXED_ARGS: Record<number, number> = {
  0x80: 1,
  0x4b: 1,
  0x68: 1,
  0x71: 1,
  0x4d: 2,
  0x4a: 4,
  0x6a: 4,
  0x72: 4,
  0x47: 8,
  0x95: 8,
  0x82: 1,
  0x83: 2,
  0x84: 4,
};
/** Opcodes whose argument is a length followed by that many bytes: opcode → length-field size. */
const LENGTH_OPS: Record<number, number> = {
  0x58: 4,
  0x42: 4,
  0x54: 4,
  0x8b: 4,
  0x8c: 1,
  0x43: 1,
  0x55: 1,
  0x8a: 1,
  0x8d: 8,
  0x8e: 8,
  0x96: 8,
};
const LINE_OPS: Record<number, number> = { 0x63: 2, 0x69: 2, 0x49: 1, 0x4c: 1, 0x46: 1, 0x53: 1, 0x56: 1, 0x50: 1, 0x67: 1, 0x70: 1 };

/** Disassemble one pickle starting at `start`: every opcode with its argument span, up to STOP. */
function disassemble(b: Uint8Array, start: number): { ops: PickleOp[]; end: number } {
  const ops: PickleOp[] = [];
  let p = start;
  while (p < b.length) {
    const op = b[p]!;
    const rec: PickleOp = { pos: p, op, arg: p + 1, argLen: 0, payload: 0 };
    p++;
    if (op in FIXED_ARGS) rec.argLen = FIXED_ARGS[op]!;
    else if (op in LENGTH_OPS) {
      const n = LENGTH_OPS[op]!;
      rec.argLen = n;
      const dv = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
      rec.payload = n === 1 ? b[p]! : n === 4 ? dv.readUInt32LE(p) : Number(dv.readBigUInt64LE(p));
    } else if (op in LINE_OPS) {
      let q = p;
      for (let k = 0; k < LINE_OPS[op]!; k++) q = b.indexOf(0x0a, q) + 1;
      rec.argLen = q - p;
    }
    p += rec.argLen + rec.payload;
    ops.push(rec);
    if (op === 0x2e) break;
  }
  return { ops, end: p };
}

// ---- mutations ----------------------------------------------------------------------------------

type Mutation = (seed: SeedFile, r: Rand) => Buffer;

function bitflip(b: Buffer, r: Rand, lo = 0, hi = b.length): Buffer {
  const out = Buffer.from(b);
  for (let k = r.range(1, 16); k > 0; k--) {
    const i = lo + r.int(hi - lo);
    out[i]! ^= 1 << r.int(8);
  }
  return out;
}

function overwrite(b: Buffer, r: Rand): Buffer {
  const out = Buffer.from(b);
  for (let k = r.range(1, 4); k > 0; k--) {
    const at = r.int(out.length);
    const v = r.pick([0x00, 0xff, 0x7f, 0x80, -1]);
    for (let j = r.range(1, 8); j > 0 && at + j - 1 < out.length; j--) out[at + j - 1] = v < 0 ? r.int(256) : v;
  }
  return out;
}

function truncate(b: Buffer, r: Rand): Buffer {
  const cut = r.chance(0.3) ? b.length - r.range(1, Math.min(200, b.length)) : r.int(b.length);
  return Buffer.from(b.subarray(0, cut));
}

function splice(b: Buffer, r: Rand): Buffer {
  const from = r.int(b.length);
  const len = r.range(1, 256);
  const to = r.int(b.length);
  const chunk = b.subarray(from, from + len);
  return r.chance(0.5)
    ? Buffer.concat([b.subarray(0, to), chunk, b.subarray(to)])
    : Buffer.concat([b.subarray(0, to), chunk, b.subarray(Math.min(b.length, to + chunk.length))]);
}

/** Zip: set a size/offset/length field of a central or local header to a hostile value. */
function zipField(seed: SeedFile, r: Rand): Buffer {
  const b = Buffer.from(seed.bytes);
  const L = zipLayout(b);
  const e = r.pick(L.central);
  const v = r.chance(0.2) ? b.length + r.range(-64, 64) : r.pick(HUGE32);
  const field = r.pick(["csize", "usize", "both", "offset", "namelen", "extralen", "local-namelen", "local-extralen"]);
  const w32 = (at: number) => b.writeUInt32LE(v >>> 0, at);
  const w16 = (at: number) => b.writeUInt16LE(v & 0xffff, at);
  if (field === "csize") w32(e.at + 20);
  else if (field === "usize") w32(e.at + 24);
  else if (field === "both") {
    w32(e.at + 20);
    w32(e.at + 24);
  } else if (field === "offset") w32(e.at + 42);
  else if (field === "namelen") w16(e.at + 28);
  else if (field === "extralen") w16(e.at + 30);
  else if (field === "local-namelen") w16(e.headerOffset + 26);
  else w16(e.headerOffset + 28);
  return b;
}

/** Zip: hostile end records (entry counts, directory size/offset, comment length). */
function zipEnd(seed: SeedFile, r: Rand): Buffer {
  const b = Buffer.from(seed.bytes);
  const { eocd } = zipLayout(b);
  const at = eocd + r.pick([8, 10, 12, 16, 20, 4, 6]);
  if (at >= eocd + 12 && at < eocd + 20) b.writeUInt32LE(r.pick(HUGE32) >>> 0, at);
  else b.writeUInt16LE(r.pick([0xffff, 0, 1, 0x8000, r.int(0x10000)]), at);
  return b;
}

/** Zip: ZIP64 records — huge 64-bit counts/sizes/offsets, a moved locator, announced-but-absent ZIP64. */
function zip64(seed: SeedFile, r: Rand): Buffer {
  const b = Buffer.from(seed.bytes);
  const L = zipLayout(b);
  const big = r.chance(0.3) ? BigInt(b.length + r.range(-100, 100)) : r.pick(HUGE64);
  const choice = r.int(5);
  if (choice === 0 && L.z64rec !== undefined) b.writeBigUInt64LE(big, L.z64rec + r.pick([24, 32, 40, 48, 4]));
  else if (choice === 1 && L.z64loc !== undefined) b.writeBigUInt64LE(big, L.z64loc + 8);
  else if (choice === 2 && L.z64loc !== undefined)
    b.writeUInt32LE(0, L.z64loc); // drop the locator signature
  else if (choice === 3) {
    // 32-bit fields say "see ZIP64" but the entry has no ZIP64 extra field (or one that is too short).
    const e = r.pick(L.central);
    b.writeUInt32LE(0xffffffff, e.at + r.pick([20, 24, 42]));
  } else {
    const e = r.pick(L.central);
    // Give the entry a ZIP64 extra field by overwriting its (padding) extra with id 1.
    const nameLen = b.readUInt16LE(e.at + 28);
    const extraLen = b.readUInt16LE(e.at + 30);
    if (extraLen >= 4) {
      b.writeUInt16LE(1, e.at + 46 + nameLen);
      if (extraLen >= 12) b.writeBigUInt64LE(big, e.at + 46 + nameLen + 4);
    } else {
      b.writeUInt32LE(0xffffffff, e.at + 20);
      b.writeUInt32LE(0xffffffff, e.at + 24);
    }
  }
  return b;
}

/** Zip: duplicated directory records (same name, or a new name aliasing the same bytes) and overlaps. */
function zipDuplicate(seed: SeedFile, r: Rand): Buffer {
  const b = Buffer.from(seed.bytes);
  const L = zipLayout(b);
  const e = r.pick(L.central);
  if (r.chance(0.35)) {
    // Point this entry's header offset at another entry's header: two names, one blob.
    const other = r.pick(L.central);
    b.writeUInt32LE(other.headerOffset, e.at + 42);
    return b;
  }
  const copy = Buffer.from(b.subarray(e.at, e.at + e.len));
  if (r.chance(0.5)) copy[46 + copy.readUInt16LE(28) - 1]! ^= 0x01; // different name, same data
  const insertAt = e.at + e.len;
  const out = Buffer.concat([b.subarray(0, insertAt), copy, b.subarray(insertAt)]);
  const shift = copy.length;
  const eocd = L.eocd + shift;
  out.writeUInt16LE(out.readUInt16LE(eocd + 8) + 1, eocd + 8);
  out.writeUInt16LE(out.readUInt16LE(eocd + 10) + 1, eocd + 10);
  out.writeUInt32LE(out.readUInt32LE(eocd + 12) + shift, eocd + 12);
  if (L.z64rec !== undefined && L.z64loc !== undefined) {
    const rec = L.z64rec + shift;
    out.writeBigUInt64LE(out.readBigUInt64LE(rec + 24) + 1n, rec + 24);
    out.writeBigUInt64LE(out.readBigUInt64LE(rec + 32) + 1n, rec + 32);
    out.writeBigUInt64LE(out.readBigUInt64LE(rec + 40) + BigInt(shift), rec + 40);
    out.writeBigUInt64LE(BigInt(rec), L.z64loc + shift + 8);
  }
  return out;
}

/** Zip: a wrong CRC in the directory for one entry. */
function zipCrc(seed: SeedFile, r: Rand): Buffer {
  const b = Buffer.from(seed.bytes);
  const e = r.pick(zipLayout(b).central);
  b.writeUInt32LE((b.readUInt32LE(e.at + 16) ^ (1 << r.int(32))) >>> 0, e.at + 16);
  return b;
}

// -- pickle-level mutations: applied to data.pkl (zip, re-wrapped with fresh CRCs so they reach the
//    unpickler) or to the object pickle of a legacy file.

type PickleMutation = (pkl: Buffer, r: Rand) => Buffer;

function withPickle(seed: SeedFile, r: Rand, m: PickleMutation): Buffer {
  if (seed.kind === "zip") {
    const tmp = path.join(os.tmpdir(), `fuzz-seed-${process.pid}.zip`);
    fs.writeFileSync(tmp, seed.bytes);
    const zip = ZipReader.open(tmp);
    try {
      const pklEntry = zip.entries.find((e) => e.name.endsWith("/data.pkl"))!;
      const parts = zip.entries.map((e) => ({ name: e.name, data: e === pklEntry ? m(zip.read(e), r) : zip.read(e) }));
      return Buffer.concat([...zipChunks(parts)]);
    } finally {
      zip.close();
      fs.rmSync(tmp, { force: true });
    }
  }
  // Legacy: five pickles back to back, then storages; mutate the fourth (the object).
  let at = 0;
  for (let k = 0; k < 3; k++) at = disassemble(seed.bytes, at).end;
  const end = disassemble(seed.bytes, at).end;
  return Buffer.concat([seed.bytes.subarray(0, at), m(Buffer.from(seed.bytes.subarray(at, end)), r), seed.bytes.subarray(end)]);
}

const pickleMutations: Record<string, PickleMutation> = {
  "pkl-bitflip": (p, r) => bitflip(p, r, 2),
  "pkl-truncate": (p, r) => Buffer.from(p.subarray(0, r.int(p.length))),
  /** Set the length of a string/bytes/long opcode to something huge or off by a little. */
  "pkl-length-huge": (p, r) => {
    const ops = disassemble(p, 0).ops.filter((o) => o.op in LENGTH_OPS);
    if (!ops.length) return bitflip(p, r);
    const o = r.pick(ops);
    const out = Buffer.from(p);
    if (o.argLen === 1) out[o.arg] = r.pick([0xff, 0x80, o.payload + 1, 0]);
    else if (o.argLen === 4) out.writeUInt32LE(r.chance(0.3) ? o.payload + r.range(1, 64) : r.pick(HUGE32) >>> 0, o.arg);
    else out.writeBigUInt64LE(r.pick(HUGE64) & (2n ** 64n - 1n), o.arg);
    return out;
  },
  /** Replace an integer (storage numel, offset, size, stride) by a huge or negative LONG1. */
  "pkl-int-huge": (p, r) => {
    const { ops } = disassemble(p, 0);
    // Prefer the int right after the "cpu" location string: the storage element count.
    const cpu = ops.findIndex(
      (o, i) =>
        (o.op === 0x58 || o.op === 0x8c) &&
        Buffer.from(p.subarray(o.arg + o.argLen, o.arg + o.argLen + o.payload)).toString() === "cpu" &&
        i + 1 < ops.length,
    );
    const ints = ops.filter((o) => o.op === 0x4b || o.op === 0x4d || o.op === 0x4a || o.op === 0x8a);
    if (!ints.length) return bitflip(p, r);
    let o = r.pick(ints);
    if (cpu >= 0 && r.chance(0.4)) {
      const next = ops.slice(cpu + 1).find((x) => x.op === 0x4b || x.op === 0x4d || x.op === 0x4a || x.op === 0x8a);
      if (next) o = next;
    }
    const v = r.pick([...HUGE64, -1n, -(2n ** 63n), 0n, 2n ** 70n]);
    const enc: number[] = [];
    let x = v;
    for (let i = 0; i < 9; i++, x >>= 8n) enc.push(Number(x & 0xffn));
    const repl = Buffer.from([0x8a, enc.length, ...enc]);
    const oEnd = o.arg + o.argLen + o.payload;
    return Buffer.concat([p.subarray(0, o.pos), repl, p.subarray(oEnd)]);
  },
  /** Memo abuse: huge indices on get/put, or a get of an existing index inserted anywhere. */
  "pkl-memo": (p, r) => {
    const { ops } = disassemble(p, 0);
    const memoOps = ops.filter((o) => o.op === 0x68 || o.op === 0x71 || o.op === 0x6a || o.op === 0x72);
    const choice = r.int(3);
    if (choice === 0 && memoOps.length) {
      const o = r.pick(memoOps);
      const get = o.op === 0x68 || o.op === 0x6a;
      const idx = r.pick([0xffffffff, 0x7fffffff, 1_000_000, r.int(64)]);
      const repl = Buffer.alloc(5);
      repl[0] = get ? 0x6a : 0x72;
      repl.writeUInt32LE(idx >>> 0, 1);
      return Buffer.concat([p.subarray(0, o.pos), repl, p.subarray(o.arg + o.argLen)]);
    }
    const at = r.pick(ops).pos;
    const ins = choice === 1 ? Buffer.from([0x68, r.int(Math.max(1, memoOps.length))]) : Buffer.from([0x71, r.int(4)]);
    return Buffer.concat([p.subarray(0, at), ins, p.subarray(at)]);
  },
  /** Swap one opcode for another (argument bytes stay, so the stream desynchronises). */
  "pkl-opcode": (p, r) => {
    const o = r.pick(disassemble(p, 0).ops);
    const out = Buffer.from(p);
    out[o.pos] = r.pick(
      [...Object.keys(FIXED_ARGS), ...Object.keys(LENGTH_OPS), ...Object.keys(LINE_OPS)]
        .map(Number)
        .concat([
          0x28, 0x29, 0x2e, 0x30, 0x31, 0x32, 0x51, 0x52, 0x5d, 0x61, 0x62, 0x65, 0x6c, 0x73, 0x74, 0x75, 0x7d, 0x81, 0x85, 0x86, 0x87,
          0x88, 0x89, 0x8f, 0x92, 0x93, 0x94, 0x97,
        ]),
    );
    return out;
  },
  /** Swap a GLOBAL for a dangerous or merely foreign one (must be refused as unsafe). */
  "pkl-global": (p, r) => {
    const gl = disassemble(p, 0).ops.filter((o) => o.op === 0x63);
    const name = r.pick([
      "os\nsystem\n",
      "builtins\neval\n",
      "subprocess\nPopen\n",
      "__builtin__\ngetattr\n",
      "torch\nload\n",
      "numpy.core.multiarray\n_reconstruct\n",
      "torch._utils\n_rebuild_tensor_v2\n",
      "collections\nOrderedDict\n",
      "torch\nFloatStorage\n",
    ]);
    if (!gl.length) return Buffer.concat([p.subarray(0, 2), Buffer.from("c" + name, "latin1"), p.subarray(2)]);
    const o = r.pick(gl);
    return Buffer.concat([p.subarray(0, o.pos + 1), Buffer.from(name, "latin1"), p.subarray(o.arg + o.argLen)]);
  },
  /** Replace the whole object by deep nesting (lists, tuples, dicts, MARKs) around the real value. */
  "pkl-deep": (p, r) => {
    const n = r.pick([10, 999, 1000, 1001, 5000, 200_000]);
    const kind = r.int(4);
    const body = p.subarray(2, p.length - 1); // between PROTO and STOP
    if (kind === 0) return Buffer.concat([p.subarray(0, 2), Buffer.alloc(n, "]"), body, Buffer.alloc(n, "a"), Buffer.from(".")]);
    if (kind === 1) return Buffer.concat([p.subarray(0, 2), body, Buffer.alloc(n, 0x85), Buffer.from(".")]);
    if (kind === 2) return Buffer.concat([p.subarray(0, 2), Buffer.alloc(n, "("), body, Buffer.alloc(n, "t"), Buffer.from(".")]);
    // {0: {0: … value …}} via EMPTY_DICT K 0 … SETITEM
    return Buffer.concat([
      p.subarray(0, 2),
      Buffer.alloc(n * 3, Buffer.from([0x7d, 0x4b, 0x00])),
      body,
      Buffer.alloc(n, "s"),
      Buffer.from("."),
    ]);
  },
  /** Make the value contain itself (list, dict, or the root dict put into one of its own entries). */
  "pkl-recursive": (p, r) => {
    const kind = r.int(3);
    if (kind === 0) return Buffer.from([0x80, 0x02, 0x5d, 0x71, 0x00, 0x68, 0x00, 0x61, 0x2e]);
    if (kind === 1) return Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x00, 0x4b, 0x01, 0x68, 0x00, 0x73, 0x2e]);
    // Real pickle: torch files memoize the root dict first (index 0); set root[999] = root before STOP.
    return Buffer.concat([p.subarray(0, p.length - 1), Buffer.from([0x4d, 0xe7, 0x03, 0x68, 0x00, 0x73, 0x2e])]);
  },
};

/** Safetensors: hostile header length fields. */
function stHeaderLen(seed: SeedFile, r: Rand): Buffer {
  const b = Buffer.from(seed.bytes);
  const n = b.readBigUInt64LE(0);
  const v = r.pick([
    0n,
    1n,
    2n,
    n - 1n,
    n + 1n,
    n + BigInt(r.range(2, 4096)),
    BigInt(b.length),
    BigInt(b.length - 8),
    100_000_000n,
    ...HUGE64,
  ]);
  b.writeBigUInt64LE(v < 0n ? 0n : v & (2n ** 64n - 1n), 0);
  return b;
}

function header(seed: SeedFile): { json: Record<string, unknown>; data: Buffer } {
  const n = Number(seed.bytes.readBigUInt64LE(0));
  return { json: JSON.parse(seed.bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>, data: seed.bytes.subarray(8 + n) };
}

function withHeader(text: string, data: Buffer): Buffer {
  const h = Buffer.from(text, "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

function randomJson(r: Rand, depth = 0): unknown {
  const k = r.int(depth > 3 ? 6 : 9);
  switch (k) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick([0, -1, 1.5, 1e308, -1e308, 2 ** 53, 2 ** 64, Number.MAX_SAFE_INTEGER, 4, 3]);
    case 3:
      return r.pick(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "", "__proto__", "x".repeat(r.int(300))]);
    case 4:
      return [r.int(10), r.int(10)];
    case 5:
      return [];
    case 6:
      return Array.from({ length: r.int(4) }, () => randomJson(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = r.int(5); i > 0; i--)
        o[r.pick(["dtype", "shape", "data_offsets", "__metadata__", "__proto__", "constructor", "0.0.linear.0.weight", "a", "toString"])] =
          randomJson(r, depth + 1);
      return o;
    }
  }
}

/** Safetensors: a random JSON header (valid length) over the real data. */
function stRandomJson(seed: SeedFile, r: Rand): Buffer {
  const { data } = header(seed);
  if (r.chance(0.2)) {
    // Not JSON at all, or JSON with garbage after it.
    const junk = r.pick(['{"a":', "[]", "null", '"str"', "{}}", '{"a":1}\u0000', "\ufeff{}", "{" + "[".repeat(100_000)]);
    return withHeader(junk, data);
  }
  const top: Record<string, unknown> = {};
  for (let i = r.range(1, 6); i > 0; i--) {
    const name = r.pick(["0.0.linear.0.weight", "768.1.linear.1.bias", "__metadata__", "__proto__", "x", `t${i}`]);
    top[name] = r.chance(0.6)
      ? {
          dtype: randomJson(r, 3),
          shape: r.chance(0.7) ? [r.int(8), r.int(8)] : randomJson(r, 3),
          data_offsets: r.chance(0.7) ? [r.int(64), r.int(data.length + 64)] : randomJson(r, 3),
        }
      : randomJson(r);
  }
  return withHeader(JSON.stringify(top), data);
}

/** Safetensors: one field of one real entry set to a hostile value (offsets, shapes, dtype, metadata). */
function stField(seed: SeedFile, r: Rand): Buffer {
  const { json, data } = header(seed);
  const names = Object.keys(json).filter((k) => k !== "__metadata__");
  const name = r.pick(names);
  const e = json[name] as { dtype: string; shape: number[]; data_offsets: number[] };
  const other = json[r.pick(names)] as { data_offsets: number[] };
  switch (r.int(9)) {
    case 0:
      e.data_offsets = [...other.data_offsets];
      break; // overlap / alias
    case 1:
      e.data_offsets = [e.data_offsets[0]!, r.pick([2 ** 53, 2 ** 32, data.length + 1, -1, 1.5])];
      break;
    case 2:
      e.data_offsets = [r.pick([2 ** 53, -1, e.data_offsets[1]! + 4]), e.data_offsets[1]!];
      break;
    case 3:
      e.shape = r.pick([
        [2 ** 31, 2 ** 31],
        [2 ** 53],
        [-1, 4],
        [0, 2 ** 53],
        [1.5],
        [1e308],
        Array(100).fill(1),
        "[2]" as unknown as number[],
      ]);
      break;
    case 4:
      e.dtype = r.pick(["F8_E5M2", "float32", "I64", "U8", "BOOL", "F64", "I16"]);
      break;
    case 5:
      json.__metadata__ = r.pick([
        { a: 1 },
        [],
        "x",
        null,
        { format: "pt", layer_structure: "[1, 1e9, 1]" },
        { activation_func: '"nope"' },
        { step: "-1" },
        { layer_structure: "not json" },
      ]);
      break;
    case 6:
      json[name + "x"] = e;
      break;
    case 7:
      delete json[name];
      break;
    default:
      e.shape = [...e.shape].reverse().concat(r.chance(0.5) ? [1] : []);
      break;
  }
  return withHeader(JSON.stringify(json), data);
}

// -- content mutations (issue 18, classes 1 and 4): files that are well-formed but carry hostile
//    content the readers pass on. Their findings come from `trustProblem` below, which checks what a
//    loaded value would make the trainer do.
//
//    name-escape:  a real hypernetwork re-saved with a hostile stored `name` (traversal, absolute,
//                  `..`, empty, device names, escape sequences, 300 characters, invalid UTF-16) and
//                  sometimes a huge step. Finding: a path training would derive from the loaded name
//                  (`runFiles`: checkpoint, .optim, .state.json, preview) leaves its folder, or has a
//                  file name with control characters, a leading dot or no room for the temp-file affixes.
//    optim-poison: the generated `.optim` (hash matching its host) with poisoned AdamW state:
//                  negative/NaN/Inf moments, NaN/empty/negative/fractional steps, bad lr/betas/eps/
//                  weight decay, a foreign optimizer_name, foreign state keys, amsgrad, integer moments.
//                  Finding: the reader returns that state instead of a reason.

const HOSTILE_NAMES = [
  "../../../x",
  "/abs/x",
  "..",
  ".",
  "",
  "con",
  "NUL.txt",
  "com1",
  "a\u001b[31mb",
  "\u009b2J\u001b]0;t\u0007",
  "x".repeat(300),
  "é".repeat(200),
  "\u{1F600}".repeat(70),
  "a/b\\c",
  "C:\\x",
  "\\\\server\\share\\x",
  "\u202egnp.exe",
  "\u0000",
  "\ud800x",
  " ",
  " . ",
  "..\\..\\x",
  "~/x",
  "x\n../y",
];

/** A hostile stored name: one of the classics, or a random string of path-breaking pieces. */
function hostileName(r: Rand): string {
  if (r.chance(0.5)) return r.pick(HOSTILE_NAMES);
  const parts = [
    "..",
    "/",
    "\\",
    ".",
    "\u001b[",
    "\u0000",
    "con",
    ":",
    "\u{1F600}",
    "\ud800",
    " ",
    "a",
    "é",
    "\u202e",
    "x".repeat(100),
    "\n",
  ];
  return Array.from({ length: r.int(12) }, () => r.pick(parts)).join("");
}

/** Re-save a hypernetwork seed with a hostile stored name (and sometimes a huge step). */
function nameEscape(seed: SeedFile, r: Rand): Buffer {
  const base = path.join(os.tmpdir(), `fuzz-name-${process.pid}`);
  try {
    fs.writeFileSync(`${base}-in${seed.ext}`, seed.bytes);
    const hf = readHypernetworkFile(`${base}-in${seed.ext}`);
    hf.info.name = hostileName(r);
    if (r.chance(0.2)) hf.info.step = r.pick([0, 2 ** 31, 2 ** 53 - 1]);
    writeHypernetworkFile(hf, `${base}-out.pt`, { overwrite: true });
    return fs.readFileSync(`${base}-out.pt`);
  } finally {
    fs.rmSync(`${base}-in${seed.ext}`, { force: true });
    fs.rmSync(`${base}-out.pt`, { force: true });
  }
}

/** Poison the AdamW state of the generated `.optim` seed; its hash (of the host .pt) is kept. */
function optimPoison(seed: SeedFile, r: Rand): Buffer {
  const tmp = path.join(os.tmpdir(), `fuzz-optim-${process.pid}.optim`);
  try {
    fs.writeFileSync(tmp, seed.bytes);
    const root = readTorchFile(tmp) as PyDict;
    const sd = root.get("optimizer_state_dict") as PyDict;
    const st = sd.get("state") as PyDict;
    const g = (sd.get("param_groups") as PyValue[])[0] as PyDict;
    const e = st.get(r.pick([...st.map.keys()])) as PyDict;
    const moment = (k: "exp_avg" | "exp_avg_sq"): HostTensor => e.get(k) as HostTensor;
    const poisonOne = (): void => {
      switch (r.int(10)) {
        case 0: {
          const t = moment("exp_avg_sq");
          t.data[r.int(t.data.length)] = r.pick([-1e-8, -1, -Infinity]);
          break;
        }
        case 1: {
          const t = moment(r.pick(["exp_avg", "exp_avg_sq"] as const));
          t.data[r.int(t.data.length)] = r.pick([NaN, Infinity, -Infinity]);
          break;
        }
        case 2:
          e.set(
            "step",
            r.pick<PyValue>([
              { dtype: "F32", shape: [], data: Float32Array.of(r.pick([NaN, Infinity, -1, 2.5, 1e30])) },
              { dtype: "F32", shape: [0], data: new Float32Array(0) },
              { dtype: "F32", shape: [2], data: Float32Array.of(1, 2) },
              -3,
              new PyFloat(NaN),
              "3",
              null,
            ]),
          );
          break;
        case 3:
          g.set("lr", r.pick<PyValue>([new PyFloat(NaN), new PyFloat(Infinity), new PyFloat(-1e-3), "1e-3", null]));
          break;
        case 4:
          root.set("optimizer_name", r.pick<PyValue>(["SGD", "Adam", "adamw", "", 3, null, "AdamW\u0000"]));
          break;
        case 5:
          g.set(
            "betas",
            r.pick<PyValue>([
              new PyTuple([new PyFloat(NaN), new PyFloat(0.999)]),
              new PyTuple([new PyFloat(0.9), new PyFloat(1)]),
              new PyTuple([new PyFloat(-0.1), new PyFloat(0.9)]),
            ]),
          );
          break;
        case 6:
          g.set(r.pick(["eps", "weight_decay"]), r.pick([new PyFloat(NaN), new PyFloat(-1), new PyFloat(Infinity)]));
          break;
        case 7:
          e.set(r.pick(["momentum_buffer", "max_exp_avg_sq", "__proto__"]), moment("exp_avg"));
          break;
        case 8:
          g.set(r.pick(["amsgrad", "maximize"]), true);
          break;
        default: {
          const k = r.pick(["exp_avg", "exp_avg_sq"] as const);
          const t = moment(k);
          e.set(k, { dtype: "I32", shape: t.shape, data: Int32Array.from(t.data, (v) => Math.round(v)) });
          break;
        }
      }
    };
    poisonOne();
    if (r.chance(0.25)) poisonOne();
    writeTorchFile(tmp, root, { overwrite: true });
    return fs.readFileSync(tmp);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/**
 * The content mutations, each only for the seeds it can rewrite. optim-poison is listed 6 times (one
 * kind in the report): only the one `.optim` seed can carry it, and its other mutations rarely get
 * past the hash check, so it takes about a fifth of that seed's cases.
 */
const CONTENT_MUTATIONS: MutationDef[] = [
  { name: "name-escape", kinds: ["zip"], seeds: /^(hn-.*|ldm-[ab])\.pt$/, fn: nameEscape },
  ...Array.from({ length: 6 }, (): MutationDef => ({ name: "optim-poison", kinds: ["zip"], seeds: /\.optim$/, fn: optimPoison })),
];

/** Where `trustProblem` pretends training runs. */
const FUZZ_RUN_DIR = path.resolve(os.tmpdir(), "fuzz-run-folder");

/**
 * What a loaded value would make training do wrong, checked independently of the code under test:
 * for a hypernetwork, every file `runFiles` derives from its stored name and step must sit directly
 * in `<run>/hypernetworks` or `<run>/images` with a plain file name; for an optimizer side file,
 * state that is returned must be AdamW with finite hyper-parameters, whole-number steps ≥ 0, finite
 * float moments and `exp_avg_sq ≥ 0`. A problem is reported as a `bad-load` finding.
 */
export function trustProblem(reader: ReaderName, value: unknown): string | undefined {
  if (reader === "hypernet") {
    const { name, step } = (value as HypernetworkFile).info;
    const shown = JSON.stringify(name.slice(0, 60));
    let files: string[];
    try {
      files = runFiles(FUZZ_RUN_DIR, name, step);
    } catch (err) {
      return `training would fail for stored name ${shown}: ${(err as Error).message.slice(0, 200)}`;
    }
    for (const [i, f] of files.entries()) {
      const dir = path.join(FUZZ_RUN_DIR, i === 3 ? "images" : "hypernetworks");
      const base = path.basename(f);
      if (path.dirname(path.resolve(f)) !== dir) return `stored name ${shown} makes training write ${f}, outside ${dir}`;
      if (/[\u0000-\u001f\u007f-\u009f/\\]/.test(base) || base.startsWith(".") || Buffer.byteLength(base) + 40 > 255)
        return `stored name ${shown} gives the unsafe file name ${JSON.stringify(base.slice(0, 80))}`;
    }
    return undefined;
  }
  if (reader === "optim") {
    const st = (value as { state?: OptimizerState }).state;
    if (!st) return undefined;
    const bad = (what: string): string => `optimizer state accepted with ${what}`;
    if (st.name !== "AdamW") return bad(`optimizer_name ${JSON.stringify(st.name)}`);
    const hyper = [st.lr, st.betas[0], st.betas[1], st.eps, st.weightDecay];
    if (!hyper.every((v) => Number.isFinite(v) && v >= 0) || st.betas[0] >= 1 || st.betas[1] >= 1)
      return bad(`hyper-parameters ${hyper.join(", ")}`);
    for (const [i, p] of st.params.entries()) {
      if (!Number.isSafeInteger(p.step) || p.step < 0) return bad(`step ${p.step} for parameter ${i}`);
      if (!p.expAvg.data.every(Number.isFinite) || !(p.expAvg.data instanceof Float32Array))
        return bad(`a non-finite or non-float exp_avg for parameter ${i}`);
      if (!p.expAvgSq.data.every((v) => Number.isFinite(v) && v >= 0) || !(p.expAvgSq.data instanceof Float32Array))
        return bad(`a non-finite, negative or non-float exp_avg_sq for parameter ${i}`);
    }
  }
  return undefined;
}

interface MutationDef {
  name: string;
  kinds: readonly SeedKind[];
  /** Only for seed files whose name matches (default: every seed of `kinds`). */
  seeds?: RegExp;
  fn: Mutation;
  /** Readers that must refuse every file this mutation makes (a load is a bad-load finding). */
  refuse?: readonly ReaderName[];
}

const ALL: SeedKind[] = ["zip", "legacy", "safetensors"];
const PICKLED: SeedKind[] = ["zip", "legacy"];

// -- view and lookup mutations (issue 18, classes 2 and 3, and the zip name check).
//
//    pkl-stride0-view:  one tensor's (size, stride) rewritten into a stride-0 expansion of huge size
//                       (2^20 … 2^53 elements, one or two dims, or 40 dims of 2), so a few-hundred-byte
//                       file describes up to petabytes. Old reader: 2 × 4 bytes per element allocated
//                       and walked (expand(2^27): 17 s, 1 GiB) or a raw RangeError past 2^31.
//    pkl-overlap-view:  overlapping strides with no zero, sized to the tensor's storage (s elements):
//                       (2,)*d with stride (1,)*d (2^d elements from d + 1), windows [n, w] with
//                       stride (1, 1) (≈ s²/4), a cube of windows (≈ (s/3)³).
//    pkl-proto-global:  a GLOBAL's module or name replaced by an Object.prototype member
//                       (torch.constructor, collections.hasOwnProperty, __proto__.FloatStorage …).
//                       Old reader: torch.<member> passed the storage whitelist (NaN sizes, TypeErrors).
//    zip-name-mismatch: a local header names another entry than the directory (one byte, or its length).
//                       Old reader: loaded it (Python's zipfile refuses).

/** The value of an int opcode (K, M, J, LONG1), or undefined for anything else. */
function intOpValue(p: Buffer, o: PickleOp): number | undefined {
  if (o.op === 0x4b) return p[o.arg];
  if (o.op === 0x4d) return p.readUInt16LE(o.arg);
  if (o.op === 0x4a) return p.readInt32LE(o.arg);
  if (o.op === 0x8a && o.payload > 0 && o.payload <= 6) return p.readIntLE(o.arg + 1, o.payload);
  return undefined;
}

interface ViewSpan {
  /** Byte range of the size and stride tuples (and their memo puts). */
  from: number;
  to: number;
  puts: Buffer[];
  offset: number;
  /** Elements of the storage, when its persistent id is spelled out just before (not a memo get). */
  storageNumel?: number;
}

/** Where each tensor's size and stride tuples sit: from after its storage offset to requires_grad. */
function viewSpans(p: Buffer): ViewSpan[] {
  const { ops } = disassemble(p, 0);
  const spans: ViewSpan[] = [];
  const isPut = (op: number): boolean => op === 0x71 || op === 0x72 || op === 0x94;
  for (let i = 0; i + 2 < ops.length; i++) {
    if (ops[i]!.op !== 0x51) continue; // BINPERSID, then the storage offset
    const offset = intOpValue(p, ops[i + 1]!);
    if (offset === undefined) continue;
    let j = i + 2;
    while (j < ops.length && ops[j]!.op !== 0x88 && ops[j]!.op !== 0x89) j++; // NEWTRUE/NEWFALSE: requires_grad
    if (j >= ops.length) continue;
    // The persistent id ('storage', type, key, location, numel) ends in TUPLE, maybe memoized; the
    // legacy format's has a sixth item, None (no view), after numel.
    let k = i - 1;
    while (k > 0 && isPut(ops[k]!.op)) k--;
    const last = k > 1 && ops[k]!.op === 0x74 ? (ops[k - 1]!.op === 0x4e ? k - 2 : k - 1) : -1;
    const storageNumel = last >= 0 ? intOpValue(p, ops[last]!) : undefined;
    const puts = ops
      .slice(i + 2, j)
      .filter((o) => isPut(o.op))
      .map((o) => Buffer.from(p.subarray(o.pos, o.arg + o.argLen)));
    spans.push({ from: ops[i + 2]!.pos, to: ops[j]!.pos, puts, offset, storageNumel });
  }
  return spans;
}

/** A tuple of ints as MARK, LONG1 …, TUPLE. */
function intTupleOps(items: readonly (number | bigint)[]): Buffer {
  const parts = items.map((v) => {
    const enc: number[] = [];
    let x = BigInt(v);
    for (let i = 0; i < 9; i++, x >>= 8n) enc.push(Number(x & 0xffn));
    return Buffer.from([0x8a, enc.length, ...enc]);
  });
  return Buffer.concat([Buffer.from([0x28]), ...parts, Buffer.from([0x74])]);
}

/** Replace one tensor's size and stride (keeping the memo puts that followed them); `view` may size them to its storage. */
function rewriteView(
  p: Buffer,
  r: Rand,
  view: (room: number | undefined) => [readonly (number | bigint)[], readonly (number | bigint)[]],
): Buffer {
  const spans = viewSpans(p);
  if (!spans.length) return bitflip(p, r, 2);
  const s = r.pick(spans);
  const [shape, stride] = view(s.storageNumel === undefined ? undefined : s.storageNumel - s.offset);
  const none = Buffer.alloc(0);
  return Buffer.concat([
    p.subarray(0, s.from),
    intTupleOps(shape),
    s.puts[0] ?? none,
    intTupleOps(stride),
    s.puts[1] ?? none,
    p.subarray(s.to),
  ]);
}

const PROTO_MEMBERS = [
  "constructor",
  "__proto__",
  "toString",
  "valueOf",
  "hasOwnProperty",
  "isPrototypeOf",
  "__defineGetter__",
  "propertyIsEnumerable",
];

const viewPickleMutations: Record<string, PickleMutation> = {
  "pkl-stride0-view": (p, r) => {
    const big = r.pick([2 ** 20, 2 ** 22, 2 ** 24, 2 ** 27, 2 ** 31, 2 ** 32 + 1, 2 ** 40, 2 ** 53 - 1]);
    const a = r.pick([2 ** 12, 2 ** 16, 2 ** 20, 2 ** 27]);
    const b = r.pick([2 ** 12, 2 ** 16, 3]);
    const kind = r.int(4);
    return rewriteView(p, r, (room) => {
      if (kind === 0) return [[big], [0]];
      if (kind === 1)
        return [
          [a, b],
          [0, 0],
        ];
      // A broadcast of a real row: [big, w] with stride (0, 1), w as much of the storage as there is.
      if (kind === 2)
        return [
          [big, Math.max(1, Math.min(room ?? 1, 4096))],
          [0, 1],
        ];
      return [Array(40).fill(2), Array(40).fill(0)];
    });
  },
  "pkl-overlap-view": (p, r) => {
    const kind = r.int(3);
    return rewriteView(p, r, (room) => {
      const s = room ?? 41;
      // (2,)*d with stride (1,)*d: 2^d elements from d + 1 stored.
      if (kind === 0) return [Array(Math.max(1, Math.min(40, s - 1))).fill(2), Array(Math.max(1, Math.min(40, s - 1))).fill(1)];
      // Sliding windows [n, w], stride (1, 1): about s²/4 elements from s.
      if (kind === 1) {
        const w = Math.max(1, Math.floor(s / 2));
        return [
          [Math.max(1, s - w + 1), w],
          [1, 1],
        ];
      }
      // A cube of windows [c, c, c], stride (1, 1, 1): about (s/3)³ elements from s.
      const c = Math.max(1, Math.floor((s + 2) / 3));
      return [
        [c, c, c],
        [1, 1, 1],
      ];
    });
  },
  "pkl-proto-global": (p, r) => {
    const gl = disassemble(p, 0).ops.filter((o) => o.op === 0x63);
    // Half the time a storage class (the slot whose table the old reader looked names up in).
    const storages = gl.filter((o) =>
      p
        .subarray(o.arg, o.arg + o.argLen)
        .toString("latin1")
        .endsWith("Storage\n"),
    );
    const member = r.pick(PROTO_MEMBERS);
    const text = r.pick([
      `torch\n${member}\n`,
      `torch\n${member}\n`,
      `collections\n${member}\n`,
      `torch._utils\n${member}\n`,
      `${member}\nFloatStorage\n`,
      `${member}\n${member}\n`,
    ]);
    if (!gl.length) return bitflip(p, r, 2);
    const o = storages.length && r.chance(0.5) ? r.pick(storages) : r.pick(gl);
    return Buffer.concat([p.subarray(0, o.pos + 1), Buffer.from(text, "latin1"), p.subarray(o.arg + o.argLen)]);
  },
};

/** Zip: a local header that names a different entry than the central directory does. */
function zipNameMismatch(seed: SeedFile, r: Rand): Buffer {
  const b = Buffer.from(seed.bytes);
  const e = r.pick(zipLayout(b).central);
  const nameLen = b.readUInt16LE(e.headerOffset + 26);
  if (r.chance(0.7) && nameLen > 0) b[e.headerOffset + 30 + r.int(nameLen)]! ^= 1 << r.int(7);
  else b.writeUInt16LE(Math.max(0, nameLen + r.pick([-1, 1])), e.headerOffset + 26);
  return b;
}

const VIEW_MUTATIONS: MutationDef[] = [
  ...Object.entries(viewPickleMutations).map(([name, m]): MutationDef => ({ name, kinds: PICKLED, fn: (s, r) => withPickle(s, r, m) })),
  { name: "zip-name-mismatch", kinds: ["zip"], fn: zipNameMismatch },
];

// -- strict-safetensors and hypernetwork-alias mutations (issue 18: "as strict as the reference
//    readers"). Each makes a file the Rust `safetensors` crate refuses (or, hn-alias-width, a
//    hypernetwork file whose meaning is ambiguous); `refuse` lists the readers that must refuse
//    it, and a load by one of them is a bad-load finding. The old reader loaded all of them.
//
//    st-duplicate-key: a tensor listed twice (its copy's bytes appended, so the data still tile),
//                      the same entry twice (two names, one blob), `__metadata__` twice, or a field
//                      twice inside one entry. JSON.parse keeps the last silently.
//    st-gap:           unused bytes before a tensor, at the start of the data, after the last tensor,
//                      or left behind by a removed entry.
//    st-bad-utf8:      invalid UTF-8 (0xff, overlong, encoded surrogate, truncated, 5-byte) in a
//                      tensor name or a metadata key or value, or a lone \ud800 escape.
//    st-float-shape:   a shape dimension or a data offset written as 4.0, 4e0, 0.4E1.
//    st-many-entries:  thousands of empty tensors (or metadata keys) past the entry cap for the
//                      data the file holds; must be refused within the per-read budget.
//    hn-alias-width:   on a hypernetwork .safetensors: width D's tensors renamed 0D.* (alone, or
//                      beside D.* with other values appended).

/** The seed's header as [key, value] pairs in file order. */
function headerPairs(seed: SeedFile): { pairs: Array<[string, unknown]>; data: Buffer } {
  const { json, data } = header(seed);
  return { pairs: Object.entries(json), data: Buffer.from(data) };
}

/** Header text from pairs, duplicates allowed (`raw` values are inserted as they are). */
function pairsText(pairs: ReadonlyArray<[string, unknown]>, raw = new Map<number, string>()): string {
  return `{${pairs.map(([k, v], i) => `${JSON.stringify(k)}:${raw.get(i) ?? JSON.stringify(v)}`).join(",")}}`;
}

interface StEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** Tensor pairs (not `__metadata__`) in data order, with their index in `pairs`. */
function tensorOrder(pairs: ReadonlyArray<[string, unknown]>): Array<{ i: number; name: string; e: StEntry }> {
  return pairs
    .map(([name, e], i) => ({ i, name, e: e as StEntry }))
    .filter((x) => x.name !== "__metadata__")
    .sort((a, b) => a.e.data_offsets[0] - b.e.data_offsets[0] || a.e.data_offsets[1] - b.e.data_offsets[1]);
}

const shifted = (e: StEntry, by: number): StEntry => ({ ...e, data_offsets: [e.data_offsets[0] + by, e.data_offsets[1] + by] });

function stDuplicateKey(seed: SeedFile, r: Rand): Buffer {
  const { pairs, data } = headerPairs(seed);
  const ts = tensorOrder(pairs);
  const t = r.pick(ts);
  switch (r.int(4)) {
    case 0: {
      const [b, e] = t.e.data_offsets;
      pairs.splice(r.int(pairs.length + 1), 0, [t.name, { ...t.e, data_offsets: [data.length, data.length + e - b] }]);
      return withHeader(pairsText(pairs), Buffer.concat([data, data.subarray(b, e)]));
    }
    case 1:
      pairs.push([t.name, t.e]);
      return withHeader(pairsText(pairs), data);
    case 2:
      pairs.unshift(["__metadata__", { a: "1" }]);
      pairs.push(["__metadata__", { b: "2" }]);
      return withHeader(pairsText(pairs), data);
    default: {
      const e = t.e;
      const field = r.pick(["dtype", "shape", "data_offsets"] as const);
      const text = `{"dtype":${JSON.stringify(e.dtype)},"shape":${JSON.stringify(e.shape)},"data_offsets":${JSON.stringify(e.data_offsets)},"${field}":${JSON.stringify(e[field])}}`;
      return withHeader(pairsText(pairs, new Map([[t.i, text]])), data);
    }
  }
}

function stGap(seed: SeedFile, r: Rand): Buffer {
  const { pairs, data } = headerPairs(seed);
  const ts = tensorOrder(pairs);
  const g = r.pick([1, 2, 4, 8, 64]);
  const junk = Buffer.alloc(g, 0xab);
  switch (r.int(4)) {
    case 0: {
      // Unused bytes before one tensor: insert them at its start and move it and every later one.
      const k = r.int(ts.length);
      const at = ts[k]!.e.data_offsets[0];
      for (const x of ts.slice(k)) pairs[x.i]![1] = shifted(x.e, g);
      return withHeader(pairsText(pairs), Buffer.concat([data.subarray(0, at), junk, data.subarray(at)]));
    }
    case 1:
      for (const x of ts) pairs[x.i]![1] = shifted(x.e, g);
      return withHeader(pairsText(pairs), Buffer.concat([junk, data]));
    case 2:
      return withHeader(pairsText(pairs), Buffer.concat([data, junk]));
    default: {
      const nonEmpty = ts.filter((x) => x.e.data_offsets[1] > x.e.data_offsets[0]);
      const gone = r.pick(nonEmpty);
      return withHeader(pairsText(pairs.filter((_, i) => i !== gone.i)), data);
    }
  }
}

const BAD_UTF8 = [[0xff], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80, 0x80], [0x80], [0xf4, 0x90, 0x80, 0x80]];

function stBadUtf8(seed: SeedFile, r: Rand): Buffer {
  const { pairs, data } = headerPairs(seed);
  const mark = "\u0001MARK\u0001";
  const ts = tensorOrder(pairs);
  const where = r.int(3);
  if (where === 0) {
    const t = r.pick(ts);
    pairs[t.i]![0] = t.name.slice(0, r.int(t.name.length + 1)) + mark + t.name.slice(r.int(t.name.length + 1));
  } else {
    const meta = pairs.find(([k]) => k === "__metadata__");
    const m = (meta?.[1] as Record<string, string> | undefined) ?? {};
    if (where === 1) m[`k${mark}`] = "v";
    else m.note = `v${mark}`;
    if (!meta) pairs.unshift(["__metadata__", m]);
  }
  const text = pairsText(pairs);
  const marker = JSON.stringify(mark).slice(1, -1); // as JSON.stringify escaped it
  const [before, after] = [text.slice(0, text.indexOf(marker)), text.slice(text.indexOf(marker) + marker.length)];
  const bad = r.chance(0.15) ? Buffer.from("\\ud800") : Buffer.from(r.pick(BAD_UTF8));
  const h = Buffer.concat([Buffer.from(before, "utf8"), bad, Buffer.from(after, "utf8")]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

function stFloatShape(seed: SeedFile, r: Rand): Buffer {
  const { pairs, data } = headerPairs(seed);
  const t = r.pick(tensorOrder(pairs));
  const e = t.e;
  const asFloat = (n: number): string => r.pick([`${n}.0`, `${n}e0`, `${n}E+0`, `${n * 10}e-1`, `${n}.00`]);
  let shape = JSON.stringify(e.shape);
  let offsets = JSON.stringify(e.data_offsets);
  if (e.shape.length > 0 && r.chance(0.7)) {
    const k = r.int(e.shape.length);
    shape = `[${e.shape.map((d, i) => (i === k ? asFloat(d) : String(d))).join(",")}]`;
  } else {
    const k = r.int(2);
    offsets = `[${e.data_offsets.map((d, i) => (i === k ? asFloat(d) : String(d))).join(",")}]`;
  }
  const text = `{"dtype":${JSON.stringify(e.dtype)},"shape":${shape},"data_offsets":${offsets}}`;
  return withHeader(pairsText(pairs, new Map([[t.i, text]])), data);
}

function stManyEntries(seed: SeedFile, r: Rand): Buffer {
  const { pairs, data } = headerPairs(seed);
  const cap = Math.max(FREE_HEADER_ENTRIES, Math.floor(data.length / MIN_BYTES_PER_ENTRY));
  const n = cap + 1 + r.int(20_000);
  if (r.chance(0.3)) {
    const meta: Record<string, string> = {};
    for (let k = 0; k < n; k++) meta[`m${k}`] = "";
    return withHeader(pairsText([["__metadata__", meta], ...pairs.filter(([k]) => k !== "__metadata__")]), data);
  }
  const empties: string[] = [];
  for (let k = 0; k < n; k++) empties.push(`"z${k}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
  const text = pairsText(pairs);
  return withHeader(`${text.slice(0, -1)}${pairs.length ? "," : ""}${empties.join(",")}}`, data);
}

function hnAliasWidth(seed: SeedFile, r: Rand): Buffer {
  const { pairs, data } = headerPairs(seed);
  const ts = tensorOrder(pairs);
  const dims = [...new Set(ts.map((t) => /^(\d+)\./.exec(t.name)?.[1]).filter((d): d is string => d !== undefined))];
  const d = r.pick(dims);
  const alias = r.pick([`0${d}`, `00${d}`]);
  const mine = ts.filter((t) => t.name.startsWith(`${d}.`));
  if (r.chance(0.5)) {
    // Renamed: 0D.* only (all of them, or just one, leaving the width split across two spellings).
    for (const t of r.chance(0.5) ? mine : [r.pick(mine)]) pairs[t.i]![0] = alias + t.name.slice(d.length);
    return withHeader(pairsText(pairs), data);
  }
  // Beside D.*: copies under 0D.* with other values, appended (the data still tile).
  const extra: Buffer[] = [];
  let end = data.length;
  for (const t of mine) {
    const [b, e] = t.e.data_offsets;
    const copy = Buffer.from(data.subarray(b, e));
    for (let i = 0; i < copy.length; i++) copy[i]! ^= 0x55;
    pairs.push([alias + t.name.slice(d.length), { ...t.e, data_offsets: [end, end + copy.length] }]);
    extra.push(copy);
    end += copy.length;
  }
  return withHeader(pairsText(pairs), Buffer.concat([data, ...extra]));
}

const ALL_READERS: readonly ReaderName[] = ["safetensors", "torch", "hypernet", "optim"];
const STRICT_ST_MUTATIONS: MutationDef[] = [
  { name: "st-duplicate-key", kinds: ["safetensors"], fn: stDuplicateKey, refuse: ALL_READERS },
  { name: "st-gap", kinds: ["safetensors"], fn: stGap, refuse: ALL_READERS },
  { name: "st-bad-utf8", kinds: ["safetensors"], fn: stBadUtf8, refuse: ALL_READERS },
  { name: "st-float-shape", kinds: ["safetensors"], fn: stFloatShape, refuse: ALL_READERS },
  { name: "st-many-entries", kinds: ["safetensors"], fn: stManyEntries, refuse: ALL_READERS },
  // Listed 4 times (one kind in the report): only one seed can carry it.
  ...Array.from(
    { length: 4 },
    (): MutationDef => ({
      name: "hn-alias-width",
      kinds: ["safetensors"],
      seeds: /^generated-hn\.safetensors$/,
      fn: hnAliasWidth,
      refuse: ["hypernet"],
    }),
  ),
];

export const MUTATIONS: readonly MutationDef[] = [
  { name: "bitflip", kinds: ALL, fn: (s, r) => bitflip(s.bytes, r) },
  { name: "overwrite", kinds: ALL, fn: (s, r) => overwrite(s.bytes, r) },
  { name: "truncate", kinds: ALL, fn: (s, r) => truncate(s.bytes, r) },
  { name: "splice", kinds: ALL, fn: (s, r) => splice(s.bytes, r) },
  { name: "zip-field-huge", kinds: ["zip"], fn: zipField },
  { name: "zip-end-records", kinds: ["zip"], fn: zipEnd },
  { name: "zip64", kinds: ["zip"], fn: zip64 },
  { name: "zip-duplicate-overlap", kinds: ["zip"], fn: zipDuplicate },
  { name: "zip-crc", kinds: ["zip"], fn: zipCrc },
  ...Object.entries(pickleMutations).map(([name, m]): MutationDef => ({ name, kinds: PICKLED, fn: (s, r) => withPickle(s, r, m) })),
  { name: "st-header-length", kinds: ["safetensors"], fn: stHeaderLen },
  { name: "st-random-json", kinds: ["safetensors"], fn: stRandomJson },
  { name: "st-entry-field", kinds: ["safetensors"], fn: stField },
  ...CONTENT_MUTATIONS,
  ...VIEW_MUTATIONS,
  ...STRICT_ST_MUTATIONS,
];

// ---- readers and outcome classification ---------------------------------------------------------

export type ReaderName = "safetensors" | "torch" | "hypernet" | "optim";
export const READERS: readonly ReaderName[] = ["safetensors", "torch", "hypernet", "optim"];

export type Outcome = "loaded" | "clean-error" | "crash" | "hang" | "alloc" | "bad-load";

export interface Finding {
  kind: Exclude<Outcome, "loaded" | "clean-error">;
  reader: ReaderName;
  mutation: string;
  seedFile: string;
  /** Reproduce with `npm run fuzz -- --replay <caseSeed>`. */
  caseSeed: number;
  detail: string;
  ms: number;
}

/** Check every tensor in a loaded value: data length must equal the product of its shape. */
function tensorsConsistent(v: unknown, seen = new Set<unknown>()): string | undefined {
  if (v === null || typeof v !== "object" || seen.has(v)) return undefined;
  seen.add(v);
  const t = v as Partial<HostTensor>;
  if (Array.isArray(t.shape) && t.data && ArrayBuffer.isView(t.data)) {
    const n = t.shape.reduce((a: number, b: number) => a * b, 1);
    return t.data.length === n ? undefined : `tensor [${t.shape.join(", ")}] has ${t.data.length} values`;
  }
  const kids: unknown[] =
    v instanceof Map
      ? [...v.values()]
      : Array.isArray(v)
        ? v
        : v instanceof PyDict
          ? [...v.map.values(), v.state]
          : v instanceof PyTuple
            ? v.items
            : Object.values(v);
  for (const k of kids) {
    const bad = tensorsConsistent(k, seen);
    if (bad) return bad;
  }
  return undefined;
}

/** A clean refusal: a typed reader error, or a plain Error whose message names the file. */
export function isCleanError(err: unknown, file: string): boolean {
  if (err instanceof CorruptFileError || err instanceof UnsafePickleError || err instanceof UnsupportedFileError) return true;
  return err instanceof Error && err.constructor === Error && err.message.includes(file);
}

function readWith(reader: ReaderName, file: string, optimHost: string): unknown {
  switch (reader) {
    case "safetensors": {
      const f = SafetensorsFile.open(file);
      try {
        return f.readAll();
      } finally {
        f.close();
      }
    }
    case "torch": {
      const f = openTorchFile(file);
      try {
        return materialize(f.root);
      } finally {
        f.close();
      }
    }
    case "hypernet":
      return readHypernetworkFile(file, { onWarning: () => undefined }); // NaN weights from bit flips load with a warning
    case "optim":
      return readOptimizerFile(optimHost);
  }
}

// Track the largest single Buffer the readers ask for (the way a hostile length becomes an allocation).
let largestAlloc = 0;
function trackAllocations(): () => void {
  const b = Buffer as unknown as Record<string, (n: number, ...rest: unknown[]) => Buffer>;
  const saved = { alloc: b.alloc!, allocUnsafe: b.allocUnsafe!, allocUnsafeSlow: b.allocUnsafeSlow! };
  for (const k of Object.keys(saved) as Array<keyof typeof saved>) {
    const orig = saved[k];
    b[k] = function (this: unknown, n: number, ...rest: unknown[]) {
      if (typeof n === "number" && n > largestAlloc) largestAlloc = n;
      return orig.call(this, n, ...rest);
    };
  }
  return () => Object.assign(b, saved);
}

function getGc(): (() => void) | undefined {
  try {
    v8.setFlagsFromString("--expose-gc");
    return vm.runInNewContext("gc") as () => void;
  } catch {
    return undefined;
  }
}

// ---- the run ------------------------------------------------------------------------------------

export interface FuzzOptions {
  seed: number;
  /** Stop after this many cases … */
  cases: number;
  /** … or after this many seconds, whichever comes first. */
  seconds: number;
  /** Run exactly this one case (a case seed from a finding) instead. */
  replay?: number;
  hangMs?: number;
  allocBytes?: number;
  /** Called as each case starts, with its index and seed (for progress and for a hang watchdog). */
  onCase?: (i: number, caseSeed: number) => void;
  log?: (line: string) => void;
}

export interface FuzzReport {
  seed: number;
  cases: number;
  seconds: number;
  readers: Record<string, Record<Outcome, number>>;
  mutations: Record<string, { tried: number } & Record<Outcome, number>>;
  seedFiles: Record<string, number>;
  findings: Finding[];
}

const emptyOutcomes = (): Record<Outcome, number> => ({ loaded: 0, "clean-error": 0, crash: 0, hang: 0, alloc: 0, "bad-load": 0 });

/** Run the fuzzer (in this process) and return the report. */
export function runFuzz(opts: FuzzOptions): FuzzReport {
  // Per-read budget: 1 s of CPU (or 10 s of wall time) and 64 MiB. A stride-0 view of 2^24 float32
  // elements (64 MiB decoded) already passes both in the old reader, which took ~2.5 s and 128 MiB.
  const hangMs = opts.hangMs ?? 1000;
  const allocBytes = opts.allocBytes ?? 64 * 1024 * 1024;
  const shm = fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();
  const work = fs.mkdtempSync(path.join(shm, "hn-fuzz-"));
  const optimHost = path.join(work, "host.pt");
  fs.writeFileSync(optimHost, "the .pt this .optim belongs to");
  const seeds = seedCorpus(work, optimHost);
  const gc = getGc();
  const untrack = trackAllocations();
  const report: FuzzReport = { seed: opts.seed, cases: 0, seconds: 0, readers: {}, mutations: {}, seedFiles: {}, findings: [] };
  for (const r of READERS) report.readers[r] = emptyOutcomes();
  const t0 = performance.now();
  try {
    const total = opts.replay !== undefined ? 1 : opts.cases;
    for (let i = 0; i < total; i++) {
      if (opts.replay === undefined && performance.now() - t0 > opts.seconds * 1000) break;
      const cs = opts.replay ?? caseSeed(opts.seed, i);
      opts.onCase?.(i, cs);
      const r = new Rand(rng32(cs));
      const seed = r.pick(seeds);
      const muts = MUTATIONS.filter((m) => m.kinds.includes(seed.kind) && (!m.seeds || m.seeds.test(seed.name)));
      const mut = r.pick(muts);
      let bytes: Buffer;
      try {
        bytes = mut.fn(seed, r);
      } catch {
        // A mutation that cannot apply to this seed (e.g. no ZIP64 record): use a bit flip instead.
        bytes = bitflip(seed.bytes, r);
      }
      const file = path.join(work, `case${seed.ext}`);
      fs.writeFileSync(file, bytes);
      fs.writeFileSync(`${optimHost}.optim`, bytes);
      const m = (report.mutations[mut.name] ??= { tried: 0, ...emptyOutcomes() });
      m.tried++;
      report.seedFiles[seed.name] = (report.seedFiles[seed.name] ?? 0) + 1;
      if (gc && i % 50 === 0) gc();
      for (const reader of READERS) {
        const target = reader === "optim" ? `${optimHost}.optim` : file;
        const mem0 = process.memoryUsage();
        largestAlloc = 0;
        const c0 = performance.now();
        const cpu0 = process.cpuUsage();
        let outcome: Outcome;
        let detail = "";
        try {
          const value = readWith(reader, file, optimHost);
          const bad =
            tensorsConsistent(value) ??
            trustProblem(reader, value) ??
            (mut.refuse?.includes(reader) ? `loaded a file it must refuse (${mut.name})` : undefined);
          outcome = bad ? "bad-load" : "loaded";
          detail = bad ?? "";
        } catch (err) {
          if (isCleanError(err, target)) outcome = "clean-error";
          else {
            outcome = "crash";
            detail =
              err instanceof Error
                ? `${err.constructor.name}: ${err.message.slice(0, 300)}\n${(err.stack ?? "").split("\n").slice(1, 4).join("\n")}`
                : `non-Error thrown: ${String(err)}`;
          }
        }
        const ms = performance.now() - c0;
        const cpu = process.cpuUsage(cpu0);
        const cpuMs = (cpu.user + cpu.system) / 1000;
        const mem1 = process.memoryUsage();
        const grown = Math.max(mem1.heapUsed - mem0.heapUsed + mem1.arrayBuffers - mem0.arrayBuffers, largestAlloc);
        // CPU time, so that other jobs on a shared machine do not make a fast reader look slow.
        if (cpuMs > hangMs || ms > 10 * hangMs) {
          report.findings.push({
            kind: "hang",
            reader,
            mutation: mut.name,
            seedFile: seed.name,
            caseSeed: cs,
            detail: `took ${ms.toFixed(0)} ms, ${cpuMs.toFixed(0)} ms of CPU (${outcome})`,
            ms,
          });
          outcome = "hang";
        } else if (grown > allocBytes) {
          report.findings.push({
            kind: "alloc",
            reader,
            mutation: mut.name,
            seedFile: seed.name,
            caseSeed: cs,
            detail: `allocated ${(grown / 2 ** 20).toFixed(0)} MiB (${outcome})`,
            ms,
          });
          outcome = "alloc";
        } else if (outcome === "crash" || outcome === "bad-load") {
          report.findings.push({ kind: outcome, reader, mutation: mut.name, seedFile: seed.name, caseSeed: cs, detail, ms });
        }
        report.readers[reader]![outcome]++;
        m[outcome]++;
      }
      report.cases++;
      if (opts.log && report.cases % 1000 === 0)
        opts.log(`${report.cases} cases, ${report.findings.length} findings, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
  } finally {
    untrack();
    report.seconds = Math.round((performance.now() - t0) / 100) / 10;
    fs.rmSync(work, { recursive: true, force: true });
  }
  return report;
}

// ---- folder cases: hostile entries in an image folder (issue 18, classes 5 and 6) -------------------
//
// A "folder" case builds a small training folder — one or two good images plus one to four hostile
// entries picked by the case seed — and runs the two folder readers on it: `TrainingDataset.load`
// and `preprocess`. Hostile entries: captions that are a named pipe, a link to /dev/zero (or
// /dev/urandom, /dev/null), a folder, a broken link, a 16 MiB+ sparse file or a 1 MB text; images that
// are a folder, a named pipe, a device link, a 2 GiB+ sparse file or a PNG whose header claims
// 15,000 × 15,000 pixels. Each reader must finish within `hangMs`, allocate less than `allocBytes`,
// and either list every hostile entry it met with a reason (a 1 MB caption: cut, with a note naming
// it) or refuse the folder with a plain `Error` naming it; otherwise the case is a finding
// ("unreported" when a hostile entry was neither listed nor cut with a note). Each pipe has a writer
// process that closes it after hangMs + 2 s, so a reader that wrongly opens one is released and
// shows up as a hang rather than blocking the run. Rerun one case: `npm run fuzz -- --folder-replay <caseSeed>`.

export type FolderReader = "dataset" | "preprocess";

export interface FolderFinding {
  kind: "crash" | "hang" | "alloc" | "unreported";
  reader: FolderReader;
  /** the hostile entries of the case, by kind */
  hostile: string[];
  caseSeed: number;
  detail: string;
  ms: number;
}

export interface FolderFuzzReport {
  cases: number;
  seconds: number;
  readers: Record<FolderReader, { ok: number; "clean-error": number; finding: number }>;
  /** cases per hostile-entry kind */
  kinds: Record<string, number>;
  findings: FolderFinding[];
}

/** What a hostile entry expects: names each reader must list as skipped, captions it must cut. */
interface Planted {
  kind: string;
  report: Partial<Record<FolderReader, string[]>>;
  cut?: string;
}

const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function pngChunk(type: string, data: Buffer): Buffer {
  const td = Buffer.concat([Buffer.from(type, "latin1"), data]);
  let crc = 0xffffffff;
  for (const b of td) crc = crcTable[(crc ^ b) & 0xff]! ^ (crc >>> 8);
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  td.copy(out, 4);
  out.writeUInt32BE((crc ^ 0xffffffff) >>> 0, 8 + data.length);
  return out;
}
/** A valid-looking PNG whose header claims `w × h` RGB pixels, with a few bytes of image data. */
export function pngClaiming(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([
    sig,
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", zlib.deflateSync(Buffer.alloc(64))),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

/**
 * A named pipe at `file` with a writer process that opens it and closes it after `seconds`: a reader
 * that wrongly opens the pipe is released then (and shows up as a hang) instead of blocking the run.
 */
function mkfifo(file: string, seconds: number, writers: ChildProcess[]): void {
  execFileSync("mkfifo", [file]);
  const w = spawn("sh", ["-c", `exec sleep ${seconds} > "$1"`, "sh", file], { stdio: "ignore" });
  w.unref();
  writers.push(w);
}
const sparse = (file: string, size: number): void => {
  fs.writeFileSync(file, "");
  fs.truncateSync(file, size);
};

/** What a builder gets: a good PNG, and a way to make a named pipe (with its writer). */
interface PlantKit {
  png: Buffer;
  fifo: (file: string) => void;
}

/** Hostile-entry builders: each plants its entries in `dir` (names made unique by `n`). */
const HOSTILE: Record<string, (dir: string, n: number, r: Rand, kit: PlantKit) => Planted> = {
  "fifo-caption": (dir, n, _r, { png, fifo }) => {
    fs.writeFileSync(path.join(dir, `fifo${n}.png`), png);
    fifo(path.join(dir, `fifo${n}.txt`));
    return { kind: "fifo-caption", report: { dataset: [`fifo${n}.txt`], preprocess: [`fifo${n}.txt`] } };
  },
  "device-caption": (dir, n, r, { png }) => {
    fs.writeFileSync(path.join(dir, `dev${n}.png`), png);
    fs.symlinkSync(r.pick(["/dev/zero", "/dev/urandom", "/dev/null"]), path.join(dir, `dev${n}.txt`));
    return { kind: "device-caption", report: { dataset: [`dev${n}.txt`], preprocess: [`dev${n}.txt`] } };
  },
  "folder-caption": (dir, n, _r, { png }) => {
    fs.writeFileSync(path.join(dir, `dir${n}.png`), png);
    fs.mkdirSync(path.join(dir, `dir${n}.txt`));
    return { kind: "folder-caption", report: { dataset: [`dir${n}.txt`], preprocess: [`dir${n}.txt`] } };
  },
  "broken-link-caption": (dir, n, _r, { png }) => {
    fs.writeFileSync(path.join(dir, `bl${n}.png`), png);
    fs.symlinkSync(`missing${n}.txt`, path.join(dir, `bl${n}.txt`));
    return { kind: "broken-link-caption", report: { dataset: [`bl${n}.txt`], preprocess: [`bl${n}.txt`] } };
  },
  "huge-caption": (dir, n, r, { png }) => {
    fs.writeFileSync(path.join(dir, `big${n}.png`), png);
    sparse(path.join(dir, `big${n}.txt`), r.pick([16 * 2 ** 20 + 1, 2 ** 31 + 7, 5 * 2 ** 30]));
    return { kind: "huge-caption", report: { dataset: [`big${n}.txt`], preprocess: [`big${n}.txt`] } };
  },
  "long-caption": (dir, n, r, { png }) => {
    fs.writeFileSync(path.join(dir, `long${n}.png`), png);
    fs.writeFileSync(path.join(dir, `long${n}.txt`), "tag, ".repeat(r.range(1_000, 220_000)));
    return { kind: "long-caption", report: {}, cut: `long${n}.txt` };
  },
  "folder-image": (dir, n) => {
    fs.mkdirSync(path.join(dir, `folder${n}.png`));
    return { kind: "folder-image", report: { dataset: [`folder${n}.png`], preprocess: [`folder${n}.png`] } };
  },
  "fifo-image": (dir, n, _r, { fifo }) => {
    fifo(path.join(dir, `pipe${n}.png`));
    return { kind: "fifo-image", report: { dataset: [`pipe${n}.png`], preprocess: [`pipe${n}.png`] } };
  },
  "device-image": (dir, n, r) => {
    fs.symlinkSync(r.pick(["/dev/zero", "/dev/urandom", "/dev/null"]), path.join(dir, `zero${n}.png`));
    return { kind: "device-image", report: { dataset: [`zero${n}.png`], preprocess: [`zero${n}.png`] } };
  },
  "sparse-image": (dir, n, r) => {
    sparse(path.join(dir, `sparse${n}.png`), 2 ** 31 + r.int(2 ** 20));
    return { kind: "sparse-image", report: { dataset: [`sparse${n}.png`], preprocess: [`sparse${n}.png`] } };
  },
  "huge-pixels": (dir, n, r) => {
    const side = r.pick([15_000, 16_384, 65_535, 100_000]);
    fs.writeFileSync(path.join(dir, `pixels${n}.png`), pngClaiming(side, side));
    return { kind: "huge-pixels", report: { dataset: [`pixels${n}.png`], preprocess: [`pixels${n}.png`] } };
  },
};

/** Run one folder case through both readers; findings are appended to `report`. */
async function runFolderCase(
  cs: number,
  work: string,
  png: Buffer,
  report: FolderFuzzReport,
  hangMs: number,
  allocBytes: number,
): Promise<void> {
  const r = new Rand(rng32(cs));
  const dir = path.join(work, "folder");
  const dst = path.join(work, "out");
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(dst, { recursive: true, force: true });
  fs.mkdirSync(dir);
  for (let g = r.int(3); g > 0; g--) fs.writeFileSync(path.join(dir, `good${g}.png`), png);
  const planted: Planted[] = [];
  const kinds = Object.keys(HOSTILE);
  const writers: ChildProcess[] = [];
  const kit: PlantKit = { png, fifo: (file) => mkfifo(file, Math.ceil(hangMs / 1000) + 2, writers) };
  try {
    for (let n = r.range(1, 4); n > 0; n--) planted.push(HOSTILE[r.pick(kinds)]!(dir, n, r, kit));
    await readFolderCase(cs, dir, dst, planted, r, report, hangMs, allocBytes);
  } finally {
    for (const w of writers) if (w.exitCode === null && w.signalCode === null) w.kill("SIGKILL");
  }
}

/** Run both folder readers on a planted folder and classify what they did. */
async function readFolderCase(
  cs: number,
  dir: string,
  dst: string,
  planted: Planted[],
  r: Rand,
  report: FolderFuzzReport,
  hangMs: number,
  allocBytes: number,
): Promise<void> {
  for (const p of planted) report.kinds[p.kind] = (report.kinds[p.kind] ?? 0) + 1;
  const hostile = planted.map((p) => p.kind);
  const finding = (reader: FolderReader, kind: FolderFinding["kind"], detail: string, ms: number): void => {
    report.findings.push({ kind, reader, hostile, caseSeed: cs, detail, ms });
    report.readers[reader].finding++;
  };
  for (const reader of ["dataset", "preprocess"] as const) {
    const mem0 = process.memoryUsage();
    largestAlloc = 0;
    const t0 = performance.now();
    let listed: string[] | undefined;
    let notes: string[] = [];
    let error: unknown;
    try {
      if (reader === "dataset") {
        const ds = await TrainingDataset.load(dir, {
          name: "fuzz",
          rng: { next: r.next },
          width: 16,
          height: 16,
          template: ["[filewords]"],
        });
        listed = ds.skipped.map((s) => s.file);
        notes = ds.notes;
        for (let i = 0; i < ds.imageCount; i++)
          if (ds.caption(i).length > DEFAULT_MAX_CAPTION_CHARS) notes.push(`UNCUT caption of ${ds.caption(i).length} characters`);
      } else {
        listed = (await preprocess(dir, dst, { width: 16, height: 16, overwrite: true })).skipped.map((s) => s.source);
      }
    } catch (err) {
      error = err;
    }
    const ms = performance.now() - t0;
    const mem1 = process.memoryUsage();
    const grown = Math.max(mem1.heapUsed - mem0.heapUsed + mem1.arrayBuffers - mem0.arrayBuffers, largestAlloc);
    if (ms > hangMs) finding(reader, "hang", `took ${ms.toFixed(0)} ms`, ms);
    else if (grown > allocBytes) finding(reader, "alloc", `allocated ${(grown / 2 ** 20).toFixed(0)} MiB`, ms);
    else if (error !== undefined) {
      if (error instanceof Error && error.constructor === Error && error.message.includes(dir)) report.readers[reader]["clean-error"]++;
      else
        finding(reader, "crash", error instanceof Error ? `${error.constructor.name}: ${error.message.slice(0, 300)}` : String(error), ms);
    } else {
      const missing = planted.flatMap((p) => p.report[reader] ?? []).filter((name) => !listed!.includes(name));
      const uncut = reader === "dataset" ? planted.filter((p) => p.cut && !notes.some((n) => n.includes(p.cut!))).map((p) => p.cut!) : [];
      if (notes.some((n) => n.startsWith("UNCUT"))) uncut.push("a caption longer than the limit");
      if (missing.length || uncut.length)
        finding(
          reader,
          "unreported",
          [
            missing.length ? `not listed as skipped: ${missing.join(", ")}` : "",
            uncut.length ? `not cut with a note: ${uncut.join(", ")}` : "",
          ]
            .filter(Boolean)
            .join("; "),
          ms,
        );
      else report.readers[reader].ok++;
    }
  }
}

/**
 * Run `cases` folder cases (or the one case `replay`) and return their report. Folder cases are
 * seeded like file cases, from `seed` and the case index, with their own hash so the two streams differ.
 */
export async function runFolderFuzz(opts: {
  seed: number;
  cases: number;
  seconds: number;
  replay?: number;
  hangMs?: number;
  allocBytes?: number;
  onCase?: (i: number, caseSeed: number) => void;
}): Promise<FolderFuzzReport> {
  const hangMs = opts.hangMs ?? 5000;
  const allocBytes = opts.allocBytes ?? 64 * 1024 * 1024;
  const shm = fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();
  const work = fs.mkdtempSync(path.join(shm, "hn-fuzz-folder-"));
  const report: FolderFuzzReport = {
    cases: 0,
    seconds: 0,
    readers: { dataset: { ok: 0, "clean-error": 0, finding: 0 }, preprocess: { ok: 0, "clean-error": 0, finding: 0 } },
    kinds: {},
    findings: [],
  };
  const png = await sharp({ create: { width: 24, height: 24, channels: 3, background: { r: 200, g: 60, b: 30 } } })
    .png()
    .toBuffer();
  const untrack = trackAllocations();
  const t0 = performance.now();
  try {
    const total = opts.replay !== undefined ? 1 : opts.cases;
    for (let i = 0; i < total; i++) {
      if (opts.replay === undefined && performance.now() - t0 > opts.seconds * 1000) break;
      const cs = opts.replay ?? caseSeed(opts.seed ^ 0x5f0d, i);
      opts.onCase?.(i, cs);
      await runFolderCase(cs, work, png, report, hangMs, allocBytes);
      report.cases++;
    }
  } finally {
    untrack();
    report.seconds = Math.round((performance.now() - t0) / 100) / 10;
    fs.rmSync(work, { recursive: true, force: true });
  }
  return report;
}

// ---- command line -------------------------------------------------------------------------------

/**
 * A watchdog thread: if the main thread stops reporting progress for `ms` (a reader stuck in a
 * loop cannot be interrupted from inside), it prints the case seed it was on and ends the process.
 */
function startWatchdog(ms: number): (caseSeed: number) => void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Worker } = require("node:worker_threads") as typeof import("node:worker_threads");
  const shared = new Int32Array(new SharedArrayBuffer(8));
  const code = `
    const { workerData } = require("node:worker_threads");
    const s = workerData.shared; let last = -1, since = Date.now();
    setInterval(() => {
      const beat = Atomics.load(s, 0);
      if (beat !== last) { last = beat; since = Date.now(); return; }
      if (Date.now() - since > workerData.ms) {
        process.stderr.write("HANG: no progress for " + workerData.ms + " ms; case seed " + (Atomics.load(s, 1) >>> 0) + " (replay with --replay)\\n");
        process.kill(process.pid, "SIGKILL");
      }
    }, 250);`;
  const w = new Worker(code, { eval: true, workerData: { shared, ms } });
  w.unref();
  return (cs) => {
    Atomics.add(shared, 0, 1);
    Atomics.store(shared, 1, cs | 0);
  };
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string, dflt: number): number => {
    const i = argv.indexOf(`--${name}`);
    if (i < 0) return dflt;
    const v = Number(argv[i + 1]);
    if (!Number.isFinite(v)) throw new Error(`--${name} needs a number, got ${argv[i + 1]}`);
    return v;
  };
  const outIdx = argv.indexOf("--out");
  const out = outIdx >= 0 ? argv[outIdx + 1] : undefined;
  const replayIdx = argv.indexOf("--replay");
  const opts: FuzzOptions = {
    seed: arg("seed", 1),
    cases: arg("cases", 10_000),
    seconds: arg("seconds", 600),
    replay: replayIdx >= 0 ? arg("replay", 0) : undefined,
    log: (l) => process.stderr.write(l + "\n"),
  };
  const beat = startWatchdog(30_000);
  opts.onCase = (_i, cs) => beat(cs);
  // Folder cases (hostile entries in an image folder): --folder-cases N (default cases/100, at least
  // 20; none with --replay), --folder-replay <caseSeed> to rerun one (then no file cases run).
  const folderReplay = argv.includes("--folder-replay") ? arg("folder-replay", 0) : undefined;
  if (folderReplay !== undefined) opts.cases = 0;
  const folderCases = opts.replay !== undefined ? 0 : arg("folder-cases", Math.max(20, Math.round(opts.cases / 100)));
  const report = runFuzz(opts);
  const folders = await runFolderFuzz({
    seed: opts.seed,
    cases: folderCases,
    seconds: opts.seconds,
    replay: folderReplay,
    onCase: (_i, cs) => beat(cs),
  });
  const json = JSON.stringify({ command: `npm run fuzz -- ${argv.join(" ")}`.trim(), ...report, folders }, null, 2);
  if (out) fs.writeFileSync(out, json + "\n");
  process.stdout.write(json + "\n");
  process.exitCode = report.findings.length || folders.findings.length ? 1 : 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 2;
  });
}
