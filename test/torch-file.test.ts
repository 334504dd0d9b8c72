import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FileExistsError } from "../src/io/atomic";
import { CorruptFileError, UnsupportedFileError } from "../src/io/errors";
import { type HostTensor, hostTensor } from "../src/io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyValue, isHostTensor, isTorchTensor } from "../src/io/pyvalue";
import { SafetensorsFile } from "../src/io/safetensors";
import { StorageTensor, isStorageTensor, openTorchFile, readTorchFile, writeTorchFile } from "../src/io/torch-file";
import { ZipReader, writeZip } from "../src/io/zip";
import { expectClose, fixture } from "./helpers/tf";
import { skipWithoutTorch } from "./helpers/torch";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "torch-file-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const asDict = (v: PyValue | undefined): PyDict => {
  expect(v).toBeInstanceOf(PyDict);
  return v as PyDict;
};

interface Manifest {
  file: string;
  io: string;
  dims: number[];
  activation: string | null;
  legacy?: boolean;
}
const manifest = JSON.parse(fs.readFileSync(fixture("hn-manifest.json"), "utf8")) as Manifest[];

/** y = W x + b for a [out, in] weight and a batch of rows x [n, in]. */
function linear(x: Float32Array, n: number, w: HostTensor, b: HostTensor): Float32Array {
  const [out, inp] = w.shape as [number, number];
  const y = new Float32Array(n * out);
  for (let r = 0; r < n; r++)
    for (let o = 0; o < out; o++) {
      let s = b.data[o]!;
      for (let i = 0; i < inp; i++) s += w.data[o * inp + i]! * x[r * inp + i]!;
      y[r * out + o] = s;
    }
  return y;
}

describe("reading torch zip files written by PyTorch", () => {
  it.each(manifest.filter((m) => m.activation === null).map((m) => [m.file, m] as const))(
    "%s: structure and weights reproduce the fixture's module outputs",
    (_name, m) => {
      const f = openTorchFile(fixture(m.file));
      try {
        expect(f.format).toBe("zip");
        const root = asDict(f.root);
        expect(root.kind).toBe("dict");
        const dims = [...root.map.keys()].filter((k) => typeof k === "number");
        expect(dims).toEqual(m.dims);
        const io = SafetensorsFile.open(fixture(m.io));
        try {
          for (const dim of m.dims) {
            const pair = root.get(dim);
            // NovelAI files store the pair as a list, A1111 files as a tuple.
            if (m.legacy) expect(Array.isArray(pair)).toBe(true);
            else expect(pair).toBeInstanceOf(PyTuple);
            const items = Array.isArray(pair) ? pair : (pair as PyTuple).items;
            expect(items).toHaveLength(2);
            const [w0, b0, w1, b1] = m.legacy
              ? ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]
              : ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"];
            for (const [j, which] of [
              [0, "k"],
              [1, "v"],
            ] as const) {
              const sd = asDict(items[j]);
              expect(sd.kind).toBe("OrderedDict");
              expect([...sd.map.keys()]).toEqual([w0, b0, w1, b1]);
              const t = (k: string): HostTensor => {
                const v = sd.get(k);
                if (!isTorchTensor(v)) throw new Error(`${k} is not a tensor`);
                return v.read();
              };
              const W0 = t(w0!);
              const W1 = t(w1!);
              expect(W0.shape).toEqual([2 * dim, dim]);
              expect(W1.shape).toEqual([dim, 2 * dim]);
              expect(W0.dtype).toBe(m.file === "hn-half.pt" ? "F16" : "F32");
              // Independent check of the values: x + W1 (W0 x + b0) + b1 must equal torch's output.
              const x = io.read(`x.${dim}`);
              const n = x.data.length / dim;
              const h = linear(x.data as Float32Array, n, W0, t(b0!));
              const y = linear(h, n, W1, t(b1!));
              for (let i = 0; i < y.length; i++) y[i]! += x.data[i]!;
              const want = io.read(`${which}.${dim}.1.0`);
              expectClose(y, want.data, m.file === "hn-half.pt" ? 2e-3 : 2e-5, 1e-4);
            }
          }
        } finally {
          io.close();
        }
        if (!m.legacy) {
          const ls = root.get("layer_structure");
          expect(Array.isArray(ls)).toBe(true);
          for (const v of ls as PyValue[]) expect(v).toBeInstanceOf(PyFloat);
          expect((ls as PyFloat[]).map((v) => v.value)).toEqual([1, 2, 1]);
          expect(root.get("step")).toBe(1234);
          expect(root.get("activation_func")).toBeNull();
          expect(root.get("is_layer_norm")).toBe(false);
        } else {
          expect(root.map.size).toBe(2);
        }
      } finally {
        f.close();
      }
    },
  );

  it("hn-relu-ln-drop.pt: mixed int/float dropout list, layer-norm shapes and _metadata state", () => {
    const root = asDict(readTorchFile(fixture("hn-relu-ln-drop.pt")));
    const drop = root.get("dropout_structure") as PyValue[];
    expect(drop[0]).toBe(0);
    expect(drop[1]).toEqual(new PyFloat(0.1));
    expect(drop[2]).toEqual(new PyFloat(0.2));
    expect(drop[3]).toBe(0);
    expect(root.get("activation_func")).toBe("relu");
    expect(root.get("weight_initialization")).toBe("KaimingNormal");
    const sd = asDict((root.get(32) as PyTuple).items[0]);
    const shapes = [...sd.map].map(([k, v]) => [k, (v as HostTensor).shape]);
    expect(shapes).toEqual([
      ["linear.0.weight", [64, 32]],
      ["linear.0.bias", [64]],
      ["linear.2.weight", [64]],
      ["linear.2.bias", [64]],
      ["linear.4.weight", [64, 64]],
      ["linear.4.bias", [64]],
      ["linear.6.weight", [64]],
      ["linear.6.bias", [64]],
      ["linear.8.weight", [32, 64]],
      ["linear.8.bias", [32]],
      ["linear.9.weight", [32]],
      ["linear.9.bias", [32]],
    ]);
    const meta = asDict(asDict(sd.state).get("_metadata"));
    expect(meta.kind).toBe("OrderedDict");
    expect([...meta.map.keys()]).toEqual(["", "linear", ...Array.from({ length: 10 }, (_, i) => `linear.${i}`)]);
    expect(asDict(meta.get("linear.3")).get("version")).toBe(1);
  });

  it("ldm-a.pt and ldm-b.pt open; every tensor fits its storage and reads", () => {
    for (const name of ["ldm-a.pt", "ldm-b.pt"]) {
      const f = openTorchFile(fixture(name));
      try {
        const root = asDict(f.root);
        const dims = [...root.map.keys()].filter((k) => typeof k === "number") as number[];
        expect(dims.length).toBeGreaterThan(0);
        for (const d of dims) {
          for (const sd of (root.get(d) as PyTuple).items) {
            const w = asDict(sd).get("linear.0.weight");
            expect(isStorageTensor(w)).toBe(true);
            const t = w as StorageTensor;
            expect(t.shape[1]).toBe(d);
            expect(t.storageOffset).toBe(0);
            expect(t.stride).toEqual([d, 1]);
            expect(t.read().data.length).toBe(t.shape[0]! * d);
          }
        }
      } finally {
        f.close();
      }
    }
  });

  it("tensors cannot be read after close", () => {
    const f = openTorchFile(fixture("hn-half.pt"));
    const w = asDict((asDict(f.root).get(16) as PyTuple).items[0]).get("linear.0.bias");
    f.close();
    expect(() => (w as StorageTensor).read()).toThrow(/closed/);
  });
});

describe("legacy (pre-1.6, non-zip) torch format", () => {
  // test/fixtures/legacy-format.pt and .json come from make-legacy.py run under PyTorch 1.13.
  const expected = JSON.parse(fs.readFileSync(fixture("legacy-format.json"), "utf8")) as Record<
    string,
    { dtype: string; shape: number[]; values: number[]; offset: number; stride: number[] }
  >;
  const dtypes: Record<string, string> = { "torch.float32": "F32", "torch.float16": "F16", "torch.int64": "I64" };

  it("reads tensors, views with offsets, transposed views and plain values", () => {
    const f = openTorchFile(fixture("legacy-format.pt"));
    try {
      expect(f.format).toBe("legacy");
      const root = asDict(f.root);
      const pair = root.get(16) as PyTuple;
      expect(pair).toBeInstanceOf(PyTuple);
      const sd = asDict(pair.items[0]);
      expect(sd.kind).toBe("OrderedDict");
      expect([...asDict(asDict(sd.state).get("_metadata")).map.keys()]).toEqual(["", "linear"]);
      const tensors: Record<string, PyValue | undefined> = {
        half: root.get("half"),
        view: root.get("view"),
        transposed: root.get("transposed"),
        long: root.get("long"),
        weight: sd.get("linear.0.weight"),
      };
      for (const [k, want] of Object.entries(expected)) {
        const t = tensors[k] as StorageTensor;
        expect(t, k).toBeInstanceOf(StorageTensor);
        expect(t.dtype, k).toBe(dtypes[want.dtype]);
        expect(t.shape, k).toEqual(want.shape);
        expect(t.storageOffset, k).toBe(want.offset);
        expect(t.stride, k).toEqual(want.stride);
        expect(Array.from(t.read().data), k).toEqual(want.values);
      }
      // The bias in the list is the same tensor object as the one in the state dict (memo).
      expect((pair.items[1] as PyValue[])[0]).toBe(sd.get("linear.0.bias"));
      // The two views share one storage.
      expect((tensors.view as StorageTensor).storage).toBe((tensors.transposed as StorageTensor).storage);
      expect((tensors.transposed as StorageTensor).contiguous).toBe(false);
      expect((root.get("floats") as PyFloat[]).map((v) => v.value)).toEqual([1, 2, 0.1]);
      expect(root.get("ints")).toEqual([0, 255, 256, 65536, -1, 2 ** 40]);
      expect(root.get("none")).toBeNull();
      expect(root.get("flag")).toBe(true);
      expect(root.get("name")).toBe("légacy ✓");
    } finally {
      f.close();
    }
  });

  it("a legacy file cut inside its storages is refused", () => {
    const bytes = fs.readFileSync(fixture("legacy-format.pt"));
    const cut = path.join(tmp, "legacy-cut.pt");
    fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 10));
    expect(() => openTorchFile(cut)).toThrow(CorruptFileError);
  });
});

// ---- writing ------------------------------------------------------------------------------------

/** A hypernetwork-like value with every kind of value A1111 files hold. */
function sampleValue(withFloats: boolean): PyDict {
  const meta = new PyDict("OrderedDict", [
    ["", new PyDict("dict", [["version", 1]])],
    ["linear", new PyDict("dict", [["version", 1]])],
    ["linear.0", new PyDict("dict", [["version", 1]])],
  ]);
  const sd = (seed: number, half: boolean): PyDict => {
    const w = new Float32Array(6).map((_, i) => (i - 2.5) * 0.25 * seed); // exact in fp16
    const d = new PyDict("OrderedDict", [
      ["linear.0.weight", hostTensor([2, 3], w, half ? "F16" : "F32")],
      ["linear.0.bias", hostTensor([2], new Float32Array([0.5 * seed, -1.75]), half ? "F16" : "F32")],
    ]);
    d.state = new PyDict("dict", [["_metadata", meta]]);
    return d;
  };
  const root = new PyDict("dict", [
    [3, new PyTuple([sd(1, false), sd(2, false)])],
    [768, new PyTuple([sd(3, true), sd(4, true)])],
    ["step", 70000],
    ["name", "wätery ✓"],
    ["activation_func", null],
    ["is_layer_norm", false],
    ["use_dropout", true],
    ["big", -(2 ** 40)],
    ["huge", 2n ** 70n],
    ["small", [0, 255, 256, 65535, 65536, -1, -(2 ** 31), 2 ** 31 - 1, 2 ** 31]],
    ["scalar", hostTensor([], new Float32Array([7]))],
    ["long", { dtype: "I64", shape: [3], data: new Int32Array([1, -2, 3]) }],
    ["many", new PyTuple([1, 2, 3, 4, "five"])],
    ["empty", new PyTuple([])],
  ]);
  if (withFloats) {
    root.set("layer_structure", [new PyFloat(1), new PyFloat(2), new PyFloat(1)]);
    root.set("dropout_structure", [0, new PyFloat(0.1), new PyFloat(0.2), 0]);
  }
  return root;
}

/** A type-exact description of a value, the same shape the Python script below prints. */
function describe_(v: PyValue): unknown {
  if (v === null) return { t: "None" };
  if (typeof v === "boolean") return { t: "bool", v };
  if (typeof v === "number" || typeof v === "bigint") return { t: "int", v: String(v) };
  if (typeof v === "string") return { t: "str", v };
  if (v instanceof PyFloat) return { t: "float", v: v.value };
  if (Array.isArray(v)) return { t: "list", v: v.map(describe_) };
  if (v instanceof PyTuple) return { t: "tuple", v: v.items.map(describe_) };
  if (v instanceof PyDict) {
    return {
      t: v.kind,
      v: [...v.map].map(([k, x]) => [describe_(k as PyValue), describe_(x)]),
      state: v.state === undefined ? null : describe_(v.state),
    };
  }
  if (isTorchTensor(v) || isHostTensor(v)) {
    const h = isTorchTensor(v) ? v.read() : v;
    return { t: "tensor", dtype: h.dtype, shape: h.shape, v: Array.from(h.data) };
  }
  throw new Error("unexpected value");
}

const PY_DESCRIBE = `
import json, sys, collections, torch
DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.float64: "F64"}
def d(v):
    if v is None: return {"t": "None"}
    if isinstance(v, bool): return {"t": "bool", "v": v}
    if isinstance(v, int): return {"t": "int", "v": str(v)}
    if isinstance(v, str): return {"t": "str", "v": v}
    if isinstance(v, float): return {"t": "float", "v": v}
    if isinstance(v, list): return {"t": "list", "v": [d(x) for x in v]}
    if isinstance(v, tuple): return {"t": "tuple", "v": [d(x) for x in v]}
    if isinstance(v, dict):
        st = vars(v) if isinstance(v, collections.OrderedDict) and vars(v) else None
        return {"t": "OrderedDict" if isinstance(v, collections.OrderedDict) else "dict",
                "v": [[d(k), d(x)] for k, x in v.items()], "state": d(dict(st)) if st else None}
    if isinstance(v, torch.Tensor):
        assert v.is_contiguous() and not v.requires_grad and v.storage_offset() == 0
        return {"t": "tensor", "dtype": DT[v.dtype], "shape": list(v.shape), "v": v.float().flatten().tolist()}
    raise TypeError(type(v))
out = {}
for path, wo in zip(sys.argv[1::2], sys.argv[2::2]):
    out[path] = d(torch.load(path, map_location="cpu", weights_only=(wo == "1")))
print(json.dumps(out))
`;

describe("writing torch files", () => {
  it("round-trips a hypernetwork-like value exactly through our reader", () => {
    const file = path.join(tmp, "round.pt");
    const value = sampleValue(true);
    writeTorchFile(file, value);
    const back = readTorchFile(file);
    expect(describe_(back)).toEqual(describe_(value));
    expect((asDict(back).get(768) as PyTuple).items.map((sd) => (asDict(sd).get("linear.0.weight") as HostTensor).dtype)).toEqual([
      "F16",
      "F16",
    ]);
  });

  it("writes the container torch writes: one folder, aligned stored entries, version record", () => {
    const file = path.join(tmp, "my-net.pt");
    writeTorchFile(file, sampleValue(true));
    const zip = ZipReader.open(file);
    try {
      expect(zip.entries.map((e) => e.name)).toEqual([
        "my-net/data.pkl",
        "my-net/.format_version",
        "my-net/.storage_alignment",
        "my-net/byteorder",
        ...Array.from({ length: 10 }, (_, i) => `my-net/data/${i}`),
        "my-net/version",
      ]);
      for (const e of zip.entries) {
        expect(e.dataStart % 64, e.name).toBe(0);
        expect(e.method).toBe(0);
        zip.read(e); // CRC checked
      }
      expect(zip.read("my-net/version").toString()).toBe("3\n");
      expect(zip.read("my-net/byteorder").toString()).toBe("little");
      const pkl = zip.read("my-net/data.pkl");
      expect([...pkl.subarray(0, 2)]).toEqual([0x80, 0x02]);
      expect(pkl[pkl.length - 1]).toBe(0x2e);
      // fp16 tensors are stored as 2 bytes per element
      expect(zip.entry("my-net/data/4")!.size).toBe(12);
    } finally {
      zip.close();
    }
    // Non-ASCII names fall back to "archive", like torch 2.x; existing files are not replaced.
    const odd = path.join(tmp, "wätery.pt");
    writeTorchFile(odd, sampleValue(false));
    const z2 = ZipReader.open(odd);
    expect(z2.entries[0]!.name).toBe("archive/data.pkl");
    z2.close();
    expect(() => writeTorchFile(odd, sampleValue(false))).toThrow(FileExistsError);
    writeTorchFile(odd, sampleValue(false), { overwrite: true });
  });

  it("refuses floats given as plain numbers", () => {
    expect(() => writeTorchFile(path.join(tmp, "bad.pt"), new PyDict("dict", [["x", 0.5]]))).toThrow(/PyFloat/);
  });

  it("PyTorch 1.13 loads what we write with the same types and values", (ctx) => {
    skipWithoutTorch(ctx, "torch.load of the files we write");
    const withFloats = path.join(tmp, "torchcheck.pt");
    const noFloats = path.join(tmp, "torchcheck-wo.pt");
    writeTorchFile(withFloats, sampleValue(true));
    writeTorchFile(noFloats, sampleValue(false));
    // weights_only=True in torch 1.13 rejects BINFLOAT (spec §2.8), so it is checked on the
    // float-free file only; plain torch.load is checked on the file with floats.
    const r = spawnSync("/usr/bin/python3", ["-c", PY_DESCRIBE, withFloats, "0", noFloats, "1"], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(got[withFloats]).toEqual(describe_(sampleValue(true)));
    expect(got[noFloats]).toEqual(describe_(sampleValue(false)));
  }, 60_000);
});

// ---- the zip container --------------------------------------------------------------------------

describe("zip container checks", () => {
  const make = (name: string): string => {
    const file = path.join(tmp, name);
    writeZip(file, [
      { name: "a/data.pkl", data: Buffer.from([0x80, 0x02, 0x4e, 0x2e]) },
      { name: "a/x1", data: Buffer.from("hello") },
      { name: "a/x2", data: Buffer.from("world") },
      { name: "a/version", data: Buffer.from("3\n") },
    ]);
    return file;
  };
  /** Offset of the central-directory header of entry `i` in a file we wrote. */
  const central = (buf: Buffer, i: number): number => {
    let p = buf.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    for (let k = 0; k < i; k++) p = buf.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]), p + 4);
    return p;
  };
  const patch = (name: string, fn: (b: Buffer) => void): string => {
    const file = make(name);
    const b = fs.readFileSync(file);
    fn(b);
    fs.writeFileSync(file, b);
    return file;
  };

  it("reads what it writes", () => {
    expect(readTorchFile(make("ok.pt"))).toBeNull();
  });
  it("refuses compressed entries", () => {
    const f = patch("deflate.pt", (b) => b.writeUInt16LE(8, central(b, 0) + 10));
    expect(() => openTorchFile(f)).toThrow(UnsupportedFileError);
    expect(() => openTorchFile(f)).toThrow(/compressed/);
  });
  it("refuses duplicate names", () => {
    const f = patch("dup.pt", (b) => b.write("1", central(b, 2) + 46 + 3));
    expect(() => openTorchFile(f)).toThrow(/appears twice/);
  });
  it("refuses overlapping entries", () => {
    const f = patch("overlap.pt", (b) => b.writeUInt32LE(b.readUInt32LE(central(b, 1) + 42), central(b, 2) + 42));
    expect(() => openTorchFile(f)).toThrow(/overlap/);
  });
  it("refuses an entry offset past the end of the file", () => {
    const f = patch("past.pt", (b) => b.writeUInt32LE(0x7fffff00, central(b, 1) + 42));
    expect(() => openTorchFile(f)).toThrow(CorruptFileError);
  });
  it("refuses a damaged entry (CRC) and a truncated archive", () => {
    const f = patch("crc.pt", (b) => (b[64 + 2] = 0x88));
    expect(() => openTorchFile(f)).toThrow(/CRC-32/);
    const t = path.join(tmp, "trunc.pt");
    fs.writeFileSync(t, fs.readFileSync(make("full.pt")).subarray(0, 300));
    expect(() => openTorchFile(t)).toThrow(CorruptFileError);
  });
});
