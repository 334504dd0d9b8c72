/**
 * Names from a file that index a table (issue 18, class 3), and the readers' other strictness
 * points: zip local/central name mismatch, linear LONG decoding, a legacy pickle whose lengths
 * claim more than the file holds.
 *
 * Every lookup of a name read from a file must see only the table's own entries: `torch.constructor`,
 * `torch.__proto__`, `collections.hasOwnProperty`… must not find `Object.prototype`'s members.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { readHypernetworkFile } from "../src/hypernet/file";
import { CorruptFileError, UnsafePickleError } from "../src/io/errors";
import { STORAGE_DTYPES, storageDType, unpickle } from "../src/io/pickle";
import { PyDict, PyTuple } from "../src/io/pyvalue";
import { SafetensorsFile } from "../src/io/safetensors";
import { openTorchFile, readTorchFile, writeTorchFile } from "../src/io/torch-file";
import { ZipReader, writeZip } from "../src/io/zip";
import { thrown } from "./helpers/errors";

const fx = (name: string): string => path.join(__dirname, "fixtures", name);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hostile-tables-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const PROTO_NAMES = ["constructor", "__proto__", "toString", "valueOf", "hasOwnProperty", "isPrototypeOf"];
const MiB = 2 ** 20;

/** Replace every occurrence of `from` by `to` in a buffer (lengths may differ). */
function replaceAll(b: Buffer, from: string, to: string): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (let i = b.indexOf(from, 0, "latin1"); i >= 0; i = b.indexOf(from, at, "latin1")) {
    parts.push(b.subarray(at, i), Buffer.from(to, "latin1"));
    at = i + from.length;
  }
  if (at === 0) throw new Error(`"${JSON.stringify(from)}" not found`);
  parts.push(b.subarray(at));
  return Buffer.concat(parts);
}

/** A copy of a torch-written zip file with its data.pkl edited (entries re-written with fresh CRCs). */
function editZipPickle(src: string, out: string, edit: (pkl: Buffer) => Buffer): string {
  const z = ZipReader.open(src);
  try {
    writeZip(
      out,
      z.entries.map((e) => ({ name: e.name, data: e.name.endsWith("/data.pkl") ? edit(z.read(e)) : z.read(e) })),
      { overwrite: true },
    );
  } finally {
    z.close();
  }
  return out;
}

/** A copy of a torch-written legacy file with text replaced in its pickles (which precede the storages). */
function editLegacy(src: string, out: string, from: string, to: string): string {
  fs.writeFileSync(out, replaceAll(fs.readFileSync(src), from, to));
  return out;
}

// Every table a global's name is looked up in: the storage-type whitelist (also the storage dtype
// map), the callables whitelist for `collections` and for `torch._utils`.
const GLOBALS = [
  { module: "torch", from: "torch\nFloatStorage\n" },
  { module: "collections", from: "collections\nOrderedDict\n" },
  { module: "torch._utils", from: "torch._utils\n_rebuild_tensor_v2\n" },
];

describe("prototype names never pass a whitelist", () => {
  it("the storage-type table has only its own entries", () => {
    for (const name of PROTO_NAMES) {
      expect(storageDType(name), name).toBeUndefined();
      expect(name in STORAGE_DTYPES, name).toBe(false);
    }
    expect(storageDType("HalfStorage")).toBe("F16");
  });

  for (const container of ["zip", "legacy"] as const) {
    for (const g of GLOBALS) {
      it(`${container}: ${g.module}.<prototype name> is refused as unsafe, naming the file and the global`, () => {
        for (const name of PROTO_NAMES) {
          const to = `${g.module}\n${name}\n`;
          const out = path.join(tmp, `${container}-${g.module}-${name}.pt`);
          const file =
            container === "zip"
              ? editZipPickle(fx("views-legit.pt"), out, (p) => replaceAll(p, g.from, to))
              : editLegacy(fx("views-legit-legacy.pt"), out, g.from, to);
          const err = thrown(() => readTorchFile(file));
          expect(err, `${container} ${g.module}.${name}`).toBeInstanceOf(UnsafePickleError);
          expect((err as UnsafePickleError).global).toBe(`${g.module}.${name}`);
          expect(err.message.startsWith(`${file}: refusing to load ${g.module}.${name}`)).toBe(true);
        }
      });
    }
  }

  it("STACK_GLOBAL (protocol 4) with prototype names is refused too", () => {
    for (const mod of ["torch", "collections", "torch._utils"]) {
      for (const name of PROTO_NAMES) {
        const s = (t: string): Buffer => Buffer.concat([Buffer.from([0x8c, t.length]), Buffer.from(t, "latin1")]);
        const pkl = Buffer.concat([Buffer.from([0x80, 0x04]), s(mod), s(name), Buffer.from([0x93, 0x2e])]);
        const err = thrown(() => unpickle(pkl, 0, { file: "x.pt" }));
        expect(err).toBeInstanceOf(UnsafePickleError);
        expect((err as UnsafePickleError).global).toBe(`${mod}.${name}`);
      }
    }
  });

  it("the NovelAI key-rename table: state-dict keys named like prototype members are unexpected keys", () => {
    const t = (shape: number[]) => ({ dtype: "F32" as const, shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
    for (const name of PROTO_NAMES) {
      const sd = () =>
        new PyDict("OrderedDict", [
          ["linear.0.weight", t([8, 4])],
          ["linear.0.bias", t([8])],
          ["linear.1.weight", t([4, 8])],
          ["linear.1.bias", t([4])],
          [name, t([1])],
        ]);
      const file = path.join(tmp, `proto-key-${name}.pt`);
      writeTorchFile(
        file,
        new PyDict("dict", [
          [4, new PyTuple([sd(), sd()])],
          ["layer_structure", [1, 2, 1]],
        ]),
        { overwrite: true },
      );
      const err = thrown(() => readHypernetworkFile(file));
      expect(err.message).toContain(file);
      expect(err.message).toContain(`unexpected key "${name}"`);
    }
  });

  it("the safetensors dtype table: a prototype name as dtype is refused naming the file", () => {
    for (const name of PROTO_NAMES) {
      const header = Buffer.from(JSON.stringify({ w: { dtype: name, shape: [1], data_offsets: [0, 4] } }));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(header.length));
      const file = path.join(tmp, `proto-dtype-${name}.safetensors`);
      fs.writeFileSync(file, Buffer.concat([len, header, Buffer.alloc(4)]));
      const err = thrown(() => SafetensorsFile.open(file).readAll());
      expect(err.message).toContain(file);
      expect(err).not.toBeInstanceOf(TypeError);
      expect(err).not.toBeInstanceOf(RangeError);
    }
  });
});

describe("zip: the local header must name the same entry as the directory", () => {
  const make = (file: string): void =>
    writeZip(file, [
      { name: "archive/data.pkl", data: Buffer.from([0x80, 0x02, 0x7d, 0x2e]) },
      { name: "archive/version", data: Buffer.from("3\n") },
    ]);

  it("a renamed local header is refused (was: read under the directory's name)", () => {
    const file = path.join(tmp, "mismatch.pt");
    make(file);
    const b = fs.readFileSync(file);
    const at = b.indexOf("archive/data.pkl"); // the first occurrence is the local header's
    b[at + "archive/data.".length] = "x".charCodeAt(0); // archive/data.xkl
    fs.writeFileSync(file, b);
    for (const open of [() => ZipReader.open(file), () => openTorchFile(file)]) {
      const err = thrown(open);
      expect(err).toBeInstanceOf(CorruptFileError);
      expect(err.message).toBe(
        `${file}: not a valid zip archive: entry "archive/data.pkl" is called "archive/data.xkl" in its local header (16 bytes); the directory and the header must agree`,
      );
    }
  });

  it("a local name of another length is refused too, and an intact archive still opens", () => {
    const file = path.join(tmp, "mismatch-len.pt");
    make(file);
    expect(readTorchFile(file)).toBeInstanceOf(PyDict);
    const b = fs.readFileSync(file);
    b.writeUInt16LE(15, 26); // first local header: name length 16 → 15
    fs.writeFileSync(file, b);
    expect(thrown(() => ZipReader.open(file)).message).toMatch(/entry "archive\/data\.pkl" is called .* in its local header \(15 bytes\)/);
  });
});

describe("integer opcodes", () => {
  /** LONG4 of v: little-endian two's complement in `n` bytes (computed independently, by division). */
  const long4 = (v: bigint, n: number): Buffer => {
    const b = Buffer.alloc(5 + n);
    b[0] = 0x8b;
    b.writeUInt32LE(n, 1);
    let x = v < 0n ? (1n << BigInt(8 * n)) + v : v;
    for (let i = 0; i < n; i++) {
      b[5 + i] = Number(x % 256n);
      x /= 256n;
    }
    return b;
  };

  it("LONG4 values of up to 4096 bytes decode exactly (positive, negative, small, at the sign boundary)", () => {
    const cases: Array<[bigint, number]> = [
      [2n ** 4000n + 12345n, 501],
      [-(2n ** 3000n) - 7n, 376],
      [2n ** 32767n - 1n, 4096],
      [-(2n ** 32767n), 4096],
      [-1n, 1],
      [127n, 1],
      [-128n, 1],
      [2n ** 53n, 8],
      [-(2n ** 53n) + 1n, 8],
    ];
    for (const [v, n] of cases) {
      const pkl = Buffer.concat([Buffer.from([0x80, 0x02]), long4(v, n), Buffer.from([0x2e])]);
      const got = unpickle(pkl, 0, { file: "x" }).value;
      expect(BigInt(got as number | bigint), `${n} bytes`).toBe(v);
      expect(typeof got).toBe(v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? "number" : "bigint");
    }
  });
});

describe("a legacy pickle whose lengths claim more than the file holds", () => {
  it("is refused before anything that size is read, even in a 700 MB (sparse) file", () => {
    // torch's first three legacy pickles (magic, protocol, system info), then an object pickle
    // that is one BINBYTES claiming 0xFFFFFFF0 bytes; the file is padded (sparse) to 700 MB.
    const src = fs.readFileSync(fx("legacy-format.pt"));
    let end = 0;
    for (let k = 0; k < 3; k++) end = unpickle(src, end, { file: "src" }).end;
    const head = Buffer.concat([src.subarray(0, end), Buffer.from([0x80, 0x02, 0x42, 0xf0, 0xff, 0xff, 0xff])]);
    const file = path.join(tmp, "sparse-legacy.pt");
    fs.writeFileSync(file, head);
    fs.truncateSync(file, 700 * MiB);
    const before = process.memoryUsage().arrayBuffers;
    const err = thrown(() => openTorchFile(file));
    const grown = process.memoryUsage().arrayBuffers - before;
    expect(err).toBeInstanceOf(CorruptFileError);
    expect(err.message).toMatch(
      new RegExp(
        `^${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: pickle is truncated: needs 4294967280 more bytes .*the file is only 734003200 bytes long`,
      ),
    );
    expect(grown).toBeLessThan(8 * MiB); // was: a 512 MB then a 700 MB prefix (1.4 GB RSS)
  });
});
