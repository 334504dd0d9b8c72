/**
 * Textual-inversion embeddings: A1111 `.pt` (zip and legacy torch formats), diffusers `.bin` and
 * kohya `.safetensors` files written by PyTorch (test/scripts/make_embedding_fixtures.py) load with
 * the vectors PyTorch saved; names are found in prompts as A1111 finds them; and the vectors replace
 * the token embeddings before the CLIP transformer — checked against the tiny model's text encoder
 * run by hand on an input-embedding tensor built here from its raw weights.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BaseModel } from "../src/pipeline/base-model";
import { causalMask } from "../src/text/clip";
import { type EmbeddingDatabase, loadEmbeddings, readEmbeddingFile } from "../src/text/embeddings";
import { encodePrompts } from "../src/text/encode-prompts";
import { loadTinyModel } from "../src/tiny/model";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

const DIR = fixture("embeddings");
const EXPECTED = JSON.parse(fs.readFileSync(fixture("embeddings.json"), "utf8")) as Record<
  string,
  {
    vectors: number[][];
    storedName: string | null;
    step: number | null;
    sdCheckpoint: string | null;
    sdCheckpointName: string | null;
    layout: string;
  }
>;

let base: BaseModel;
let db: EmbeddingDatabase;

beforeAll(async () => {
  await setupBackend();
  base = loadTinyModel();
  db = loadEmbeddings(DIR, base.tokenizer, { width: base.textEncoder.config.width });
});
afterAll(() => base?.dispose());

describe("embedding files", () => {
  it("each layout loads with the vectors and fields PyTorch saved", () => {
    const files: Record<string, string> = {
      cyan: "cyan.pt",
      red: "red.pt",
      "magenta star": "magenta star.bin",
      triangles: "triangles.safetensors",
      star: "sub/star.pt",
    };
    for (const [name, file] of Object.entries(files)) {
      const e = readEmbeddingFile(path.join(DIR, file));
      const want = EXPECTED[name]!;
      expect(e.name).toBe(name);
      expect([e.count, e.width]).toEqual([want.vectors.length, 80]);
      expectClose(e.vectors, want.vectors.flat(), 0);
      expect({
        storedName: e.storedName,
        step: e.step,
        sdCheckpoint: e.sdCheckpoint,
        sdCheckpointName: e.sdCheckpointName,
        layout: e.layout,
      }).toEqual({
        storedName: want.storedName,
        step: want.step,
        sdCheckpoint: want.sdCheckpoint,
        sdCheckpointName: want.sdCheckpointName,
        layout: want.layout,
      });
      expect(e.hash).toMatch(/^[0-9a-f]{12}$/);
    }
  });

  it("a folder: usable ones registered, others skipped or listed with the reason, empty files ignored", () => {
    expect(db.names).toEqual(["cyan", "magenta star", "red", "star", "triangles"]);
    expect(db.skipped.map((s) => [s.name, s.reason])).toEqual([
      ["wide", expect.stringMatching(/768 wide but the text encoder is 80 wide/)],
      ["zebra", expect.stringMatching(/words the tokenizer does not know/)],
    ]);
    expect(db.errors.map((s) => s.name).sort()).toEqual(["sdxl", "two-terms"]);
    expect(db.errors.find((e) => e.name === "sdxl")!.reason).toMatch(/sdxl\.safetensors: an SDXL embedding/);
    expect(db.errors.find((e) => e.name === "two-terms")!.reason).toMatch(/two-terms\.pt: string_to_param has 2 terms/);
  });

  it("bad input: clear errors naming the file", () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "emb-"));
    try {
      const junk = path.join(tmp, "junk.pt");
      fs.writeFileSync(junk, "not a pickle");
      expect(() => readEmbeddingFile(junk)).toThrow(/junk\.pt: not a torch file/);
      expect(() => readEmbeddingFile(path.join(tmp, "missing.safetensors"))).toThrow(/missing\.safetensors: no such embedding file/);
      expect(() => readEmbeddingFile(path.join(tmp, "x.txt"))).toThrow(/x\.txt: not an embedding file/);
      expect(() => loadEmbeddings(path.join(tmp, "nope"), base.tokenizer)).toThrow(/embedding folder .*nope does not exist/);
      expect(() => loadEmbeddings(junk, base.tokenizer)).toThrow(/is a file, not a folder/);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe("finding embedding names in prompts (A1111's find_embedding_at_position)", () => {
  it("the longest name wins, multi-word names match their whole token sequence", () => {
    const tok = (t: string): number[] => base.tokenizer.tokenize(t);
    const words = tok("a magenta star and a star and a magenta circle");
    expect(db.findAt(words, 1)).toMatchObject({ embedding: { name: "magenta star" }, vectors: 1, length: 2 });
    expect(db.findAt(words, 2)).toMatchObject({ embedding: { name: "star" }, vectors: 1, length: 1 });
    expect(db.findAt(words, 8)).toBeUndefined(); // "magenta circle": no embedding starts "magenta circle"
    expect(db.findAt(tok("triangles"), 0)).toMatchObject({ vectors: 3, length: 1 });
  });
});

/** The tiny text encoder's output for `ids` (one window) with `fixes` written over the token rows, computed by hand. */
function byHand(ids: number[], fixes: Array<[number, number[][]]>): Float32Array {
  const enc = base.textEncoder;
  const width = enc.config.width;
  const tokTable = enc.embeddings.token_embedding.weight.value.dataSync();
  const posTable = enc.embeddings.position_embedding.weight.value.dataSync();
  const h0 = new Float32Array(ids.length * width);
  ids.forEach((id, t) => {
    for (let c = 0; c < width; c++) h0[t * width + c] = tokTable[id * width + c]!;
  });
  for (const [start, vectors] of fixes) vectors.forEach((v, j) => h0.set(v, (start + j) * width));
  for (let i = 0; i < h0.length; i++) h0[i] = h0[i]! + posTable[i]!;
  return tf.tidy(() => {
    let h = tf.tensor3d(h0, [1, ids.length, width]);
    const mask = causalMask(ids.length);
    for (let l = 0; l < enc.config.layers; l++) h = enc.encoder.layers.at(l).apply(h, mask);
    return enc.final_layer_norm.apply(h).dataSync() as Float32Array;
  });
}

describe("vectors replace the token embeddings before the transformer", () => {
  it("single- and multi-vector embeddings at the right slots, after BOS", async () => {
    const t = base.tokenizer;
    const prompts = ["a cyan circle", "two triangles and a magenta star"];
    const got = await expectNoLeak(() => {
      const r = encodePrompts(base.textEncoder, t, prompts, { embeddings: db });
      const data = r.context.dataSync().slice();
      expect(r.context.shape).toEqual([2, 16, 80]);
      r.context.dispose();
      return { data, used: r.used.map((list) => list.map((e) => e.name)) };
    });
    expect(got.used).toEqual([["cyan"], ["triangles", "magenta star"]]);
    const w = (s: string): number => t.tokenize(s)[0]!;
    const pad = (ids: number[]): number[] => [...ids, ...new Array<number>(16 - ids.length).fill(t.padId)];
    // Row 0: BOS a [cyan ×2] circle EOS; row 1: BOS two [triangles ×3] and a [magenta star ×1] EOS.
    const row0 = pad([t.bosId, w("a"), 0, 0, w("circle"), t.eosId]);
    const row1 = pad([t.bosId, w("two"), 0, 0, 0, w("and"), w("a"), 0, t.eosId]);
    const want0 = byHand(row0, [[2, EXPECTED.cyan!.vectors]]);
    const want1 = byHand(row1, [
      [2, EXPECTED.triangles!.vectors],
      [7, EXPECTED["magenta star"]!.vectors],
    ]);
    expectClose(got.data.subarray(0, 16 * 80), want0, 2e-5);
    expectClose(got.data.subarray(16 * 80), want1, 2e-5);
    // And the embedding changed the output: the plain words give something else.
    const plain = encodePrompts(base.textEncoder, t, prompts);
    const differs = plain.context.dataSync().some((v, i) => Math.abs(v - got.data[i]!) > 1e-3);
    plain.context.dispose();
    expect(differs).toBe(true);
  });

  it("an embedding that does not fit in the rest of a chunk starts the next one (as A1111's tokenize_line)", () => {
    const t = base.tokenizer;
    const filler = "a green circle on the left a blue square at the top"; // 12 of the 14 token slots of a chunk
    expect(t.tokenize(filler)).toHaveLength(12);
    const r = encodePrompts(base.textEncoder, t, [`${filler} triangles`], { embeddings: db, emphasis: "None" });
    const data = r.context.dataSync().slice();
    r.context.dispose();
    expect(data.length).toBe(2 * 16 * 80);
    const pad = (ids: number[]): number[] => [...ids, ...new Array<number>(16 - ids.length).fill(t.padId)];
    expectClose(data.subarray(0, 16 * 80), byHand(pad([t.bosId, ...t.tokenize(filler), t.eosId]), []), 2e-5);
    expectClose(data.subarray(16 * 80), byHand(pad([t.bosId, 0, 0, 0, t.eosId]), [[1, EXPECTED.triangles!.vectors]]), 2e-5);
  });

  it("the encoder hook drops vectors past the window's end and refuses positions outside the ids", () => {
    const enc = base.textEncoder;
    const t = base.tokenizer;
    const ids = [[t.bosId, ...new Array<number>(14).fill(t.tokenize("a")[0]!), t.eosId]];
    const three = EXPECTED.triangles!.vectors;
    const out = expectNoLeakSync(() => {
      const z = enc.encode(ids, { embeddings: [{ row: 0, start: 14, values: Float32Array.from(three.flat()) }] });
      const d = z.dataSync().slice();
      z.dispose();
      return d;
    });
    expectClose(out, byHand(ids[0]!, [[14, three.slice(0, 2)]]), 2e-5);
    expect(() => enc.encode(ids, { embeddings: [{ row: 1, start: 0, values: new Float32Array(80) }] })).toThrow(
      /outside the \[1, 16\] ids/,
    );
    expect(() => enc.encode(ids, { embeddings: [{ row: 0, start: 1, values: new Float32Array(79) }] })).toThrow(
      /whole vectors of width 80/,
    );
  });
});

function expectNoLeakSync<T>(fn: () => T): T {
  const before = tf.memory().numTensors;
  const out = fn();
  expect(tf.memory().numTensors).toBe(before);
  return out;
}

describe("txt2img with embeddings", () => {
  it("an embedding folder changes the image where the prompt names one; a loaded database gives the same image; nothing leaks", async () => {
    const { txt2img } = await import("../src/pipeline/txt2img");
    const gen = { prompt: "a cyan circle on the left", steps: 2, seed: 5, cfgScale: 5 };
    const plain = await txt2img(base, gen);
    const withDir = await expectNoLeak(() => txt2img(base, { ...gen, embeddingDir: DIR }));
    const withDb = await txt2img(base, { ...gen, embeddings: db });
    expect(withDir.embeddings.map((e) => e.name)).toEqual(["cyan"]);
    expect(plain.embeddings).toEqual([]);
    expect(withDir.pixels).not.toEqual(plain.pixels);
    expect(withDb.pixels).toEqual(withDir.pixels);
    expect(withDir.infotexts[0]).toMatch(new RegExp(`, TI hashes: "cyan: ${db.get("cyan")!.hash}"$`));
    // A prompt without embedding names is unchanged by the folder.
    const other = { ...gen, prompt: "a blue square at the top" };
    expect((await txt2img(base, { ...other, embeddingDir: DIR })).pixels).toEqual((await txt2img(base, other)).pixels);
  }, 60_000);
});
