/**
 * Safetensors files the reference reader (the Rust `safetensors` crate) refuses must be refused
 * here too, with a `CorruptFileError` naming the file and the tensor: duplicate keys, gaps,
 * overlaps and trailing bytes in the data section, invalid UTF-8 names, shapes and offsets written
 * as fractions, and headers whose entry count is out of proportion to the data. The Python
 * `safetensors` package is not installed on every machine, so the bytes are built by hand here;
 * each case's expected outcome follows the crate's `read_metadata`/`validate` rules.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { CorruptFileError, UnsupportedFileError } from "../src/io/errors";
import { FREE_HEADER_ENTRIES, SafetensorsFile, readSafetensors } from "../src/io/safetensors";
import { JsonFloat, type StrictJson, parseStrictJson } from "../src/io/strict-json";
import { readHypernetworkFile } from "../src/hypernet/file";
import { MUTATIONS, Rand, rng32, seedCorpus } from "../scripts/fuzz";
import { fixture } from "./helpers/tf";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hostile-st-"));
let counter = 0;

/** A safetensors file from raw header bytes (no padding added) and data bytes. */
function build(header: string | Buffer, data: Buffer = Buffer.alloc(0)): string {
  const h = typeof header === "string" ? Buffer.from(header, "utf8") : header;
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  const file = path.join(dir, `case-${counter++}.safetensors`);
  fs.writeFileSync(file, Buffer.concat([len, h, data]));
  return file;
}

const f32 = (...v: number[]): Buffer => Buffer.from(new Float32Array(v).buffer);
const entry = (shape: number[] | string, b: number | string, e: number | string, dtype = "F32"): string =>
  `{"dtype":"${dtype}","shape":${typeof shape === "string" ? shape : JSON.stringify(shape)},"data_offsets":[${b},${e}]}`;

/** Open `file` expecting a CorruptFileError whose message names the file and matches `re`. */
function refused(file: string, re: RegExp): CorruptFileError {
  let caught: unknown;
  try {
    SafetensorsFile.open(file).close();
  } catch (err) {
    caught = err;
  }
  expect(caught, `${path.basename(file)} should be refused`).toBeInstanceOf(CorruptFileError);
  const e = caught as CorruptFileError;
  expect(e.message).toContain(file);
  expect(e.message).toMatch(re);
  return e;
}

describe("safetensors: as strict as the reference reader", () => {
  it("a well-formed hand-built file loads with its values (the baseline the cases below break)", () => {
    const file = build(`{"__metadata__":{"k":"v"},"a":${entry([2], 0, 8)},"b":${entry([1], 8, 12)}}`, f32(1.5, -2, 7));
    const { tensors, metadata } = readSafetensors(file);
    expect([...tensors.get("a")!.data]).toEqual([1.5, -2]);
    expect([...tensors.get("b")!.data]).toEqual([7]);
    expect(metadata).toEqual({ k: "v" });
  });

  it("duplicate keys are refused, naming the key (JSON.parse would keep the last silently)", () => {
    const text = `{"a":${entry([1], 0, 4)},"a":${entry([1], 4, 8)}}`;
    expect(Object.keys(JSON.parse(text) as object)).toEqual(["a"]); // what a lenient reader sees
    refused(build(text, f32(1, 2)), /tensor "a" appears twice in the header/);
    refused(build(`{"__metadata__":{},"a":${entry([1], 0, 4)},"__metadata__":{"x":"y"}}`, f32(1)), /__metadata__ appears twice/);
    // inside an entry and inside the metadata too
    refused(
      build(`{"a":{"dtype":"F32","shape":[1],"shape":[2],"data_offsets":[0,4]}}`, f32(1)),
      /"shape" appears twice.*in the entry for "a"/,
    );
    refused(build(`{"__metadata__":{"x":"1","x":"2"},"a":${entry([1], 0, 4)}}`, f32(1)), /"x" appears twice.*"__metadata__"/);
  });

  it("gaps, overlaps and trailing bytes are refused: tensors must tile the data section", () => {
    refused(build(`{"a":${entry([1], 0, 4)},"b":${entry([1], 8, 12)}}`, f32(1, 2, 3)), /4 unused bytes before tensor "b".*"a" ends at 4/);
    refused(build(`{"a":${entry([1], 4, 8)}}`, f32(1, 2)), /4 unused bytes before tensor "a".*starts at 0/);
    refused(
      build(`{"a":${entry([2], 0, 8)},"b":${entry([1], 4, 8)}}`, f32(1, 2)),
      /tensors "a" and "b" overlap|tensors "b" and "a" overlap/,
    );
    refused(build(`{"a":${entry([1], 0, 4)},"b":${entry([1], 0, 4)}}`, f32(1)), /overlap/); // two names, one blob
    refused(build(`{"a":${entry([1], 0, 4)}}`, f32(1, 2)), /4 bytes after the last tensor's data/);
    refused(build(`{}`, f32(1)), /4 bytes after the last tensor's data/);
    // the header order does not matter, only the byte ranges
    const { tensors } = readSafetensors(build(`{"b":${entry([1], 4, 8)},"a":${entry([1], 0, 4)}}`, f32(3, 4)));
    expect([...tensors.get("b")!.data]).toEqual([4]);
  });

  it("invalid UTF-8 anywhere in the header is refused, quoting the bytes", () => {
    const name = Buffer.concat([Buffer.from('{"w'), Buffer.from([0xff, 0xfe]), Buffer.from(`":${entry([1], 0, 4)}}`)]);
    refused(build(name, f32(1)), /string "w\\xff\\xfe" is not valid UTF-8/);
    const overlong = Buffer.concat([
      Buffer.from('{"__metadata__":{"k":"'),
      Buffer.from([0xc0, 0xaf]),
      Buffer.from(`"},"a":${entry([1], 0, 4)}}`),
    ]);
    refused(build(overlong, f32(1)), /not valid UTF-8.*"__metadata__"/);
    refused(build(`{"\\ud800x":${entry([1], 0, 4)}}`, f32(1)), /unpaired surrogate/);
    // valid non-ASCII names load, raw or escaped, and mean the same thing
    const raw = readSafetensors(build(`{"gewicht-ä😀":${entry([1], 0, 4)}}`, f32(5))).tensors;
    const esc = readSafetensors(build(`{"gewicht-\\u00e4\\ud83d\\ude00":${entry([1], 0, 4)}}`, f32(5))).tensors;
    expect([...raw.keys()]).toEqual(["gewicht-ä😀"]);
    expect([...esc.keys()]).toEqual(["gewicht-ä😀"]);
  });

  it("shapes and offsets must be whole numbers written as integers", () => {
    refused(build(`{"a":${entry("[1.0]", 0, 4)}}`, f32(1)), /tensor "a" has shape \[1 \(written as a fraction or exponent\)\]/);
    refused(build(`{"a":${entry("[1e0]", 0, 4)}}`, f32(1)), /tensor "a" has shape/);
    refused(build(`{"a":${entry("[-1]", 0, 4)}}`, f32(1)), /tensor "a" has shape \[-1\]/);
    refused(build(`{"a":${entry('"[1]"', 0, 4)}}`, f32(1)), /tensor "a" has shape "\[1\]"/);
    refused(build(`{"a":${entry("[18014398509481984]", 0, 4)}}`, f32(1)), /larger than 2\^53/);
    refused(build(`{"a":${entry([1], 0, "4.0")}}`, f32(1)), /tensor "a" has data_offsets \[0, 4 \(written as a fraction/);
    refused(build(`{"a":${entry([1], 0, 4)},"b":{"dtype":"F32","shape":[1]}}`, f32(1)), /tensor "b" has data_offsets missing/);
    refused(build(`{"a":${entry([3], 0, 4)}}`, f32(1)), /tensor "a" is F32 \[3\] but its data range \[0, 4\) holds 4 bytes/);
    // a zero anywhere makes the tensor empty, however large the other dimensions (as in the crate)
    const f = SafetensorsFile.open(build(`{"a":${entry([0, 2 ** 40], 0, 0)},"b":${entry([1], 0, 4)}}`, f32(9)));
    expect(f.read("a").data.length).toBe(0);
    expect([...f.read("b").data]).toEqual([9]);
    f.close();
  });

  it("dtypes: unknown ones are corrupt, valid-but-undecoded ones unsupported", () => {
    refused(build(`{"a":${entry([1], 0, 4, "F33")}}`, f32(1)), /tensor "a" has unknown dtype "F33"/);
    expect(() => SafetensorsFile.open(build(`{"a":${entry([2], 0, 4, "U16")}}`, f32(1)))).toThrow(UnsupportedFileError);
  });

  it("metadata is string → string; null counts as absent; prototype names are ordinary keys", () => {
    refused(build(`{"__metadata__":{"k":1},"a":${entry([1], 0, 4)}}`, f32(1)), /__metadata__\["k"\] is not a string/);
    refused(build(`{"__metadata__":["k"],"a":${entry([1], 0, 4)}}`, f32(1)), /__metadata__ is not an object/);
    expect(readSafetensors(build(`{"__metadata__":null,"a":${entry([1], 0, 4)}}`, f32(1))).metadata).toEqual({});
    const f = SafetensorsFile.open(build(`{"__metadata__":{"constructor":"c"},"__proto__":${entry([1], 0, 4)}}`, f32(3)));
    expect(f.keys()).toEqual(["__proto__"]);
    expect([...f.read("__proto__").data]).toEqual([3]);
    expect(f.metadata.constructor).toBe("c");
    expect(f.metadata.toString).toBeUndefined(); // no inherited members to mistake for metadata
    f.close();
  });

  it("not JSON, or JSON with anything after it, or nested past the limit, is refused", () => {
    refused(build(`{"a":${entry([1], 0, 4)}}\u0000`, f32(1)), /unexpected text after the end/);
    refused(build(`\ufeff{}`), /header is not strict JSON: expected '\{'/);
    refused(build(`[]`), /expected '\{'/);
    refused(
      build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":${"[".repeat(200)}${"]".repeat(200)}}}`, f32(1)),
      /nested more than 128 levels deep.*"a"/,
    );
    refused(build(`{"a":${entry([1], 0, 4)},}`, f32(1)), /header is not strict JSON/);
    // unknown fields inside an entry are ignored, as the reference reader ignores them
    expect(
      readSafetensors(build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"note":{"x":[1.5]}}}`, f32(2))).tensors.get("a")!.data[0],
    ).toBe(2);
    // spaces after the object are padding, as the reference writer pads to 8 bytes
    expect(readSafetensors(build(`{"a":${entry([1], 0, 4)}}     `, f32(2))).tensors.size).toBe(1);
  });

  it("a header of many empty tensors is refused before it costs memory; up to the free count loads", () => {
    const parts = (n: number): string => Array.from({ length: n }, (_, k) => `"t${k}":${entry([0], 0, 0)}`).join(",");
    const many = build(`{${parts(50_000)}}`);
    refused(many, new RegExp(`more than ${FREE_HEADER_ENTRIES} entries for 0 bytes of data`));
    const ok = SafetensorsFile.open(build(`{${parts(FREE_HEADER_ENTRIES)}}`));
    expect(ok.entries.size).toBe(FREE_HEADER_ENTRIES);
    ok.close();
    refused(build(`{${parts(FREE_HEADER_ENTRIES + 1)}}`), /more than 10000 entries/);
  });

  it("every fixture and the shipped model still load (real files tile their data exactly)", () => {
    for (const f of ["ldm-tiny.io.safetensors", "ldm-tiny.unet.safetensors", "text-vae-tiny.safetensors", "hn-plain121.io.safetensors"]) {
      const sf = SafetensorsFile.open(fixture(f));
      expect(sf.entries.size).toBeGreaterThan(0);
      sf.close();
    }
    SafetensorsFile.open(path.join(__dirname, "..", "models", "tiny", "model.safetensors")).close();
  });
});

describe("the fuzz kinds for these classes", () => {
  it("every file st-duplicate-key, st-gap, st-bad-utf8, st-float-shape, st-many-entries and hn-alias-width make is refused cleanly", () => {
    const work = fs.mkdtempSync(path.join(dir, "seeds-"));
    fs.writeFileSync(path.join(work, "host.pt"), "the .pt the corpus's .optim belongs to");
    const seeds = seedCorpus(work, path.join(work, "host.pt")).filter((x) => x.kind === "safetensors");
    expect(seeds.map((x) => x.name)).toContain("generated-hn.safetensors");
    const kinds = ["st-duplicate-key", "st-gap", "st-bad-utf8", "st-float-shape", "st-many-entries", "hn-alias-width"];
    for (const kind of kinds) {
      const def = MUTATIONS.find((m) => m.name === kind)!;
      const usable = seeds.filter((x) => !def.seeds || def.seeds.test(x.name));
      for (let i = 0; i < 12; i++) {
        const r = new Rand(rng32(1000 * kinds.indexOf(kind) + i));
        const seed = r.pick(usable);
        const file = path.join(work, `${kind}-${i}.safetensors`);
        fs.writeFileSync(file, def.fn(seed, r));
        const where = `${kind} #${i} on ${seed.name}`;
        if (kind !== "hn-alias-width") {
          expect(() => SafetensorsFile.open(file).close(), where).toThrow(CorruptFileError);
        } else {
          SafetensorsFile.open(file).close(); // a valid safetensors file …
        }
        expect(() => readHypernetworkFile(file, { onWarning: () => undefined }), where).toThrow(file); // … but never a hypernetwork to load
      }
    }
  });
});

/** The strict reader's value as plain JSON (floats unwrapped, maps as objects), for comparison with JSON.parse. */
function plain(v: StrictJson): unknown {
  if (v instanceof JsonFloat) return v.value;
  if (typeof v === "bigint") return Number(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, plain(x)]));
  return v;
}

describe("strict JSON reader", () => {
  it("reads the fixtures' headers exactly as JSON.parse does", () => {
    for (const f of ["ldm-tiny.unet.safetensors", "text-vae-tiny.safetensors", "hn-half.io.safetensors"]) {
      const b = fs.readFileSync(fixture(f));
      const h = b.subarray(8, 8 + Number(b.readBigUInt64LE(0)));
      expect(plain(parseStrictJson(h))).toEqual(JSON.parse(h.toString("utf8")));
    }
  });

  it("keeps integer and fraction apart, and big integers exact", () => {
    const v = parseStrictJson(`[4, 4.0, 1e2, -0.5, 9007199254740993, "a\\"b\\\\c\\n\\u0041", true, null]`) as StrictJson[];
    expect(v[0]).toBe(4);
    expect(v[1]).toEqual(new JsonFloat(4));
    expect(v[2]).toEqual(new JsonFloat(100));
    expect(v[3]).toEqual(new JsonFloat(-0.5));
    expect(v[4]).toBe(9007199254740993n);
    expect(v[5]).toBe('a"b\\c\nA');
    expect(v.slice(6)).toEqual([true, null]);
    for (const bad of ["01", "1.", ".5", "+1", "[1,]", "{'a':1}", '"\t"', "nul", '"\\x"', "1 2"]) {
      expect(() => parseStrictJson(bad), bad).toThrow(/at byte/);
    }
  });
});
