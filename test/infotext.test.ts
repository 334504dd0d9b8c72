/**
 * A1111 infotexts both ways: the parser gives exactly what A1111 1.10's `parse_generation_parameters`
 * gives (test/fixtures/a1111-infotext.json, made by A1111's own function imported from a checkout by
 * test/scripts/run_a1111_infotext.py; run live too when the environment variable A1111_WEBUI_DIR
 * names an A1111 checkout); A1111's parser reads this project's writer back to
 * the same txt2img settings; the PNG `parameters` text survives the trip; and a PNG made by txt2img
 * on the tiny model, read back with `readInfotext`, regenerates the same pixels.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as zlib from "node:zlib";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addPngText, crc32, readPngText, textChunk } from "../src/io/png-text";
import type { BaseModel } from "../src/pipeline/base-model";
import { formatInfotext, parseGenerationParameters, pyNumberText, quoteInfotext, type InfotextValue } from "../src/pipeline/infotext";
import { readInfotext, settingsFromParameters } from "../src/pipeline/infotext-read";
import { txt2img } from "../src/pipeline/txt2img";
import { loadTinyModel } from "../src/tiny/model";
import { createHypernetwork } from "../src/hypernet/network";
import { saveHypernetwork } from "../src/hypernet/file";
import { clearHypernetworkCache } from "../src/hypernet/prompt-networks";
import { CORPUS, ROUND_TRIP } from "./scripts/infotext-cases";
import { a1111Parse } from "./scripts/make-infotext-fixtures";
import { expectNoLeak, fixture, setupBackend } from "./helpers/tf";

type Entries = Array<[string, InfotextValue]>;
const FIXTURE = JSON.parse(fs.readFileSync(fixture("a1111-infotext.json"), "utf8")) as {
  corpus: Array<{ text: string; parsed: Entries }>;
  roundTrip: Array<{ text: string; parsed: Entries }>;
};

/** An A1111 checkout to run A1111's own parser from (test/scripts/run_a1111_infotext.py), if given. */
const A1111_DIR = process.env.A1111_WEBUI_DIR;
const NO_LIVE =
  "A1111_WEBUI_DIR is not set (an A1111 checkout, for test/scripts/run_a1111_infotext.py): the committed fixture stands in for A1111's parser";

/** A1111's parser, run live from the A1111_WEBUI_DIR checkout; undefined when that is not set. */
function liveA1111(texts: string[]): Entries[] | undefined {
  if (!A1111_DIR) return undefined;
  return a1111Parse(texts, A1111_DIR).parsed;
}

describe("parseGenerationParameters = A1111 1.10's parse_generation_parameters (fixture made from A1111 at c19d044)", () => {
  it("the fixture's corpus is the current one", () => {
    expect(FIXTURE.corpus.map((c) => c.text)).toEqual(CORPUS);
  });

  it.each(FIXTURE.corpus.map((c, i) => [i, c] as const))("corpus text %i: same keys, values, types and order", (_i, c) => {
    expect([...parseGenerationParameters(c.text)]).toEqual(c.parsed);
  });

  it("A1111's parser run now agrees with the fixture (when A1111_WEBUI_DIR names a checkout)", (ctx) => {
    const live = liveA1111(CORPUS);
    if (!live) {
      console.info(`live A1111 cross-check skipped: ${NO_LIVE}`);
      return ctx.skip(NO_LIVE);
    }
    expect(live).toEqual(FIXTURE.corpus.map((c) => c.parsed));
  });
});

/** Texts for the rules A1111 1.10's parser has and 1.8's lacked, with what 1.10 gives (worked out by hand from its rules). */
const RULES_1_10: Array<{ text: string; has: Record<string, InfotextValue>; lacks: string[]; order?: string[] }> = [
  // (cat:1.0) is weight 1; [(dog)] is 1.1 × (1/1.1), exactly 1 in doubles: nothing is emphasised
  { text: "a (cat:1.0), [(dog)]\nSteps: 20, Sampler: Euler a, CFG scale: 7", has: {}, lacks: ["Emphasis"] },
  // BREAK and escaped brackets are not emphasis; the negative prompt's [blurry] is
  {
    text: "a cat BREAK a dog, \\(literal\\)\nNegative prompt: [blurry]\nSteps: 20, Sampler: Euler a, CFG scale: 7",
    has: { Emphasis: "Original", "Hires schedule type": "Use same scheduler", "Refiner switch by sampling steps": false },
    lacks: [],
  },
  // an Emphasis field is kept as written
  { text: "(BREAK)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Emphasis: No norm", has: { Emphasis: "No norm" }, lacks: [] },
  // the legacy Hypernet tag does not count; the prompt's own brackets do; before 1.8 a refiner flag is not set without a refiner
  {
    text: "(a cat)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Hypernet: anime, Version: 1.7.0",
    has: { Prompt: "(a cat)<hypernet:anime:1.0>", Emphasis: "Original", "Refiner switch by sampling steps": false },
    lacks: [],
  },
  // one hires prompt named, no Version: both set right after the fields, "" where equal to the main prompt
  {
    text: "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Hires negative prompt: blurry, Hires schedule type: Karras, Prompt: x",
    has: { "Hires negative prompt": "", "Hires prompt": "", "Hires schedule type": "Karras", Prompt: "a cat" },
    lacks: [],
    order: ["Steps", "Sampler", "CFG scale", "Hires negative prompt", "Hires schedule type", "Prompt", "Hires prompt", "Negative prompt"],
  },
  // a Version up to 1.8.0-139 skips that step: the hires negative prompt stays as written
  {
    text: "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Hires negative prompt: blurry, Version: v1.8.0-139-gabcdef0",
    has: { "Hires negative prompt": "blurry", "Hires prompt": "" },
    lacks: [],
    order: ["Steps", "Sampler", "CFG scale", "Hires negative prompt", "Version", "Prompt", "Negative prompt"],
  },
];

describe("parseGenerationParameters: A1111 1.10's rules that 1.8's parser lacked", () => {
  it.each(RULES_1_10.map((c, i) => [i, c] as const))("text %i", (_i, c) => {
    const d = parseGenerationParameters(c.text);
    for (const [k, v] of Object.entries(c.has)) expect([k, d.get(k)]).toEqual([k, v]);
    for (const k of c.lacks) expect(d.has(k)).toBe(false);
    if (c.order) expect([...d.keys()].slice(0, c.order.length)).toEqual(c.order);
    // every text also gets the hires schedule default (or its own) and the refiner flag
    expect(d.has("Hires schedule type") && d.has("Refiner switch by sampling steps")).toBe(true);
  });

  it("an emphasis weight Python cannot read fails, as A1111's parser does", () => {
    expect(() => parseGenerationParameters("(a:1.2.3)\nSteps: 1, Sampler: Euler, CFG scale: 7")).toThrow(
      /infotext: .*"1\.2\.3".*A1111's parser fails on this prompt too/,
    );
  });

  it("A1111's parser run now gives the same for these texts (when A1111_WEBUI_DIR names a checkout)", (ctx) => {
    const texts = RULES_1_10.map((c) => c.text);
    const live = liveA1111(texts);
    if (!live) return ctx.skip(NO_LIVE);
    expect(texts.map((t) => [...parseGenerationParameters(t)])).toEqual(live);
  });
});

describe("formatInfotext = A1111's create_infotext, read back by A1111's parser", () => {
  it("writes what the fixture holds", () => {
    expect(ROUND_TRIP.map((c) => formatInfotext(c.params))).toEqual(FIXTURE.roundTrip.map((r) => r.text));
    expect(FIXTURE.roundTrip[0]!.text).toBe(
      "a lighthouse at dusk <hypernet:watery:0.8> <hypernet:sunset-glow:0.5>\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, RNG: NV",
    );
  });

  it("A1111's parser gives back the settings the text was written from (and ours gives the same fields)", () => {
    const texts = ROUND_TRIP.map((c) => formatInfotext(c.params));
    const a1111 = liveA1111(texts) ?? FIXTURE.roundTrip.map((r) => r.parsed);
    ROUND_TRIP.forEach((c, i) => {
      expect([...parseGenerationParameters(texts[i]!)]).toEqual(a1111[i]);
      const { cannotHonour, notes: _notes, ...settings } = settingsFromParameters(new Map(a1111[i]));
      expect(settings).toEqual(c.settings);
      expect(cannotHonour).toEqual([]);
    });
  });

  it("quotes as A1111 does and prints numbers as Python does", () => {
    expect(quoteInfotext("a, b")).toBe('"a, b"');
    expect(quoteInfotext('say "hi"')).toBe('say "hi"'); // A1111 does not quote for a quote mark alone
    expect(quoteInfotext("x:y\nz")).toBe('"x:y\\nz"');
    const cases: Array<[number, string]> = [
      [0.5, "0.5"],
      [0.0001, "0.0001"],
      [0.00001, "1e-05"],
      [1.5e-7, "1.5e-07"],
      [0.1 + 0.2, "0.30000000000000004"],
      [123.25, "123.25"],
      [1.5e16, "1.5e+16"],
      [-2.5, "-2.5"],
    ];
    for (const [n, py] of cases) expect(pyNumberText(n, true)).toBe(py);
    expect(pyNumberText(7)).toBe("7");
    expect(pyNumberText(7, true)).toBe("7.0");
  });
});

describe("PNG parameters text", () => {
  const tiny = async (): Promise<Buffer> =>
    sharp(Buffer.alloc(4 * 4 * 3, 128), { raw: { width: 4, height: 4, channels: 3 } })
      .png()
      .toBuffer();

  it("Latin-1 text goes in tEXt, other text in iTXt, and both read back; the pixels are untouched", async () => {
    const png = await tiny();
    const out = addPngText(png, [
      ["parameters", "a cat, (red:1.2)\nSteps: 20, Sampler: Euler a, CFG scale: 7"],
      ["comment", "猫の絵"],
    ]);
    expect(out.includes(Buffer.from("tEXtparameters"))).toBe(true);
    expect(out.includes(Buffer.from("iTXtcomment"))).toBe(true);
    const text = readPngText(out);
    expect(text.get("parameters")).toBe("a cat, (red:1.2)\nSteps: 20, Sampler: Euler a, CFG scale: 7");
    expect(text.get("comment")).toBe("猫の絵");
    expect(await sharp(out).raw().toBuffer()).toEqual(await sharp(png).raw().toBuffer());
  });

  it("reads compressed zTXt and iTXt chunks (as other tools write them) and refuses damaged ones", async () => {
    const png = await tiny();
    const chunkOf = (type: string, data: Buffer): Buffer => {
      const head = Buffer.alloc(8);
      head.writeUInt32BE(data.length, 0);
      head.write(type, 4, "latin1");
      const crc = Buffer.alloc(4);
      crc.writeUInt32BE(crc32(head.subarray(4), data), 0);
      return Buffer.concat([head, data, crc]);
    };
    const z = chunkOf("zTXt", Buffer.concat([Buffer.from("parameters\0\0", "latin1"), zlib.deflateSync(Buffer.from("café", "latin1"))]));
    const it8 = chunkOf(
      "iTXt",
      Buffer.concat([Buffer.from("other\0\x01\0en\0\0", "latin1"), zlib.deflateSync(Buffer.from("ねこ", "utf8"))]),
    );
    const withChunks = Buffer.concat([png.subarray(0, 33), z, it8, png.subarray(33)]);
    expect([...readPngText(withChunks)]).toEqual([
      ["parameters", "café"],
      ["other", "ねこ"],
    ]);
    const broken = Buffer.from(addPngText(png, [["parameters", "x"]]));
    broken[33 + 8 + 12] ^= 1; // a byte of the tEXt payload
    expect(() => readPngText(broken, "img.png")).toThrow(/img\.png: damaged PNG \(chunk tEXt at byte 33 fails its CRC check\)/);
    expect(() => readPngText(Buffer.from("GIF89a"), "x.gif")).toThrow(/x\.gif: not a PNG image/);
    const bomb = chunkOf("zTXt", Buffer.concat([Buffer.from("parameters\0\0", "latin1"), zlib.deflateSync(Buffer.alloc(20 << 20))]));
    expect(() => readPngText(Buffer.concat([png.subarray(0, 33), bomb, png.subarray(33)]), "bomb.png")).toThrow(
      /bomb\.png: a compressed zTXt chunk expands past/,
    );
    expect(() => textChunk("", "x")).toThrow(/PNG text key/);
  });
});

describe("readInfotext", () => {
  let base: BaseModel;
  let dir: string;
  beforeAll(async () => {
    await setupBackend();
    base = loadTinyModel();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "infotext-"));
  });
  afterAll(() => {
    clearHypernetworkCache();
    base?.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("names what cannot be honoured: unknown sampler and schedule, hires fix, other versions' behaviour, a different model, missing networks", () => {
    const r = readInfotext(CORPUS[20]!);
    expect(r.sampler).toBe("DPM++ 2M");
    expect(r.cannotHonour.join("\n")).toMatch(/Sampler: Restart is an A1111 sampler this project does not implement/);
    expect(r.cannotHonour.join("\n")).toMatch(/Schedule type: SGM Uniform is not implemented/);
    expect(r.cannotHonour.join("\n")).toMatch(/Face restoration: CodeFormer/);
    expect(r.cannotHonour.join("\n")).toMatch(/FP8 weight: Enable for SDXL/);
    expect(r.emphasis).toBe("No norm");
    const hires = readInfotext(CORPUS[4]!);
    expect(hires.cannotHonour).toEqual([
      expect.stringMatching(
        /^hires fix \(Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Denoising strength: 0\.7\): only the first pass is made here, at 512x512$/,
      ),
    ]);
    // A1111 < 1.6 with "[" in the prompt: old timelines (honoured), old padding and schedule (not)
    const pre16 = readInfotext(CORPUS[11]!);
    expect(pre16.oldScheduling).toBe(true);
    expect(pre16.cannotHonour.join("\n")).not.toMatch(/Old prompt editing timelines/);
    expect(pre16.cannotHonour.join("\n")).toMatch(/Pad conds v0[\s\S]*Downcast alphas_cumprod/);
    expect(readInfotext(CORPUS[1]!).oldScheduling).toBeUndefined();
    const withHash = (h: string): BaseModel => Object.assign(Object.create(base) as BaseModel, { checkpointHash: h });
    const old = readInfotext(CORPUS[21]!, { base: withHash("0123456789") });
    expect(old.sampler).toBe("DPM++ 2M");
    expect(old.cannotHonour).toEqual([
      expect.stringMatching(/unknown sampler "k_euler_ancestral" \(A1111 itself falls back to DPM\+\+ 2M/),
    ]);
    expect(old.notes.join("\n")).toMatch(/Model hash 45dee52b is A1111's old 8-digit hash/);
    const other = readInfotext(CORPUS[1]!, { base: withHash("aaaaaaaaaa") });
    expect(readInfotext(CORPUS[1]!, { base: withHash("6ce0161689") }).cannotHonour).toEqual([]);
    expect(readInfotext(CORPUS[1]!, { base }).notes.join("\n")).toMatch(/the loaded model "tiny-shapes" has no file hash to compare/);
    expect(other.cannotHonour).toEqual([
      expect.stringMatching(/Model hash 6ce0161689 \(v1-5-pruned-emaonly\) differs from the loaded model's aaaaaaaaaa/),
    ]);
    const tagged = readInfotext(CORPUS[0]!, { hypernetworkDir: dir });
    expect(tagged.cannotHonour).toEqual([`hypernetwork "watery" is not in ${dir}`]);
    expect(tagged.prompt).toBe("masterpiece, (best quality:1.2) <hypernet:watery:0.8>");
    expect(tagged.sampler).toBe("DPM++ 2M Karras");
    const ti = readInfotext(CORPUS[2]!, { base, embeddingDir: fixture("embeddings") });
    expect(ti.cannotHonour).toEqual([
      "Lora hashes: add_detail: 7c6bad76eb54 — LoRA networks is not reproduced here",
      expect.stringMatching(/embedding "easynegative" is not in/),
      expect.stringMatching(/embedding "badhandv4" is not in/),
    ]);
  });

  it("1.10's added fields: Emphasis Original is txt2img's default, the other modes become settings; the hires schedule and refiner flag defaults change nothing", () => {
    const base10 = "a (cat:1.2)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 512x512";
    const plain = readInfotext(base10);
    expect(plain.parameters.get("Emphasis")).toBe("Original"); // filled in by the parser
    expect(plain.emphasis).toBeUndefined();
    expect(plain.cannotHonour).toEqual([]);
    expect(plain.notes.join("\n")).not.toMatch(/Emphasis|Hires schedule type|Refiner switch/);
    for (const mode of ["No norm", "Ignore", "None"] as const) {
      const r = readInfotext(`${base10}, Emphasis: ${mode}`);
      expect([r.emphasis, r.cannotHonour]).toEqual([mode, []]);
    }
    expect(readInfotext(`${base10}, Emphasis: Fancy`).cannotHonour).toEqual([
      'Emphasis: Fancy is not an A1111 emphasis mode this project knows; "Original" is used',
    ]);
    // a hires pass with its own schedule type names it among the hires settings not made here
    const hires = readInfotext(`${base10}, Denoising strength: 0.5, Hires upscale: 2, Hires schedule type: Karras`);
    expect(hires.cannotHonour).toEqual([
      expect.stringMatching(/^hires fix \(Hires upscale: 2, Hires schedule type: Karras, Denoising strength: 0\.5\)/),
    ]);
    // the refiner flag: on with a refiner (A1111 before 1.8) cannot be reproduced; on without one changes nothing
    expect(readInfotext(CORPUS[14]!).cannotHonour.join("\n")).toMatch(/Refiner switch by sampling steps: A1111 before 1\.8/);
    const lone = readInfotext(`${base10}, Refiner switch by sampling steps: True`);
    expect(lone.cannotHonour).toEqual([]);
    expect(lone.notes.join("\n")).toMatch(/Refiner switch by sampling steps: on, but there is no refiner/);
  });

  it("bad sources: clear errors naming the file", () => {
    expect(() => readInfotext(path.join(dir, "missing.png"))).toThrow(/missing\.png: no such file/);
    const plain = path.join(dir, "plain.png");
    fs.writeFileSync(plain, Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0]));
    expect(() => readInfotext(plain)).toThrow(/plain\.png: the PNG is truncated/);
  });

  it("a txt2img PNG (hypernetwork tag, embedding, variation seed, CPU noise, 2 images) read back regenerates the same pixels; change one setting and it changes", async () => {
    const hnDir = path.join(dir, "hypernetworks");
    fs.mkdirSync(hnDir);
    const net = createHypernetwork({ name: "tinyhn", dims: base.contextDims, layerStructure: [1, 2, 1], weightInit: "Normal", seed: 3 });
    saveHypernetwork(net, path.join(hnDir, "tinyhn.pt"));
    net.dispose();
    const settings = {
      prompt: "a cyan circle on the left <hypernet:tinyhn:0.7>",
      negativePrompt: "a red square",
      steps: 3,
      sampler: "Euler a",
      cfgScale: 5,
      seed: 77,
      subseed: 5,
      subseedStrength: 0.3,
      etaNoiseSeedDelta: 31337,
      noiseSource: "CPU" as const,
      batch: 2,
      hypernetworkDir: hnDir,
      embeddingDir: fixture("embeddings"),
    };
    const first = await txt2img(base, settings);
    expect(first.embeddings.map((e) => e.name)).toEqual(["cyan", "red"]);
    expect(first.infotexts[1]).toMatch(
      /Seed: 77, Size: 32x32, Model: tiny-shapes, Variation seed: 6, Variation seed strength: 0\.3, ENSD: 31337, RNG: CPU, TI hashes: "cyan: [0-9a-f]{12}, red: [0-9a-f]{12}"$/,
    );
    expect(readPngText(first.png[1]!).get("parameters")).toBe(first.infotexts[1]);
    const file = path.join(dir, "second.png");
    fs.writeFileSync(file, first.png[1]!);
    const read = readInfotext(file, { base, hypernetworkDir: hnDir, embeddingDir: fixture("embeddings") });
    expect(read.cannotHonour).toEqual([]);
    const again = await expectNoLeak(() => txt2img(base, { ...read, hypernetworkDir: hnDir, embeddingDir: fixture("embeddings") }));
    const n = 32 * 32 * 3;
    expect(again.pixels).toEqual(first.pixels.subarray(n, 2 * n));
    expect(again.infotexts[0]).toBe(first.infotexts[1]);
    const changed = await txt2img(base, { ...read, cfgScale: 9, hypernetworkDir: hnDir, embeddingDir: fixture("embeddings") });
    expect(changed.pixels).not.toEqual(again.pixels);
  }, 120_000);
});
