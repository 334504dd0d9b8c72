/**
 * Messy inputs end to end: a dataset folder as users really have them — corrupt files, odd formats,
 * huge and tiny pictures, a Latin-1 caption, an empty caption, symlinks of every kind — goes through
 * `preprocess` and then `train` (a few steps on the toy model), and also straight into `train`.
 * Every file either becomes training data or is reported with a reason naming it, training runs,
 * and nothing in the source folder (or the folder a symlink points out to) changes: every file's
 * bytes, every link's target and the listing are hashed before and after.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import sharp, { type Sharp } from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { preprocess } from "../src/data/preprocess";
import type { BaseModel } from "../src/pipeline/base-model";
import { train } from "../src/train";
import { setupBackend } from "./helpers/tf";
import { TOY_TEMPLATE, makeToyBase, makeToyNet } from "./helpers/train-setup";

let tmp: string;
let src: string;
let outside: string;
let base: BaseModel;

const solid = (w: number, h: number, r = 200, g = 40, b = 40): Sharp =>
  sharp({ create: { width: w, height: h, channels: 3, background: { r, g, b } } });

beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-messy-"));
  src = path.join(tmp, "src");
  outside = path.join(tmp, "outside");
  fs.mkdirSync(src);
  fs.mkdirSync(outside);
  const put = (name: string, data: Buffer | string): void => fs.writeFileSync(path.join(src, name), data);

  // usable images
  put("good red.png", await solid(32, 32).png().toBuffer());
  put("good red.txt", "red");
  put("photo green.webp", await solid(40, 30, 40, 200, 50).webp().toBuffer());
  put("anim yellow.gif", await solid(24, 24, 230, 220, 40).gif().toBuffer());
  put("scan blue.tiff", await solid(20, 28, 30, 40, 220).tiff().toBuffer());
  put("deep red.png", await solid(32, 32).toColourspace("rgb16").png().toBuffer());
  put("gray.png", await solid(32, 32, 128, 128, 128).toColourspace("b-w").png().toBuffer());
  put("print blue.jpg", await solid(32, 32, 30, 40, 220).toColourspace("cmyk").jpeg().toBuffer());
  put(
    "alpha green.png",
    await sharp({ create: { width: 32, height: 32, channels: 4, background: { r: 40, g: 200, b: 50, alpha: 0.5 } } })
      .png()
      .toBuffer(),
  );
  put("huge yellow.jpg", await solid(4000, 3000, 230, 220, 40).jpeg({ quality: 50 }).toBuffer());
  put("latin red.png", await solid(32, 32).png().toBuffer());
  put("latin red.txt", Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0x72, 0x65, 0x64])); // "café red" in Latin-1
  put("empty caption blue.png", await solid(32, 32, 30, 40, 220).png().toBuffer());
  put("empty caption blue.txt", "");
  // broken or unusable
  const png = await solid(32, 32).png().toBuffer();
  put("truncated.png", png.subarray(0, Math.floor(png.length / 2)));
  put("text.jpg", "this is not a picture\n");
  put("zero.png", Buffer.alloc(0));
  put("tiny1.png", await solid(1, 1).png().toBuffer());
  put("tiny3.png", await solid(3, 3).png().toBuffer());
  // symlinks
  fs.writeFileSync(path.join(outside, "outside green.png"), await solid(32, 32, 40, 200, 50).png().toBuffer());
  fs.symlinkSync("good red.png", path.join(src, "link inside red.png"));
  fs.symlinkSync(path.join(outside, "outside green.png"), path.join(src, "link outside green.png"));
  fs.symlinkSync("does-not-exist.png", path.join(src, "dangling.png"));
  fs.symlinkSync("loop-b", path.join(src, "loop-a"));
  fs.symlinkSync("loop-a", path.join(src, "loop-b"));
  fs.symlinkSync(".", path.join(src, "self-dir"));
}, 60_000);

afterAll(() => {
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Hash of a folder: listing, each entry's type, link target (not followed) and file bytes. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of fs.readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    const st = fs.lstatSync(full);
    if (st.isSymbolicLink()) out.set(name, `link -> ${fs.readlinkSync(full)}`);
    else if (st.isFile()) out.set(name, `file ${st.mode.toString(8)} ${createHash("sha256").update(fs.readFileSync(full)).digest("hex")}`);
    else out.set(name, `other ${st.mode.toString(8)}`);
  }
  return out;
}

const trainOn = (dataDir: string, logDir: string, logs: string[]) =>
  train(base, makeToyNet(), {
    dataDir,
    template: TOY_TEMPLATE,
    maxSteps: 3,
    saveEvery: 0,
    batchSize: 2,
    learningRate: "1e-3",
    seed: 5,
    logDir,
    onLog: (m) => logs.push(m),
    progress: false,
    handleSigint: false,
  }).done;

describe("a messy dataset folder", () => {
  it("preprocess makes an image from every usable file, names each unusable one with its reason, and changes nothing in the source", async () => {
    const before = snapshot(src);
    const outBefore = snapshot(outside);
    const logs: string[] = [];
    const dst = path.join(tmp, "prep");
    const sum = await preprocess(src, dst, { width: 8, height: 8, existingCaption: "copy", log: (m) => logs.push(m) });

    const made = new Map(sum.made.map((m) => [m.source, m]));
    const skipped = new Map(sum.skipped.map((s) => [s.source, s]));
    // Every entry in the folder is accounted for: made, skipped with a reason, or a caption of an image.
    for (const name of fs.readdirSync(src)) {
      if (name.endsWith(".txt")) continue;
      expect(made.has(name) || skipped.has(name), `${name} neither made nor reported`).toBe(true);
    }
    for (const ok of [
      "good red.png",
      "photo green.webp",
      "anim yellow.gif",
      "scan blue.tiff",
      "deep red.png",
      "gray.png",
      "print blue.jpg",
      "alpha green.png",
      "huge yellow.jpg",
      "latin red.png",
      "empty caption blue.png",
      "link inside red.png",
      "link outside green.png",
    ]) {
      expect(made.get(ok), ok).toMatchObject({ width: 8, height: 8 });
    }
    expect(skipped.get("truncated.png")?.reason).toBe("corrupt");
    expect(skipped.get("text.jpg")?.reason).toBe("not-an-image");
    expect(skipped.get("zero.png")?.reason).toBe("empty");
    expect(skipped.get("tiny1.png")).toMatchObject({ reason: "too-small", detail: expect.stringContaining("1×1") });
    expect(skipped.get("tiny3.png")).toMatchObject({ reason: "too-small", detail: expect.stringContaining("3×3") });
    expect(skipped.get("dangling.png")).toMatchObject({
      reason: "not-a-file",
      detail: expect.stringMatching(/broken symbolic link.*does-not-exist\.png/),
    });
    expect(skipped.get("loop-a")).toMatchObject({ reason: "not-a-file", detail: expect.stringMatching(/symbolic link loop/) });
    expect(skipped.get("loop-b")?.reason).toBe("not-a-file");
    expect(skipped.get("self-dir")).toMatchObject({ reason: "not-a-file", detail: expect.stringContaining("folder") });
    for (const s of sum.skipped)
      expect(
        logs.some((l) => l.startsWith(`skipped ${s.source}: `)),
        s.source,
      ).toBe(true);

    // Pixels survive the odd formats: the 16-bit, CMYK and alpha images keep their colour.
    const px = async (file: string): Promise<number[]> => [
      ...(await sharp(path.join(dst, file)).removeAlpha().raw().toBuffer()).subarray(0, 3),
    ];
    const near = (got: number[], want: number[], tol: number): void =>
      got.forEach((v, i) => expect(Math.abs(v - want[i]!), `${got} vs ${want}`).toBeLessThanOrEqual(tol));
    near(await px(made.get("deep red.png")!.file), [200, 40, 40], 1);
    near(await px(made.get("alpha green.png")!.file), [40, 200, 50], 1);
    // CMYK: saturated sRGB blue is outside the CMYK gamut, so the round trip lands on a duller blue
    // (29, 59, 138 with libvips' default profile); what matters is that the channels are not swapped or inverted.
    const cmyk = await px(made.get("print blue.jpg")!.file);
    expect(cmyk[2]!).toBeGreaterThan(2 * cmyk[1]!);
    expect(cmyk[2]!).toBeGreaterThan(2 * cmyk[0]!);

    // Captions: the Latin-1 file is read as Latin-1 (with a note), the empty one falls back to the file name.
    expect(made.get("latin red.png")!.caption).toBe("café red");
    expect(logs.some((l) => l.includes("latin red.txt") && /not UTF-8.*Latin-1/.test(l))).toBe(true);
    expect(made.get("empty caption blue.png")!.caption).toBe("empty caption blue");
    expect(made.get("good red.png")!.caption).toBe("red");

    // Then train on the result.
    const tlogs: string[] = [];
    const res = await trainOn(dst, path.join(tmp, "run-prep"), tlogs);
    expect(res.step).toBe(3);
    expect(res.losses.every((l) => Number.isFinite(l))).toBe(true);

    expect(snapshot(src)).toEqual(before);
    expect(snapshot(outside)).toEqual(outBefore);
  }, 60_000);

  it("train straight on the messy folder: trains on the usable images, names each skipped file, changes nothing", async () => {
    const before = snapshot(src);
    const outBefore = snapshot(outside);
    const logs: string[] = [];
    const res = await trainOn(src, path.join(tmp, "run-raw"), logs);
    expect(res.step).toBe(3);
    expect(res.losses.every((l) => Number.isFinite(l))).toBe(true);
    const skippedLines = logs.filter((l) => l.startsWith("dataset: skipped "));
    for (const name of ["truncated.png", "text.jpg", "zero.png", "dangling.png", "loop-a", "loop-b"]) {
      expect(
        skippedLines.some((l) => l.startsWith(`dataset: skipped ${name}: `)),
        `${name} in ${skippedLines.join(" | ")}`,
      ).toBe(true);
    }
    expect(logs.some((l) => l.includes("latin red.txt") && /not UTF-8.*Latin-1/.test(l))).toBe(true);
    expect(snapshot(src)).toEqual(before);
    expect(snapshot(outside)).toEqual(outBefore);
  }, 60_000);
});
