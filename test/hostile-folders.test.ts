/**
 * Hostile image folders (issue 18, classes 5 and 6 and the image/caption should-fix points): entries
 * that are not regular files (named pipes, device links, folders named like images or captions),
 * files over Node's 2 GiB read limit, images claiming huge pixel counts, runaway captions, and output
 * names too long for the file system; and `hypernet apply` inputs of absurd rank or size.
 *
 * Every case must be skipped (or refused) with a reason naming the file, quickly and with little
 * memory. Tests that would hang forever on a regression (a reader blocked on a named pipe cannot be
 * interrupted by a timer) give the pipe a writer process that closes it after a few seconds, so a
 * regression fails on the elapsed time instead of hanging the run. Sparse files (`truncate`) stand
 * in for 2 GiB+ files: they cost no disk.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pngClaiming, runFolderFuzz } from "../scripts/fuzz";
import { applyToFile, MAX_INPUT_VALUES } from "../src/cli/apply";
import { DEFAULT_MAX_CAPTION_CHARS, limitCaption } from "../src/data/captions";
import { TrainingDataset, type DatasetOptions } from "../src/data/dataset";
import { MAX_CAPTION_FILE_BYTES, readRegularFile } from "../src/data/entries";
import { DEFAULT_LIMIT_INPUT_PIXELS } from "../src/data/images";
import { MAX_OUTPUT_NAME_BYTES, preprocess } from "../src/data/preprocess";
import { writeSafetensors } from "../src/io/safetensors";
import { train } from "../src/train";
import { setupBackend } from "./helpers/tf";
import { TOY_TEMPLATE, makeToyBase, makeToyNet } from "./helpers/train-setup";

const FIXTURES = path.join(__dirname, "fixtures");
let tmp: string;
let png: Buffer;
const writers: ChildProcess[] = [];

beforeAll(async () => {
  await setupBackend();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-hostile-"));
  png = await sharp({ create: { width: 24, height: 24, channels: 3, background: { r: 200, g: 60, b: 30 } } })
    .png()
    .toBuffer();
});

afterAll(() => {
  for (const w of writers) if (w.exitCode === null) w.kill("SIGKILL");
  fs.rmSync(tmp, { recursive: true, force: true });
});

let folderCount = 0;
/** A fresh folder in the test's temp dir. */
function folder(label: string): string {
  const dir = path.join(tmp, `${label}-${folderCount++}`);
  fs.mkdirSync(dir);
  return dir;
}

/**
 * A named pipe at `file`, with a writer process that opens it (blocking until someone reads) and
 * closes it after `seconds`: a reader that wrongly opens the pipe gets EOF then, instead of waiting forever.
 */
function pipeWithWriter(file: string, seconds = WRITER_SECONDS): void {
  execFileSync("mkfifo", [file]);
  const w = spawn("sh", ["-c", `exec sleep ${seconds} > "$1"`, "sh", file], { stdio: "ignore" });
  w.unref();
  writers.push(w);
}

const dsOpts = (extra: Partial<DatasetOptions> = {}): DatasetOptions => ({
  name: "hostile",
  rng: { next: () => 0.5 },
  width: 16,
  height: 16,
  template: ["[filewords]"],
  ...extra,
});

/**
 * How long each pipe's writer holds it open. A reader that wrongly opened a pipe would wait this long
 * for EOF, so "it took less than WRITER_SECONDS − 5 s" detects that wait even on a loaded machine
 * (this is a hang detector, not a speed assertion: speed is measured in `npm run bench`).
 */
const WRITER_SECONDS = 25;
const NO_PIPE_WAIT_MS = (WRITER_SECONDS - 5) * 1000;

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, ms: performance.now() - t0 };
}

describe("readRegularFile: the one rule for every image and caption read", () => {
  it("reads a regular file exactly; refuses pipes, devices, folders, broken links and files over the limit", () => {
    const dir = folder("rule");
    fs.writeFileSync(path.join(dir, "ok.txt"), "red, fox");
    const ok = readRegularFile(path.join(dir, "ok.txt"), 8, "caption");
    expect("bytes" in ok && ok.bytes.toString()).toBe("red, fox");
    expect(readRegularFile(path.join(dir, "ok.txt"), 7, "caption")).toEqual({
      kind: "too-large",
      problem: "too large for a caption (8 bytes; at most 7 are read)",
    });
    pipeWithWriter(path.join(dir, "pipe.txt"));
    fs.symlinkSync("/dev/zero", path.join(dir, "zero.txt"));
    fs.mkdirSync(path.join(dir, "dir.txt"));
    fs.symlinkSync("nowhere.txt", path.join(dir, "broken.txt"));
    const t0 = performance.now();
    expect(readRegularFile(path.join(dir, "pipe.txt"), 100)).toMatchObject({
      kind: "not-a-file",
      problem: expect.stringMatching(/named pipe \(FIFO\)/),
    });
    expect(performance.now() - t0).toBeLessThan(NO_PIPE_WAIT_MS);
    expect(readRegularFile(path.join(dir, "zero.txt"), 100)).toMatchObject({
      kind: "not-a-file",
      problem: expect.stringMatching(/symbolic link to \/dev\/zero: a device/),
    });
    expect(readRegularFile(path.join(dir, "dir.txt"), 100)).toMatchObject({
      kind: "not-a-file",
      problem: expect.stringMatching(/a folder/),
    });
    expect(readRegularFile(path.join(dir, "broken.txt"), 100)).toMatchObject({
      kind: "not-a-file",
      problem: expect.stringMatching(/broken symbolic link.*nowhere\.txt/),
    });
  });
});

describe("hostile captions (class 5)", () => {
  let dir: string;
  beforeAll(() => {
    dir = folder("captions");
    for (const stem of ["pipe", "zero", "dir", "plain"]) fs.writeFileSync(path.join(dir, `${stem}.png`), png);
    pipeWithWriter(path.join(dir, "pipe.txt"));
    fs.symlinkSync("/dev/zero", path.join(dir, "zero.txt"));
    fs.mkdirSync(path.join(dir, "dir.txt"));
    fs.writeFileSync(path.join(dir, "plain.txt"), "a plain caption");
  });

  it("the dataset neither hangs on a pipe, reads /dev/zero, nor fails on a folder: each caption is listed with its reason", async () => {
    const { value: ds, ms } = await timed(() => TrainingDataset.load(dir, dsOpts()));
    expect(ms).toBeLessThan(NO_PIPE_WAIT_MS);
    expect(ds.imageCount).toBe(4);
    const reasons = Object.fromEntries(ds.skipped.map((s) => [s.file, s.reason]));
    expect(Object.keys(reasons).sort()).toEqual(["dir.txt", "pipe.txt", "zero.txt"]);
    expect(reasons["pipe.txt"]).toMatch(/^a named pipe \(FIFO\), not a regular file.*; pipe\.png is captioned from its file name instead$/);
    expect(reasons["zero.txt"]).toMatch(/^a symbolic link to \/dev\/zero: a device, not a regular file/);
    expect(reasons["dir.txt"]).toMatch(/^a folder, not a file/);
    // The images are used, captioned from their names (A1111's rule), the plain one from its .txt.
    expect([0, 1, 2, 3].map((i) => ds.caption(i))).toEqual(["dir", "pipe", "a plain caption", "zero"]);
  }, 60_000);

  it("preprocess lists the same captions under their own names and still makes every image", async () => {
    const { value: sum, ms } = await timed(() =>
      preprocess(dir, path.join(tmp, "captions-out"), { width: 16, height: 16, existingCaption: "copy" }),
    );
    expect(ms).toBeLessThan(NO_PIPE_WAIT_MS);
    expect(sum.made.map((m) => m.source)).toEqual(["dir.png", "pipe.png", "plain.png", "zero.png"]);
    expect(sum.made.map((m) => m.caption)).toEqual(["dir", "pipe", "a plain caption", "zero"]);
    const skipped = Object.fromEntries(sum.skipped.map((s) => [s.source, s]));
    expect(Object.keys(skipped).sort()).toEqual(["dir.txt", "pipe.txt", "zero.txt"]);
    for (const s of sum.skipped)
      expect(s).toMatchObject({
        reason: "not-a-file",
        detail: expect.stringContaining(`${s.source.replace(".txt", ".png")} is made without this caption`),
      });
    expect(skipped["zero.txt"]!.detail).toContain("/dev/zero");
  }, 60_000);

  it("a caption over the read limit (a 17 MiB sparse file) is listed as too large; its image is still used", async () => {
    const d = folder("bigcap");
    fs.writeFileSync(path.join(d, "a.png"), png);
    fs.writeFileSync(path.join(d, "a.txt"), "");
    fs.truncateSync(path.join(d, "a.txt"), MAX_CAPTION_FILE_BYTES + 1);
    const ds = await TrainingDataset.load(d, dsOpts());
    expect(ds.skipped).toEqual([
      {
        file: "a.txt",
        reason: `too large for a caption (16,777,217 bytes; at most 16,777,216 are read); a.png is captioned from its file name instead`,
      },
    ]);
    const sum = await preprocess(d, path.join(tmp, "bigcap-out"), { width: 16, height: 16 });
    expect(sum.made).toHaveLength(1);
    expect(sum.skipped).toMatchObject([{ source: "a.txt", reason: "too-large" }]);
  });

  it("a 1 MB caption is cut to the limit at a tag boundary, with a note naming its file", async () => {
    const d = folder("longcap");
    fs.writeFileSync(path.join(d, "a.png"), png);
    const text = Array.from({ length: 110_000 }, (_, i) => `tag${i}`).join(", "); // 1,098,888 characters
    expect(text.length).toBeGreaterThan(1_000_000);
    fs.writeFileSync(path.join(d, "a.txt"), text);
    const ds = await TrainingDataset.load(d, dsOpts());
    const caption = ds.caption(0);
    // Up to and including tagK (100 ≤ K ≤ 999) the text is 10·4 + 90·5 + (K − 99)·6 + 2K characters
    // (tag0–9, tag10–99, tag100–K, and ", " before each of tag1–K); for K = 525 that is exactly 4,096,
    // and the next character is a comma, so the cut keeps tag0 … tag525 whole.
    expect(caption.length).toBe(DEFAULT_MAX_CAPTION_CHARS);
    expect(text.startsWith(caption)).toBe(true);
    expect(caption.endsWith("tag525")).toBe(true);
    expect(ds.notes).toEqual([
      `${path.join(d, "a.txt")}: caption is ${text.length.toLocaleString("en-US")} characters; only the first ${caption.length.toLocaleString("en-US")} are used (limit 4,096: raise maxCaptionChars to keep more)`,
    ]);
    // A user who wants more can have it.
    const wide = await TrainingDataset.load(d, dsOpts({ maxCaptionChars: 2_000_000 }));
    expect(wide.caption(0)).toBe(text);
    expect(wide.notes).toEqual([]);
    await expect(TrainingDataset.load(d, dsOpts({ maxCaptionChars: 0 }))).rejects.toThrow(/maxCaptionChars must be a positive integer/);
  });

  it("limitCaption: hand-worked cuts", () => {
    expect(limitCaption("short", 10)).toEqual({ text: "short", dropped: 0 });
    // comma within the last fifth (limit 10 → last 2 characters): "aaaaaaaa, b" cut at 10 → comma at 8 → "aaaaaaaa"
    expect(limitCaption("aaaaaaaa, bbb", 10)).toEqual({ text: "aaaaaaaa", dropped: 5 });
    // comma too far back (index 1 < 10 − 2): plain cut at 10
    expect(limitCaption("a, bbbbbbbbbbbb", 10)).toEqual({ text: "a, bbbbbbb", dropped: 5 });
    // never split a surrogate pair: "😀" is 2 code units at indices 3–4; a cut at 4 keeps 3
    expect(limitCaption("abc😀def", 4)).toEqual({ text: "abc", dropped: 5 });
  });
});

describe("hostile image entries (classes 5 and 6)", () => {
  let dir: string;
  beforeAll(() => {
    dir = folder("images");
    fs.writeFileSync(path.join(dir, "good.png"), png);
    fs.mkdirSync(path.join(dir, "folder.png"));
    pipeWithWriter(path.join(dir, "pipe.png"));
    fs.symlinkSync("/dev/zero", path.join(dir, "zero.png"));
    fs.writeFileSync(path.join(dir, "sparse.png"), png);
    fs.truncateSync(path.join(dir, "sparse.png"), 2 ** 31 + 100); // > 2 GiB, sparse: no disk used
    fs.writeFileSync(path.join(dir, "pixels.png"), pngClaiming(15_000, 15_000));
  });

  it("the dataset skips each one with its reason, quickly, and trains on the good image", async () => {
    const { value: ds, ms } = await timed(() => TrainingDataset.load(dir, dsOpts()));
    expect(ms).toBeLessThan(NO_PIPE_WAIT_MS);
    expect(ds.imageCount).toBe(1);
    const reasons = Object.fromEntries(ds.skipped.map((s) => [s.file, s.reason]));
    expect(Object.keys(reasons).sort()).toEqual(["folder.png", "pipe.png", "pixels.png", "sparse.png", "zero.png"]);
    expect(reasons["folder.png"]).toMatch(/^a folder, not a file/);
    expect(reasons["pipe.png"]).toMatch(/^a named pipe \(FIFO\)/);
    expect(reasons["zero.png"]).toMatch(/^a symbolic link to \/dev\/zero: a device/);
    expect(reasons["sparse.png"]).toBe("too large for an image (2,147,483,748 bytes; at most 2,147,483,647 are read)");
    expect(reasons["pixels.png"]).toBe(
      "pixels.png: PNG image too large (15000 × 15000 = 225,000,000 pixels, about 644 MiB decoded): over the limit of 134,217,728 pixels. " +
        "Downscale it, or if you have the memory, raise the limit with the option limitInputPixels: 225000000 (preprocess, TrainingDataset.load or train; false removes the limit)",
    );
  }, 60_000);

  it("preprocess skips each one with a reason code and the same words", async () => {
    const { value: sum, ms } = await timed(() => preprocess(dir, path.join(tmp, "images-out"), { width: 16, height: 16 }));
    expect(ms).toBeLessThan(NO_PIPE_WAIT_MS);
    expect(sum.made.map((m) => m.source)).toEqual(["good.png"]);
    expect(Object.fromEntries(sum.skipped.map((s) => [s.source, s.reason]))).toEqual({
      "folder.png": "not-a-file",
      "pipe.png": "not-a-file",
      "pixels.png": "too-many-pixels",
      "sparse.png": "too-large",
      "zero.png": "not-a-file",
    });
    expect(sum.skipped.find((s) => s.source === "pixels.png")!.detail).toMatch(
      /raise the limit with the option limitInputPixels: 225000000/,
    );
  }, 60_000);

  it("limitInputPixels: the default is 2^27; a lower one refuses a normal image and says what to set; that value admits it", async () => {
    expect(DEFAULT_LIMIT_INPUT_PIXELS).toBe(134_217_728);
    const d = folder("limit");
    fs.writeFileSync(path.join(d, "a.png"), png); // 24 × 24 = 576 pixels
    await expect(TrainingDataset.load(d, dsOpts({ limitInputPixels: 575 }))).rejects.toThrow(/no usable images \(skipped: a\.png\)/);
    const sum = await preprocess(d, path.join(tmp, "limit-out"), { width: 16, height: 16, limitInputPixels: 575 });
    expect(sum.skipped).toEqual([
      {
        source: "a.png",
        reason: "too-many-pixels",
        detail:
          "PNG image too large (24 × 24 = 576 pixels, about 2 KiB decoded): over the limit of 575 pixels. Downscale it, or if you have the memory, raise the limit with the option limitInputPixels: 576 (preprocess, TrainingDataset.load or train; false removes the limit)",
      },
    ]);
    expect((await TrainingDataset.load(d, dsOpts({ limitInputPixels: 576 }))).imageCount).toBe(1);
    expect((await preprocess(d, path.join(tmp, "limit-out2"), { width: 16, height: 16, limitInputPixels: 576 })).made).toHaveLength(1);
    await expect(preprocess(d, path.join(tmp, "limit-out3"), { width: 16, height: 16, limitInputPixels: 1.5 })).rejects.toThrow(
      /limitInputPixels must be a positive integer/,
    );
  });

  it("train passes limitInputPixels on to the dataset", async () => {
    const d = folder("train-limit");
    fs.writeFileSync(path.join(d, "a.png"), png);
    const base = makeToyBase();
    try {
      const run = (limitInputPixels?: number) =>
        train(base, makeToyNet(), {
          dataDir: d,
          template: TOY_TEMPLATE,
          maxSteps: 1,
          saveEvery: 0,
          batchSize: 1,
          learningRate: "1e-3",
          seed: 1,
          logDir: path.join(tmp, `train-limit-${limitInputPixels}`),
          progress: false,
          handleSigint: false,
          limitInputPixels,
        }).done;
      await expect(run(100)).rejects.toThrow(/no usable images \(skipped: a\.png\)/);
      expect((await run(576)).step).toBe(1);
    } finally {
      base.dispose();
    }
  }, 60_000);
});

describe("names too long for the file system (class 6)", () => {
  it("a 250-byte source name gives an output name cut to fit, and the caption keeps the whole name", async () => {
    const d = folder("longname");
    const stem = "x".repeat(246); // + ".png" = 250 bytes; "00000-0-" in front would make 258 > 255
    const multi = "é".repeat(120); // 240 bytes in UTF-8
    fs.writeFileSync(path.join(d, `${stem}.png`), png);
    fs.writeFileSync(path.join(d, `${multi}.png`), png);
    const out = path.join(tmp, "longname-out");
    const sum = await preprocess(d, out, { width: 16, height: 16 });
    expect(sum.skipped).toEqual([]);
    // 200 bytes in all: "00000-0-" (8) + stem + ".png" (4) → 188 bytes of stem.
    expect(sum.made.map((m) => m.file)).toEqual([`00000-0-${"x".repeat(188)}.png`, `00001-0-${"é".repeat(94)}.png`]);
    for (const m of sum.made) expect(Buffer.byteLength(m.file)).toBeLessThanOrEqual(MAX_OUTPUT_NAME_BYTES);
    expect(sum.made.map((m) => m.caption)).toEqual([stem, multi]);
    expect(fs.readFileSync(path.join(out, `00000-0-${"x".repeat(188)}.txt`), "utf8")).toBe(stem);
  });

  it("a destination that cannot be made or written names the user's path, not a temp file", async () => {
    const d = folder("dest");
    fs.writeFileSync(path.join(d, "a.png"), png);
    fs.writeFileSync(path.join(tmp, "a-file"), "x");
    await expect(preprocess(d, path.join(tmp, "a-file", "out"), { width: 16, height: 16 })).rejects.toThrow(
      `preprocess: cannot create the destination folder ${path.join(tmp, "a-file", "out")}: part of the destination path is a file, not a folder; choose another destination`,
    );
    const tooLong = path.join(tmp, "y".repeat(300));
    await expect(preprocess(d, tooLong, { width: 16, height: 16 })).rejects.toThrow(
      /^preprocess: cannot create the destination folder .*y{300}: the path is too long/,
    );
    // A destination whose path leaves no room for the file names: the error names the output file.
    let deep = path.join(tmp, "deep");
    // 4,080 characters: the folder can be made (PATH_MAX is 4,096), "<folder>/00000-0-a.png" cannot.
    while (deep.length < 4080) deep = path.join(deep, "z".repeat(Math.min(250, 4080 - deep.length - 1)));
    fs.mkdirSync(deep, { recursive: true });
    const err = await preprocess(d, deep, { width: 16, height: 16 }).then(
      () => undefined,
      (e: Error) => e,
    );
    // (Either this module's wording or the atomic writer's, as long as it names the output file.)
    expect(err?.message).toContain(path.join(deep, "00000-0-a.png"));
    expect(err?.message).toMatch(/too long/);
    expect(err?.message).not.toMatch(/\.tmp/);
  });
});

describe("hypernet apply with inputs of absurd rank or size (class 6)", () => {
  const net = path.join(FIXTURES, "hn-relu-ln-drop.pt");

  it("a rank-10,001 input is refused naming the file and tensor; no tensor leaks", async () => {
    const input = path.join(tmp, "rank.safetensors");
    writeSafetensors(input, [["x.32", { dtype: "F32", shape: [...Array(10_000).fill(1), 32], data: new Float32Array(32) }]]);
    const before = tf.memory().numTensors;
    await expect(applyToFile(net, input, path.join(tmp, "rank-out.safetensors"))).rejects.toThrow(
      `${input}: tensor x.32 has 10,001 axes; at most 8 are accepted (a context is [batch, tokens, 32]). Reshape it`,
    );
    expect(tf.memory().numTensors).toBe(before);
    expect(fs.existsSync(path.join(tmp, "rank-out.safetensors"))).toBe(false);
  });

  it("an input of more than 2^25 values is refused before its data is read (a sparse 128 MiB file)", async () => {
    const input = path.join(tmp, "big.safetensors");
    const shape = [8193, 4096]; // 33,558,528 values
    expect(shape[0]! * shape[1]!).toBeGreaterThan(MAX_INPUT_VALUES);
    const header = Buffer.from(JSON.stringify({ "x.4096": { dtype: "F32", shape, data_offsets: [0, shape[0]! * shape[1]! * 4] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeFileSync(input, Buffer.concat([len, header]));
    fs.truncateSync(input, 8 + header.length + shape[0]! * shape[1]! * 4);
    const rss0 = process.memoryUsage().rss;
    await expect(applyToFile(net, input, path.join(tmp, "big-out.safetensors"))).rejects.toThrow(
      `${input}: tensor x.4096 has 33,558,528 values (shape [8193, 4096]); at most 33,554,432 are accepted. Split it into smaller tensors`,
    );
    expect(process.memoryUsage().rss - rss0).toBeLessThan(64 * 2 ** 20);
  });

  it("an integer input and a wrong last axis are refused by name; a rank-5 input gives the same numbers as rank 3", async () => {
    const bad = path.join(tmp, "int.safetensors");
    writeSafetensors(bad, [["x.32", { dtype: "I32", shape: [2, 32], data: new Int32Array(64) }]]);
    await expect(applyToFile(net, bad, path.join(tmp, "int-out.safetensors"))).rejects.toThrow(
      `${bad}: tensor x.32 is I32; contexts must be floating point`,
    );
    const axis = path.join(tmp, "axis.safetensors");
    writeSafetensors(axis, [["x.32", { dtype: "F32", shape: [32, 2], data: new Float32Array(64) }]]);
    await expect(applyToFile(net, axis, path.join(tmp, "axis-out.safetensors"))).rejects.toThrow(
      `${axis}: tensor x.32 has shape [32, 2]; its last axis must be 32`,
    );
    const data = Float32Array.from({ length: 4 * 32 }, (_, i) => Math.sin(i));
    const r3 = path.join(tmp, "r3.safetensors");
    const r5 = path.join(tmp, "r5.safetensors");
    writeSafetensors(r3, [["x.32", { dtype: "F32", shape: [2, 2, 32], data }]]);
    writeSafetensors(r5, [["x.32", { dtype: "F32", shape: [1, 2, 1, 2, 32], data }]]);
    const { readSafetensors } = await import("../src/io/safetensors");
    await applyToFile(net, r3, path.join(tmp, "r3-out.safetensors"));
    await applyToFile(net, r5, path.join(tmp, "r5-out.safetensors"));
    const o3 = readSafetensors(path.join(tmp, "r3-out.safetensors")).tensors;
    const o5 = readSafetensors(path.join(tmp, "r5-out.safetensors")).tensors;
    expect(o5.get("k.32")!.shape).toEqual([1, 2, 1, 2, 32]);
    expect([...o5.get("k.32")!.data]).toEqual([...o3.get("k.32")!.data]);
    expect([...o5.get("v.32")!.data]).toEqual([...o3.get("v.32")!.data]);
  });
});

describe("fuzzing hostile folders", () => {
  it("40 seeded folder cases through the dataset and preprocess: every hostile entry listed, none slow or memory-hungry", async () => {
    const report = await runFolderFuzz({ seed: 20240601, cases: 40, seconds: 30 });
    expect(report.cases).toBe(40);
    expect(report.findings).toEqual([]);
    for (const r of Object.values(report.readers)) expect(r.ok + r["clean-error"]).toBe(40);
    // Every hostile kind was planted at least once.
    expect(Object.keys(report.kinds).sort()).toEqual([
      "broken-link-caption",
      "device-caption",
      "device-image",
      "fifo-caption",
      "fifo-image",
      "folder-caption",
      "folder-image",
      "huge-caption",
      "huge-pixels",
      "long-caption",
      "sparse-image",
    ]);
  }, 60_000);
});
