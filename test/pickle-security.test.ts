import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CorruptFileError, UnsafePickleError, UnsupportedFileError } from "../src/io/errors";
import { unpickle } from "../src/io/pickle";
import { openTorchFile } from "../src/io/torch-file";
import { ZipReader, writeZip } from "../src/io/zip";
import { fixture } from "./helpers/tf";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "pickle-sec-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Hand assembly of pickle opcodes. */
class P {
  private parts: Buffer[] = [Buffer.from([0x80, 0x02])];
  op(...codes: (number | string)[]): this {
    for (const c of codes) this.parts.push(typeof c === "string" ? Buffer.from(c, "latin1") : Buffer.from([c]));
    return this;
  }
  str(s: string): this {
    const b = Buffer.from(s, "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    this.parts.push(Buffer.from("X"), len, b);
    return this;
  }
  short(s: string): this {
    this.parts.push(Buffer.from([0x8c, Buffer.byteLength(s)]), Buffer.from(s));
    return this;
  }
  global(mod: string, name: string): this {
    return this.op(`c${mod}\n${name}\n`);
  }
  int(n: number): this {
    const b = Buffer.alloc(5);
    b[0] = 0x4a;
    b.writeInt32LE(n, 1);
    this.parts.push(b);
    return this;
  }
  long(n: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(n);
    this.parts.push(Buffer.from([0x8a, 8]), b);
    return this;
  }
  raw(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  stop(): Buffer {
    return Buffer.concat([...this.parts, Buffer.from(".")]);
  }
}

const MARK = "(";
const REDUCE = "R";
const TUPLE1 = 0x85;
const TUPLE = "t";

/** Legacy container: magic, protocol and sys-info pickles, then `object`, keys, no storages. */
function legacyFile(name: string, object: Buffer): string {
  const magic = Buffer.alloc(10);
  let m = 0x1950a86a20f9469cfc6cn;
  for (let i = 0; i < 10; i++, m >>= 8n) magic[i] = Number(m & 0xffn);
  const file = path.join(tmp, name);
  fs.writeFileSync(
    file,
    Buffer.concat([
      new P()
        .raw(Buffer.from([0x8a, 10]))
        .raw(magic)
        .stop(),
      new P().op(0x4d, 0xe9, 0x03).stop(), // 1001
      new P().op("}").stop(),
      object,
      new P().op("]").stop(),
    ]),
  );
  return file;
}

function zipFile(name: string, pickle: Buffer, storages: [string, Buffer][] = []): string {
  const file = path.join(tmp, name);
  writeZip(
    file,
    [
      { name: "archive/data.pkl", data: pickle },
      ...storages.map(([k, b]) => ({ name: `archive/data/${k}`, data: b })),
      { name: "archive/version", data: Buffer.from("3\n") },
    ],
    { overwrite: true },
  );
  return file;
}

const run = (bytes: Buffer) => () => unpickle(bytes, 0, { file: "test.pkl" });

describe("malicious pickles are refused before anything runs", () => {
  const marker = path.join(tmp, "pwned");
  const payloads: [string, string, Buffer][] = [
    ["GLOBAL os.system + REDUCE", "os.system", new P().global("os", "system").str(`touch ${marker}`).op(TUPLE1, REDUCE).stop()],
    [
      "STACK_GLOBAL builtins.eval",
      "builtins.eval",
      new P()
        .short("builtins")
        .short("eval")
        .op(0x93)
        .str(`open(${JSON.stringify(marker)}, "w")`)
        .op(TUPLE1, REDUCE)
        .stop(),
    ],
    [
      "subprocess.Popen",
      "subprocess.Popen",
      new P().global("subprocess", "Popen").op("]").str("touch").op("a").str(marker).op("a", TUPLE1, REDUCE).stop(),
    ],
    ["INST os.system", "os.system", new P().op(MARK).str(`touch ${marker}`).op(`ios\nsystem\n`).stop()],
    ["OBJ of posix.system", "posix.system", new P().op(MARK).global("posix", "system").str(`touch ${marker}`).op("o").stop()],
    ["NEWOBJ of builtins.object", "builtins.object", new P().global("builtins", "object").op(")", 0x81).stop()],
    [
      "torch.storage._load_from_bytes",
      "torch.storage._load_from_bytes",
      new P().global("torch.storage", "_load_from_bytes").op(")", REDUCE).stop(),
    ],
    ["torch.load itself", "torch.load", new P().global("torch", "load").op(")", REDUCE).stop()],
  ];

  it("the first payload is genuine: Python's own pickle runs it", () => {
    if (!fs.existsSync("/usr/bin/python3")) {
      console.warn("skipping the proof that the payload is live: /usr/bin/python3 not found");
      return;
    }
    const file = path.join(tmp, "live.pkl");
    fs.writeFileSync(file, payloads[0]![2]);
    spawnSync("/usr/bin/python3", ["-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())", file]);
    expect(fs.existsSync(marker)).toBe(true);
    fs.rmSync(marker);
  });

  it.each(payloads)("%s: raw stream, zip container and legacy container", (_n, global, bytes) => {
    const expectRefused = (fn: () => unknown) => {
      let err: unknown;
      try {
        fn();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UnsafePickleError);
      expect((err as UnsafePickleError).global).toBe(global);
      expect((err as Error).message).toContain(`refusing to load ${global}`);
    };
    expectRefused(run(bytes));
    expectRefused(() => openTorchFile(zipFile("evil.pt", bytes)));
    expectRefused(() => openTorchFile(legacyFile("evil-legacy.pt", bytes)));
    expect(fs.existsSync(marker)).toBe(false);
  });

  it("calls and BUILDs on anything but the whitelisted constructors are refused", () => {
    // REDUCE on a storage class (whitelisted only as a storage type, not as a callable)
    expect(run(new P().global("torch", "FloatStorage").op(")", REDUCE).stop())).toThrow(UnsafePickleError);
    // REDUCE on a string, NEWOBJ of a whitelisted function, OBJ with a non-global
    expect(run(new P().str("os.system").op(")", REDUCE).stop())).toThrow(/REDUCE on a str/);
    expect(run(new P().global("torch._utils", "_rebuild_tensor_v2").op(")", 0x81).stop())).toThrow(UnsafePickleError);
    expect(run(new P().op(MARK).str("x").op("o").stop())).toThrow(UnsafePickleError);
    // BUILD on a list, on a tuple, and with non-dict state on a dict
    expect(run(new P().op("]", "}", "b").stop())).toThrow(/BUILD on a list/);
    expect(run(new P().op(")", "}", "b").stop())).toThrow(/BUILD on a tuple/);
    expect(run(new P().op("}").str("x").op("b").stop())).toThrow(/BUILD with str state/);
    // APPEND / SETITEM onto foreign objects, extension registry
    expect(run(new P().op("}", "N", "a").stop())).toThrow(/APPEND on a dict/);
    expect(run(new P().op(0x82, 1).stop())).toThrow(UnsafePickleError);
    // The allowed forms still work: OrderedDict() with BUILD of dict state
    const ok = unpickle(new P().global("collections", "OrderedDict").op(")", REDUCE, "}", "b").stop(), 0, { file: "ok" });
    expect(ok.value).toMatchObject({ kind: "OrderedDict" });
  });
});

// ---- hostile sizes ------------------------------------------------------------------------------

/** A pickle of one tensor: storage of `numel` floats, the given view. */
function tensorPickle(numel: bigint, size: number[], stride: number[], offset = 0): Buffer {
  const p = new P().global("torch._utils", "_rebuild_tensor_v2").op(MARK);
  p.op(MARK).str("storage").global("torch", "FloatStorage").str("0").str("cpu").long(numel).op(TUPLE, "Q");
  p.int(offset).op(MARK);
  for (const s of size) p.int(s);
  p.op(TUPLE, MARK);
  for (const s of stride) p.int(s);
  p.op(TUPLE, 0x89).global("collections", "OrderedDict").op(")", REDUCE, TUPLE, REDUCE);
  return p.stop();
}

/** Run `fn`, expect it to throw `kind` matching `re`, quickly. */
/**
 * The reader refuses with the right error class and message. Hostile sizes must not make it hang or
 * allocate what the header claims: a quadratic or unbounded reader would run into the describe's
 * timeout below (speed itself is measured in `npm run bench`, not asserted here).
 */
function expectCleanError(fn: () => unknown, kind: new (...a: never[]) => Error, re: RegExp): void {
  expect(fn).toThrow(kind);
  expect(fn).toThrow(re);
}

describe("hostile sizes give clean errors without hanging", { timeout: 60_000 }, () => {
  const floats = (n: number) => Buffer.alloc(4 * n);

  it("a valid tensor pickle reads (control)", () => {
    const f = openTorchFile(zipFile("ok.pt", tensorPickle(4n, [2, 2], [2, 1]), [["0", floats(4)]]));
    expect(f.root).toMatchObject({ kind: "tensor", shape: [2, 2] });
    f.close();
  });
  it("a storage claiming 2^40 elements", () => {
    expectCleanError(
      () => openTorchFile(zipFile("huge.pt", tensorPickle(2n ** 40n, [4], [1]), [["0", floats(4)]])),
      CorruptFileError,
      /claims 1099511627776/,
    );
  });
  it("a tensor whose size × stride runs past its storage", () => {
    expectCleanError(
      () => openTorchFile(zipFile("past.pt", tensorPickle(4n, [2, 3], [3, 1]), [["0", floats(4)]])),
      CorruptFileError,
      /past the end of storage/,
    );
    expectCleanError(
      () => openTorchFile(zipFile("off.pt", tensorPickle(4n, [4], [1], 1), [["0", floats(4)]])),
      CorruptFileError,
      /past the end of storage/,
    );
    expectCleanError(
      () => openTorchFile(zipFile("neg.pt", tensorPickle(4n, [2], [-1], 1), [["0", floats(4)]])),
      CorruptFileError,
      /stride/,
    );
  });
  it("a storage record that is missing", () => {
    expectCleanError(() => openTorchFile(zipFile("missing.pt", tensorPickle(4n, [4], [1]))), CorruptFileError, /missing/);
  });
  it("a zip entry whose offset is past the end of the file", () => {
    const file = zipFile("eof.pt", tensorPickle(4n, [4], [1]), [["0", floats(4)]]);
    const b = fs.readFileSync(file);
    const cen = b.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]), b.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02])) + 4);
    b.writeUInt32LE(0xfffff000, cen + 42);
    fs.writeFileSync(file, b);
    expectCleanError(() => openTorchFile(file), CorruptFileError, /outside the data area/);
  });
  it("a truncated pickle", () => {
    // Every proper prefix of a real torch pickle is refused as truncated, never misread.
    const zip = ZipReader.open(fixture("hn-half.pt"));
    const pkl = zip.read("hn-half/data.pkl");
    zip.close();
    const storage = { key: "0", dtype: "F16" as const, numel: 1 << 20, readElements: () => new Uint8Array(0) };
    for (let cut = 0; cut < pkl.length; cut += 7) {
      expect(
        () => unpickle(pkl.subarray(0, cut), 0, { file: "cut.pkl", persistentLoad: (r) => ({ ...storage, numel: r.numel }) }),
        `cut at ${cut}`,
      ).toThrow(/truncated/);
    }
    const whole = tensorPickle(4n, [4], [1]);
    expectCleanError(
      () => openTorchFile(zipFile("cut.pt", whole.subarray(0, whole.length - 3), [["0", floats(4)]])),
      CorruptFileError,
      /truncated/,
    );
  });
  it("a million MARKs, a million nested lists", () => {
    expectCleanError(run(new P().raw(Buffer.alloc(1_000_000, "(")).stop()), CorruptFileError, /nested MARKs/);
    expectCleanError(run(new P().raw(Buffer.alloc(2_000_000, "(]")).stop()), CorruptFileError, /nested MARKs/);
    const deep = new P().raw(Buffer.alloc(1_000_000, "]")).raw(Buffer.alloc(999_999, "a")).stop();
    expectCleanError(run(deep), CorruptFileError, /nested more than 1000 levels/);
    // A self-containing list is refused too (it would hang naive consumers).
    expectCleanError(run(new P().op("]", 0x71, 0, 0x68, 0, "a").stop()), UnsupportedFileError, /cycle/);
  });
  it("huge memo indices and string lengths", () => {
    expectCleanError(run(new P().op("j", "\xff\xff\xff\xff").stop()), CorruptFileError, /memo entry 4294967295/);
    expectCleanError(run(new P().op("X", "\x00\x00\x00\x80", "abc").stop()), CorruptFileError, /truncated: needs 2147483648/);
    expectCleanError(run(new P().op(0x8d, "\xff\xff\xff\xff\xff\xff\xff\x7f", "abc").stop()), CorruptFileError, /truncated/);
    expectCleanError(run(new P().op(0x8b, "\xff\xff\xff\x7f").stop()), UnsupportedFileError, /too large/);
    expectCleanError(run(new P().op(0x95, "\xff\xff\xff\xff\xff\xff\xff\xff").stop()), CorruptFileError, /truncated/);
  });
  it("unknown opcodes and leftovers", () => {
    expectCleanError(run(new P().op(0xff).stop()), CorruptFileError, /unknown opcode 0xff/);
    expectCleanError(run(new P().op("N", "N").stop()), CorruptFileError, /exactly one value/);
    expectCleanError(run(new P().global("torch", "FloatStorage").stop()), UnsafePickleError, /appears as a value/);
  });
});
