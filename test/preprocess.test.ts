import { describe, it, expect, beforeAll } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as crypto from "node:crypto";
import sharp from "sharp";
import {
  autoSizePlan,
  captionFromFilename,
  combineCaptions,
  combineFocalPoints,
  cornerPoints,
  coverCropPlan,
  entropyPoint,
  focalCropBox,
  focalScaleSize,
  oversizeRatio,
  preprocess,
  roundHalfEven,
  splitPlan,
  summaryTable,
  renderGrid,
} from "../src/data";
import { FileExistsError } from "../src/io/atomic";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-pre-"));

/** An RGB image whose red channel is x and green channel is y (mod 256): pixels say where they came from. */
function coordImage(w: number, h: number): Buffer {
  const b = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) b.set([x % 256, y % 256, 100], (y * w + x) * 3);
  return b;
}
async function writeCoordPng(file: string, w: number, h: number): Promise<void> {
  await sharp(coordImage(w, h), { raw: { width: w, height: h, channels: 3 } })
    .png()
    .toFile(file);
}
async function readRaw(file: string): Promise<{ data: Buffer; width: number; height: number; channels: number }> {
  const { data, info } = await sharp(file).raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: info.channels };
}
function px(img: { data: Buffer; width: number; channels: number }, x: number, y: number): number[] {
  const i = (y * img.width + x) * img.channels;
  return [...img.data.subarray(i, i + img.channels)];
}
/** Hash of every name and byte under a folder (recursive), to prove it was not touched. */
function hashFolder(dir: string): string {
  const h = crypto.createHash("sha256");
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d).sort()) {
      const f = path.join(d, e);
      const st = fs.statSync(f);
      h.update(`${path.relative(dir, f)}|${st.isDirectory() ? "dir" : st.size}|${st.mtimeMs}\n`);
      if (st.isDirectory()) walk(f);
      else h.update(fs.readFileSync(f));
    }
  };
  walk(dir);
  return h.digest("hex");
}

describe("crop arithmetic (hand-worked A1111 numbers)", () => {
  it("default crop-and-resize covers the target and cuts the centre", () => {
    // 150×100 → 64×64: W/H = 1 ≤ 1.5 = src ratio, so w' = 150·64//100 = 96, h' = 64;
    // A1111 pastes at (64//2 − 96//2, 0) = (−16, 0), i.e. cuts x ∈ [16, 80).
    expect(coverCropPlan(150, 100, 64, 64)).toEqual({
      resizeTo: { width: 96, height: 64 },
      box: { left: 16, top: 0, width: 64, height: 64 },
    });
    // 100×150 → 64×32: W/H = 2 > 0.667, so w' = 64, h' = 150·64//100 = 96; top = 96//2 − 32//2 = 32.
    expect(coverCropPlan(100, 150, 64, 32)).toEqual({
      resizeTo: { width: 64, height: 96 },
      box: { left: 0, top: 32, width: 64, height: 32 },
    });
  });

  it("split oversized: ratio, tile count and offsets", () => {
    // portrait 64×200 → 64×64: ratio = (w·H)/(h·W) = 64·64/(200·64) = 0.32 ≤ 0.5.
    expect(oversizeRatio(64, 200, 64, 64)).toEqual({ ratio: 0.32, alongX: false });
    // long side h = 200·64//64 = 200; count = ceil((200 − 64·0.2)/(64·0.8)) = ceil(187.2/51.2) = ceil(3.66) = 4;
    // step = (200 − 64)/3 = 45.33; tops int(0), int(45.33), int(90.67), int(136) = 0, 45, 90, 136.
    const tall = splitPlan(64, 200, 64, 64, 0.2);
    expect(tall.map((p) => p.box.top)).toEqual([0, 45, 90, 136]);
    expect(tall[0]!.resizeTo).toEqual({ width: 64, height: 200 });
    // landscape 200×100 → 64×64: ratio = (h·W)/(w·H) = 100·64/(200·64) = 0.5 ≤ 0.5 (along x);
    // long side = 200·64//100 = 128; count = ceil((128 − 12.8)/51.2) = ceil(2.25) = 3; step = 64/2 = 32.
    const wide = splitPlan(200, 100, 64, 64, 0.2);
    expect(wide.map((p) => p.box)).toEqual([0, 32, 64].map((left) => ({ left, top: 0, width: 64, height: 64 })));
    expect(wide[0]!.resizeTo).toEqual({ width: 128, height: 64 });
  });

  it("auto-sized crop: candidates, objectives and the centred box", () => {
    const bounds = { minDim: 64, maxDim: 192, minArea: 64 * 64, maxArea: 160 * 160 };
    // 150×150 (r_src = 1), sides {64,128,192}, threshold 0.35: err(w,h) = 1 − min(w/h, h/w).
    // (192,192) area 36864 > 25600 is out; (128,192) and (192,128), err 1/3, area 24576, tie for the
    // largest area; Python's max keeps the first in w-then-h order: (128,192).
    const a = autoSizePlan(150, 150, { ...bounds, threshold: 0.35 })!;
    expect([a.width, a.height]).toEqual([128, 192]);
    expect(a.error).toBeCloseTo(1 / 3, 12);
    // centre crop: 150/192 < 150/128 → sw = 128·150/192 = 100, box x ∈ [25, 125).
    expect(a.exactBox).toEqual({ left: 25, top: 0, right: 125, bottom: 150 });
    expect(a.box).toEqual({ left: 25, top: 0, width: 100, height: 150 });
    // minimize error: (64,64) and (128,128) both have error 0; the larger area, 128×128, wins.
    const b = autoSizePlan(150, 150, { ...bounds, threshold: 0.35, objective: "minimize-error" })!;
    expect([b.width, b.height]).toEqual([128, 128]);
    expect(b.box).toEqual({ left: 0, top: 0, width: 150, height: 150 });
    // 200×150 (4:3): only (192,128) has err = 1 − (4/3)/(3/2) = 1/9 = 0.111 ≤ 0.15;
    // sh = 128·200/192 = 133.33, top = (150 − 133.33)/2 = 8.33 → box rounded to y 8, height 133.
    const c = autoSizePlan(200, 150, { ...bounds, threshold: 0.15 })!;
    expect([c.width, c.height]).toEqual([192, 128]);
    expect(c.exactBox.top).toBeCloseTo(25 / 3, 12);
    expect(c.box).toEqual({ left: 0, top: 8, width: 200, height: 133 });
    // threshold 0.1 < 1/9: nothing fits.
    expect(autoSizePlan(200, 150, { ...bounds, threshold: 0.1 })).toBeUndefined();
  });

  it("focal crop: scale, weighted focus, clamped box", () => {
    // landscape 200×100, crop 64×64: scale = 64/100 → (int(128.0), int(64.0)).
    expect(focalScaleSize(200, 100, 64, 64)).toEqual({ width: 128, height: 64 });
    // portrait 80×160, crop 64×64: scale = 64/80 = 0.8 → (64, 128).
    expect(focalScaleSize(80, 160, 64, 64)).toEqual({ width: 64, height: 128 });
    // 100×80 with a 64×32 crop: A1111's 32/80 would give 40×32 (narrower than the crop);
    // the covering scale max(64/100, 32/80) = 0.64 gives (64, int(51.2)) = (64, 51).
    expect(focalScaleSize(100, 80, 64, 32)).toEqual({ width: 64, height: 51 });
    // edges centroid (20,20) weight 0.5, entropy (60,32) weight 0.15, no faces (weight 0.9 drops out):
    // x = (20·0.5 + 60·0.15)/0.65 = 19/0.65 = 29.23 → 29; y = (20·0.5 + 32·0.15)/0.65 = 14.8/0.65 = 22.77 → 23.
    const focus = combineFocalPoints([
      {
        points: [
          { x: 10, y: 10 },
          { x: 30, y: 10 },
          { x: 10, y: 30 },
          { x: 30, y: 30 },
        ],
        weight: 0.5,
      },
      { points: [{ x: 60, y: 32 }], weight: 0.15 },
      { points: [], weight: 0.9 },
    ]);
    expect(focus).toEqual({ x: 29, y: 23 });
    expect([roundHalfEven(2.5), roundHalfEven(3.5), roundHalfEven(0.5), roundHalfEven(2.51)]).toEqual([2, 4, 0, 3]);
    // box = focus − (32, 32), moved back inside a 128×64 image.
    expect(focalCropBox(focus, 128, 64, 64, 64)).toEqual({ left: 0, top: 0, width: 64, height: 64 });
    expect(focalCropBox({ x: 70, y: 32 }, 128, 64, 64, 64)).toEqual({ left: 38, top: 0, width: 64, height: 64 });
    expect(focalCropBox({ x: 111, y: 32 }, 128, 64, 64, 64)).toEqual({ left: 64, top: 0, width: 64, height: 64 });
  });

  it("corner detector finds the four corners of a square; entropy finds the textured end", () => {
    const w = 64;
    const g = new Float32Array(w * w);
    for (let y = 20; y < 44; y++) for (let x = 20; x < 44; x++) g[y * w + x] = 255;
    const pts = cornerPoints(g, w, w);
    const want = [
      [20, 20],
      [43, 20],
      [20, 43],
      [43, 43],
    ];
    for (const [cx, cy] of want) expect(pts.some((p) => Math.abs(p.x - cx!) <= 1.5 && Math.abs(p.y - cy!) <= 1.5)).toBe(true);
    expect(pts.length).toBe(4);
    // 128×64 grey with random texture only in x ∈ [96, 128): of the 64-wide windows at offsets
    // 0, 4, …, 64 only the last holds all of the texture, so its centre (64 + 32, 32) wins.
    const e = new Float32Array(128 * 64).fill(128);
    let s = 1;
    for (let y = 0; y < 64; y++) for (let x = 96; x < 128; x++) e[y * 128 + x] = (s = (s * 48271) % 2147483647) % 256;
    expect(entropyPoint(e, 128, 64, 64, 64)).toEqual({ x: 96, y: 32 });
  });

  it("captions from file names and existing-caption actions", () => {
    expect(captionFromFilename("00012-0-sunset beach")).toBe("sunset beach");
    expect(captionFromFilename("12-3  a cat")).toBe("a cat");
    // only one run of digits/hyphens and the spaces after it go: "12" + " ", leaving "- 3 a cat"
    expect(captionFromFilename("12 - 3 a cat")).toBe("- 3 a cat");
    expect(captionFromFilename("a_red_fox (2)", { wordRegex: "[a-z]+", joinString: ", " })).toBe("a, red, fox");
    expect(combineCaptions("gen", "old", "prepend")).toBe("old gen");
    expect(combineCaptions("gen", "old", "append")).toBe("gen old");
    expect(combineCaptions("gen", "old", "copy")).toBe("old");
    expect(combineCaptions("gen", "old", "ignore")).toBe("gen");
  });
});

describe("preprocess folders", () => {
  const src = path.join(tmp, "src");
  beforeAll(async () => {
    fs.mkdirSync(src);
    await writeCoordPng(path.join(src, "a-wide.png"), 200, 100);
    await writeCoordPng(path.join(src, "b-tall.png"), 64, 200);
    await writeCoordPng(path.join(src, "003-sunset beach.png"), 150, 100);
    fs.writeFileSync(path.join(src, "c-cat.txt"), "cat, sitting");
    await writeCoordPng(path.join(src, "c-cat.png"), 100, 100);
  });

  it("default crop: sizes, names, captions, and pixels from the expected box", async () => {
    const before = hashFolder(src);
    const dst = path.join(tmp, "out-default");
    const sum = await preprocess(src, dst, { width: 64, height: 64, existingCaption: "copy" });
    expect(hashFolder(src)).toBe(before);
    // sorted entries: 003-sunset beach.png(0), a-wide.png(1), b-tall.png(2), c-cat.png(3), c-cat.txt(4)
    expect(sum.made.map((m) => m.file)).toEqual([
      "00000-0-003-sunset beach.png",
      "00001-0-a-wide.png",
      "00002-0-b-tall.png",
      "00003-0-c-cat.png",
    ]);
    expect(sum.skipped).toEqual([]);
    expect(sum.captionsFound).toBe(1);
    const sunset = sum.made[0]!;
    expect(sunset.box).toEqual({ left: 16, top: 0, width: 64, height: 64 });
    expect(fs.readFileSync(path.join(dst, "00000-0-003-sunset beach.txt"), "utf8")).toBe("sunset beach");
    expect(fs.readFileSync(path.join(dst, "00003-0-c-cat.txt"), "utf8")).toBe("cat, sitting");
    expect(fs.readFileSync(path.join(dst, "00001-0-a-wide.txt"), "utf8")).toBe("a-wide");
    const out = await readRaw(path.join(dst, sunset.file));
    expect([out.width, out.height]).toEqual([64, 64]);
    // output x = 0 is resized x = 16, i.e. source x ≈ (16 + 0.5)·150/96 − 0.5 = 25.3 (red channel = x);
    // output y = 32 is source y ≈ (32 + 0.5)·100/64 − 0.5 = 50.3.
    expect(Math.abs(px(out, 0, 32)[0]! - 25.3)).toBeLessThan(1.5);
    expect(Math.abs(px(out, 63, 32)[0]! - ((79 + 0.5) * 150) / 96 + 0.5)).toBeLessThan(1.5);
    expect(Math.abs(px(out, 10, 32)[1]! - 50.3)).toBeLessThan(1.5);
  });

  it("split oversized cuts the hand-computed tiles; unsplit images still get the default crop", async () => {
    const dst = path.join(tmp, "out-split");
    const sum = await preprocess(src, dst, { width: 64, height: 64, split: true });
    const tall = sum.made.filter((m) => m.source === "b-tall.png");
    expect(tall.map((m) => m.file)).toEqual([0, 1, 2, 3].map((i) => `00002-${i}-b-tall.png`));
    // 64×200 needs no scaling, so each tile's first row is source row 0, 45, 90, 136 (green = y).
    for (const [i, top] of [0, 45, 90, 136].entries()) {
      const t = await readRaw(path.join(dst, tall[i]!.file));
      expect([t.width, t.height]).toEqual([64, 64]);
      expect(px(t, 5, 0)[1]).toBe(top);
      expect(px(t, 5, 63)[1]).toBe(top + 63);
      expect(px(t, 5, 0)[0]).toBe(5);
    }
    const wide = sum.made.filter((m) => m.source === "a-wide.png");
    expect(wide.map((m) => m.box!.left)).toEqual([0, 32, 64]);
    // 150×100: ratio 100·64/(150·64) = 0.667 > 0.5, not split → one default crop.
    expect(sum.made.filter((m) => m.source === "003-sunset beach.png").map((m) => m.kind)).toEqual(["crop"]);
  });

  it("focal crop follows the detail; auto-sized crop picks the hand-computed size", async () => {
    const fsrc = path.join(tmp, "focal-src");
    fs.mkdirSync(fsrc);
    // 128×64 flat grey with a textured block at x ∈ [100, 124): no scaling (64/64 = 1); corners and
    // entropy both lie right of x = 96, so the focus ≥ 96 and the box is clamped to x ∈ [64, 128).
    const w = 128,
      h = 64;
    const b = Buffer.alloc(w * h * 3, 128);
    for (let y = 8; y < 56; y++)
      for (let x = 100; x < 124; x++) b.fill(((x >> 2) + (y >> 2)) % 2 ? 255 : 0, (y * w + x) * 3, (y * w + x) * 3 + 3);
    await sharp(b, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toFile(path.join(fsrc, "detail.png"));
    const sum = await preprocess(fsrc, path.join(tmp, "out-focal"), { width: 64, height: 64, focalCrop: { debugImage: true } });
    expect(sum.made[0]!.kind).toBe("focal");
    expect(sum.made[0]!.box).toEqual({ left: 64, top: 0, width: 64, height: 64 });
    expect(fs.existsSync(path.join(tmp, "out-focal", "focal-debug", "00000-detail.png"))).toBe(true);

    const asrc = path.join(tmp, "auto-src");
    fs.mkdirSync(asrc);
    await writeCoordPng(path.join(asrc, "p.png"), 200, 150);
    const bounds = { minDim: 64, maxDim: 192, minArea: 64 * 64, maxArea: 160 * 160 };
    const a = await preprocess(asrc, path.join(tmp, "out-auto"), { autoSized: { ...bounds, threshold: 0.15 } });
    expect(a.made[0]).toMatchObject({ kind: "auto-sized", width: 192, height: 128, box: { left: 0, top: 8, width: 200, height: 133 } });
    const img = await readRaw(path.join(tmp, "out-auto", a.made[0]!.file));
    expect([img.width, img.height]).toEqual([192, 128]);
    const none = await preprocess(asrc, path.join(tmp, "out-auto2"), { autoSized: { ...bounds, threshold: 0.1 } });
    expect(none.made).toEqual([]);
    expect(none.skipped.map((s) => s.reason)).toEqual(["no-auto-size"]);
  });

  it("flipped copies are exact mirrors with the source's caption", async () => {
    const dst = path.join(tmp, "out-flip");
    const sum = await preprocess(src, dst, { width: 64, height: 64, flips: ["horizontal", "vertical", "both"], existingCaption: "copy" });
    const cat = sum.made.filter((m) => m.source === "c-cat.png");
    expect(cat.map((m) => [m.file, m.flip])).toEqual([
      ["00003-0-c-cat.png", undefined],
      ["00003-1-c-cat.png", "horizontal"],
      ["00003-2-c-cat.png", "vertical"],
      ["00003-3-c-cat.png", "both"],
    ]);
    for (const m of cat) expect(fs.readFileSync(path.join(dst, m.file.replace(".png", ".txt")), "utf8")).toBe("cat, sitting");
    const [o, hz, vt, bo] = await Promise.all(cat.map((m) => readRaw(path.join(dst, m.file))));
    for (const [x, y] of [
      [0, 0],
      [5, 17],
      [63, 40],
      [31, 63],
    ]) {
      expect(px(hz!, x!, y!)).toEqual(px(o!, 63 - x!, y!));
      expect(px(vt!, x!, y!)).toEqual(px(o!, x!, 63 - y!));
      expect(px(bo!, x!, y!)).toEqual(px(o!, 63 - x!, 63 - y!));
    }
    expect(px(hz!, 0, 0)).not.toEqual(px(o!, 0, 0));
  });

  it("captioner output is combined with existing captions; caption-only keeps the size", async () => {
    const sum = await preprocess(src, path.join(tmp, "out-cap"), {
      captionOnly: true,
      existingCaption: "prepend",
      captioner: () => "a photo",
    });
    const cat = sum.made.find((m) => m.source === "c-cat.png")!;
    expect(cat.caption).toBe("cat, sitting a photo");
    expect(sum.made.find((m) => m.source === "a-wide.png")).toMatchObject({
      kind: "caption-only",
      width: 200,
      height: 100,
      caption: "a photo",
    });
  });

  it("alpha is dropped by default and kept when asked", async () => {
    const asrc = path.join(tmp, "alpha-src");
    fs.mkdirSync(asrc);
    const rgba = Buffer.alloc(48 * 48 * 4, 255);
    for (let i = 0; i < 48 * 48; i++) rgba[i * 4 + 3] = i % 48 < 24 ? 0 : 255;
    await sharp(rgba, { raw: { width: 48, height: 48, channels: 4 } })
      .png()
      .toFile(path.join(asrc, "m.png"));
    await preprocess(asrc, path.join(tmp, "out-rgb"), { width: 32, height: 32 });
    await preprocess(asrc, path.join(tmp, "out-rgba"), { width: 32, height: 32, keepAlpha: true });
    expect((await readRaw(path.join(tmp, "out-rgb", "00000-0-m.png"))).channels).toBe(3);
    const kept = await readRaw(path.join(tmp, "out-rgba", "00000-0-m.png"));
    expect(kept.channels).toBe(4);
    expect(px(kept, 2, 10)[3]).toBe(0);
    expect(px(kept, 29, 10)[3]).toBe(255);
  });

  it("EXIF orientation 6 comes out upright", async () => {
    const esrc = path.join(tmp, "exif-src");
    fs.mkdirSync(esrc);
    // stored 60 wide × 40 tall: top half red, bottom half blue. Orientation 6 = turn 90° clockwise to
    // display, so the stored top becomes the right side of a 40 × 60 image.
    const b = Buffer.alloc(60 * 40 * 3);
    for (let y = 0; y < 40; y++) for (let x = 0; x < 60; x++) b.set(y < 20 ? [255, 0, 0] : [0, 0, 255], (y * 60 + x) * 3);
    await sharp(b, { raw: { width: 60, height: 40, channels: 3 } })
      .jpeg({ quality: 95 })
      .withMetadata({ orientation: 6 })
      .toFile(path.join(esrc, "photo.jpg"));
    expect((await sharp(path.join(esrc, "photo.jpg")).metadata()).orientation).toBe(6);
    const sum = await preprocess(esrc, path.join(tmp, "out-exif"), { captionOnly: true });
    const img = await readRaw(path.join(tmp, "out-exif", sum.made[0]!.file));
    expect([img.width, img.height]).toEqual([40, 60]);
    const right = px(img, 35, 30);
    const left = px(img, 4, 30);
    expect(right[0]).toBeGreaterThan(200);
    expect(right[2]).toBeLessThan(60);
    expect(left[2]).toBeGreaterThan(200);
    expect(left[0]).toBeLessThan(60);
  });

  it("bad input is reported per file and skipped; the source folder is unchanged", async () => {
    const bsrc = path.join(tmp, "bad-src");
    fs.mkdirSync(bsrc);
    const noise = Buffer.alloc(64 * 64 * 3);
    for (let i = 0; i < noise.length; i++) noise[i] = (i * 7919) % 251;
    const png = await sharp(noise, { raw: { width: 64, height: 64, channels: 3 } })
      .png()
      .toBuffer();
    fs.writeFileSync(path.join(bsrc, "good.png"), png);
    fs.writeFileSync(path.join(bsrc, "truncated.png"), png.subarray(0, Math.floor(png.length / 2)));
    fs.writeFileSync(path.join(bsrc, "notes.png"), "this is text, not a picture\n");
    fs.writeFileSync(path.join(bsrc, "zero.png"), Buffer.alloc(0));
    await sharp({ create: { width: 1, height: 1, channels: 3, background: "#fff" } })
      .png()
      .toFile(path.join(bsrc, "tiny.png"));
    fs.mkdirSync(path.join(bsrc, "x.jpg"));
    fs.writeFileSync(path.join(bsrc, "old.bmp"), Buffer.concat([Buffer.from("BM"), Buffer.alloc(60)]));
    const before = hashFolder(bsrc);
    const dst = path.join(tmp, "out-bad");
    const sum = await preprocess(bsrc, dst, { width: 32, height: 32 });
    expect(hashFolder(bsrc)).toBe(before);
    expect(sum.made.map((m) => m.file)).toEqual(["00000-0-good.png"]);
    const reasons = Object.fromEntries(sum.skipped.map((s) => [s.source, s.reason]));
    expect(reasons).toEqual({
      "notes.png": "not-an-image",
      "old.bmp": "unsupported-format",
      "tiny.png": "too-small",
      "truncated.png": "corrupt",
      "x.jpg": "not-a-file",
      "zero.png": "empty",
    });
    for (const s of sum.skipped) expect(s.detail.length).toBeGreaterThan(10);
    const html = summaryTable(sum);
    expect(html).toContain("<table");
    expect(html).toContain("truncated.png");
    expect(html).toContain("00000-0-good.png");

    // Running again into the same folder refuses to overwrite, unless asked.
    await expect(preprocess(bsrc, dst, { width: 32, height: 32 })).rejects.toBeInstanceOf(FileExistsError);
    await expect(preprocess(bsrc, dst, { width: 32, height: 32, overwrite: true })).resolves.toBeDefined();
    await expect(preprocess(bsrc, bsrc)).rejects.toThrow(/source folder/);
    await expect(preprocess(bsrc, path.join(bsrc, "sub"))).rejects.toThrow(/inside it/);
    expect(hashFolder(bsrc)).toBe(before);

    const grid = await renderGrid(dst, { cell: 48, columns: 2 });
    const meta = await sharp(grid).metadata();
    expect(meta.format).toBe("png");
    expect(meta.width).toBe(48);
  });
});
