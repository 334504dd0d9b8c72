/**
 * Stride-0 and overlapping views (issue 18, class 2). The fixtures were written by PyTorch 1.13
 * (`test/scripts/make_hostile_views.py`): each is under 50 KB (one is 1 MiB of zeros) and torch.load
 * reads each instantly, but their views describe up to 2^40 elements. Describing a file (`inspect`)
 * must not read or expand values; reading values must stay within the budget of `view-budget.ts`
 * and refuse the rest with an error naming the file and the tensor; legitimate views (broadcasts,
 * sliding windows, transposes, shared storages) must still load exactly as torch reads them.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { inspectFile, main } from "../src/cli/main";
import { readHypernetworkFile } from "../src/hypernet/file";
import { MUTATIONS, isCleanError, rng32 } from "../scripts/fuzz";
import { CorruptFileError, UnsafePickleError, UnsupportedFileError } from "../src/io/errors";
import { allocValues, gatherTensor, type HostTensor } from "../src/io/host-tensor";
import type { PyDict, PyValue } from "../src/io/pyvalue";
import { describeTorchFile, openTorchFile, readTorchFile } from "../src/io/torch-file";
import { TOTAL_FACTOR, TOTAL_FLOOR_BYTES, VIEW_FLOOR_BYTES } from "../src/io/view-budget";
import { openWeights } from "../src/io/weight-source";
import { thrown } from "./helpers/errors";

const fx = (name: string): string => path.join(__dirname, "fixtures", name);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hostile-views-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Growth of array-buffer memory (typed arrays, Buffers) while `fn` runs, with its result kept alive. */
function arrayBufferGrowth<T>(fn: () => T): { value: T; grown: number } {
  const before = process.memoryUsage().arrayBuffers;
  const value = fn();
  return { value, grown: process.memoryUsage().arrayBuffers - before };
}

const HOSTILE = [
  { file: "views-expand27.pt", shape: [2 ** 27] },
  { file: "views-expand27-legacy.pt", shape: [2 ** 27] },
  { file: "views-expand31.pt", shape: [2 ** 31] },
  { file: "views-overlap.pt", shape: [8192, 4096] },
  { file: "views-overlap40.pt", shape: Array(40).fill(2) as number[] },
];
const MiB = 2 ** 20;

describe("describing a file never expands its views", () => {
  for (const { file, shape } of HOSTILE) {
    it(`${file}: dtype and shape come back, no values are allocated`, () => {
      const { value, grown } = arrayBufferGrowth(() => describeTorchFile(fx(file)));
      const w = (value as PyDict).get("w") as HostTensor;
      expect(w.dtype).toBe("F32");
      expect(w.shape).toEqual(shape);
      // The old reader allocated 2 × 512 MiB for expand(2**27) and threw a RangeError for 2**31.
      expect(grown).toBeLessThan(4 * MiB);
      expect(() => w.data).toThrow(/only the dtype and shape of this tensor were read/);
    });
  }

  it("inspect lists the A1111 network whose weights are views of one element, without reading them", () => {
    const { value: r, grown } = arrayBufferGrowth(() => inspectFile(fx("views-hn-a1111.pt")));
    // dims 768 and 1280, layer_structure [1, 4, 1]: per module 4d·d + 4d + d·4d + d values, k and v.
    const per = (d: number): number => 2 * (4 * d * d + 4 * d + d * 4 * d + d);
    expect(r.dims).toEqual([768, 1280]);
    expect(r.layer_structure).toEqual([1, 4, 1]);
    expect(r.parameters).toBe(per(768) + per(1280));
    expect(r.dtype).toBe("F32");
    expect(grown).toBeLessThan(4 * MiB); // the old reader decoded all 142 MB first
  });
});

describe("reading values refuses views that expand past the budget", () => {
  for (const { file } of HOSTILE) {
    it(`${file}: a clear UnsupportedFileError naming the file and the tensor`, () => {
      const f = fx(file);
      const { value: err, grown } = arrayBufferGrowth(() => thrown(() => readTorchFile(f)));
      expect(err).toBeInstanceOf(UnsupportedFileError);
      expect(err.message.startsWith(`${f}: tensor "w" is a view of `)).toBe(true);
      expect(err.message).toMatch(/over a storage of [\d,]+ elements?: reading it would take .* Refusing to expand it\./);
      expect(err.message).toMatch(/save each tensor with \.contiguous\(\)/);
      expect(grown).toBeLessThan(4 * MiB);
    });
  }

  it("the per-file budget refuses many plain views of one storage (each within the per-tensor rule)", () => {
    const f = fx("views-tied-many.pt"); // 100 × a full view of one 1 MiB storage
    const size = fs.statSync(f).size;
    const err = thrown(() => readTorchFile(f));
    expect(err).toBeInstanceOf(UnsupportedFileError);
    expect(err.message).toContain(`${f}: reading tensor "t`);
    expect(err.message).toContain(`${size.toLocaleString("en-US")}-byte file`);
    expect(err.message).toContain(`more than ${TOTAL_FACTOR} × its size`);
    // It gets as far as the budget allows: the refused tensor is the first that would pass it.
    const limit = TOTAL_FACTOR * size + TOTAL_FLOOR_BYTES;
    const refused = Number(/reading tensor "t(\d+)"/.exec(err.message)![1]);
    expect(refused).toBe(Math.floor(limit / MiB));
    // One tensor alone is fine.
    const src = openWeights(f);
    try {
      expect(src.get("t5").data.length).toBe(2 ** 18);
    } finally {
      src.close();
    }
  });

  it("the A1111 network: readHypernetworkFile and convert refuse, naming the tensor; convert writes nothing", async () => {
    const f = fx("views-hn-a1111.pt");
    const err = thrown(() => readHypernetworkFile(f));
    expect(err).toBeInstanceOf(UnsupportedFileError);
    expect(err.message).toContain(
      `${f}: tensor "1280/0/linear.0.weight" is a view of 6,553,600 elements (shape [5120, 1280], stride (0, 0)) over a storage of 1 element`,
    );
    const out = path.join(tmp, "converted.pt");
    const errors: string[] = [];
    const saved = console.error;
    console.error = (...a: unknown[]) => void errors.push(a.join(" "));
    try {
      expect(await main(["convert", f, out])).toBe(1);
    } finally {
      console.error = saved;
    }
    expect(errors.join("\n")).toContain('tensor "1280/0/linear.0.weight"');
    expect(fs.existsSync(out)).toBe(false); // was: a 142 MB file from 2 KB
  });

  it("weight sources (loadBaseModel's path) refuse by key", () => {
    const src = openWeights(fx("views-expand27.pt"));
    try {
      expect(src.shapeOf("w")).toEqual([2 ** 27]);
      const err = thrown(() => src.get("w"));
      expect(err).toBeInstanceOf(UnsupportedFileError);
      expect(err.message).toContain(`${fx("views-expand27.pt")}: tensor "w" is a view of 134,217,728 elements`);
    } finally {
      src.close();
    }
  });

  it("no typed-array length error escapes: impossible sizes become errors naming the tensor", () => {
    for (const n of [2 ** 33, 2 ** 53, -1, 0.5]) {
      const err = thrown(() => allocValues("F32", n, [n], 'big.pt: tensor "x"'));
      expect(err.constructor).toBe(Error);
      expect(err.message).toMatch(/^big\.pt: tensor "x": F32 \[.*\] has .* elements, more than can be held in memory here/);
    }
  });
});

describe("legitimate views load exactly as torch reads them", () => {
  const expected = JSON.parse(fs.readFileSync(fx("views-legit.json"), "utf8")) as Record<
    string,
    { dtype: string; shape: number[]; stride: number[]; values: number[] }
  >;
  const DT: Record<string, string> = { "torch.float32": "F32", "torch.float16": "F16", "torch.int64": "I64" };

  for (const file of ["views-legit.pt", "views-legit-legacy.pt"]) {
    it(`${file}: every view equals torch's values (broadcast, windows, transpose, shared storage)`, () => {
      const root = readTorchFile(fx(file)) as PyDict;
      expect([...root.map.keys()].sort()).toEqual(Object.keys(expected).sort());
      for (const [key, e] of Object.entries(expected)) {
        const t = root.get(key) as PyValue as HostTensor;
        expect(t.dtype, key).toBe(DT[e.dtype]);
        expect(t.shape, key).toEqual(e.shape);
        expect(Array.from(t.data), key).toEqual(e.values);
      }
      // Some of them really are stride-0 / overlapping views in the file (not copies torch made).
      const raw = openTorchFile(fx(file));
      try {
        const strides = Object.keys(expected).map((k) => ((raw.root as PyDict).get(k) as unknown as { stride: number[] }).stride);
        expect(strides).toEqual(Object.values(expected).map((e) => e.stride));
      } finally {
        raw.close();
      }
    });
  }

  it("a broadcast view up to the per-tensor floor still loads (and matches a hand-made gather)", () => {
    // 4 stored floats broadcast to [2^20, 4] (16 MiB as float32 = VIEW_FLOOR_BYTES): allowed.
    const span = Buffer.alloc(16);
    [0.5, -1, 2, 8].forEach((v, i) => span.writeFloatLE(v, i * 4));
    const rows = VIEW_FLOOR_BYTES / 16;
    const t = gatherTensor(span, "F32", [rows, 4], [0, 1]);
    expect(t.data.length).toBe(rows * 4);
    expect(Array.from(t.data.subarray(0, 8))).toEqual([0.5, -1, 2, 8, 0.5, -1, 2, 8]);
    expect(Array.from(t.data.subarray(t.data.length - 4))).toEqual([0.5, -1, 2, 8]);
  });
});

describe("the fuzzer's mutation kinds for these classes make the cases they name", () => {
  type Def = (typeof MUTATIONS)[number];
  const def = (name: string): Def => MUTATIONS.find((m) => m.name === name)!;
  /** The fuzzer's Rand interface over its seeded generator. */
  const rand = (seed: number) => {
    const next = rng32(seed);
    const int = (n: number): number => Math.floor(next() * n);
    return {
      next,
      int,
      range: (lo: number, hi: number) => lo + int(hi - lo + 1),
      pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]!,
      chance: (p: number) => next() < p,
    };
  };
  const seed = (name: string, kind: string) => ({ name, kind, ext: ".pt", bytes: fs.readFileSync(fx(name)) });
  // Small storages (views-legit*: ≤ 77 elements) and large ones (hypernetwork weights, 24-element legacy).
  const seeds = [
    seed("views-legit.pt", "zip"),
    seed("views-legit-legacy.pt", "legacy"),
    seed("hn-half.pt", "zip"),
    seed("legacy-format.pt", "legacy"),
  ];
  /** Apply mutation `name` with case seeds 1…n to each seed; return [file, error or undefined]. */
  const cases = (name: string, n: number, kinds = ["zip", "legacy"]): Array<[string, Error | undefined]> => {
    const out: Array<[string, Error | undefined]> = [];
    for (const seed of seeds.filter((s) => kinds.includes(s.kind))) {
      for (let cs = 1; cs <= n; cs++) {
        const file = path.join(tmp, `${name}-${seed.name}-${cs}.pt`);
        const m = def(name);
        fs.writeFileSync(file, m.fn(seed as Parameters<Def["fn"]>[0], rand(cs) as unknown as Parameters<Def["fn"]>[1]));
        let err: Error | undefined;
        try {
          readTorchFile(file);
        } catch (e) {
          err = e as Error;
        }
        out.push([file, err]);
      }
    }
    return out;
  };

  it("pkl-stride0-view and pkl-overlap-view: every case loads or is refused cleanly, many by the view budget", () => {
    for (const name of ["pkl-stride0-view", "pkl-overlap-view"]) {
      const results = cases(name, 8);
      for (const [file, err] of results) if (err) expect(isCleanError(err, file), `${file}: ${err.message}`).toBe(true);
      const refused = results.filter(([, e]) => e instanceof UnsupportedFileError && /is a view of/.test(e.message)).length;
      expect(refused, name).toBeGreaterThanOrEqual(4); // of 32 (the rest load, or reach past their storage)
    }
  });

  it("pkl-proto-global: every case is refused as unsafe, naming an Object.prototype member", () => {
    for (const [file, err] of cases("pkl-proto-global", 10)) {
      expect(err, file).toBeInstanceOf(UnsafePickleError);
      expect((err as UnsafePickleError).global).toMatch(
        /constructor|__proto__|toString|valueOf|hasOwnProperty|isPrototypeOf|__defineGetter__|propertyIsEnumerable/,
      );
    }
  });

  it("zip-name-mismatch: every case is refused because the local header names another entry", () => {
    for (const [file, err] of cases("zip-name-mismatch", 10, ["zip"])) {
      expect(err, file).toBeInstanceOf(CorruptFileError);
      expect(err!.message).toMatch(
        /in its local header .*the directory and the header must agree|has no local header|outside the data area|runs past the data area|overlap/,
      );
    }
  });
});
