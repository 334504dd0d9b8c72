/**
 * The embedded tiny base model and its data: the procedural dataset (captions agree with pixels,
 * determinism), the eval classifier on ground truth, the pastel style set and its score, the shipped
 * weights (load, forward, no leaks), the wasm gather-gradient kernel, and the model card's numbers
 * against the eval results in the repo.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BaseModel } from "../src/pipeline/base-model";
import { classifyImage, hueChroma } from "../src/tiny/shapes-data/classify";
import { TINY_MODEL_DIR, loadTinyModel, readTinyConfig } from "../src/tiny/model";
import { sampleTiny } from "../src/tiny/sample";
import {
  BACKGROUNDS,
  COLORS,
  TINY_SIZE,
  captionOf,
  captionVocabulary,
  fromModelPixels,
  renderScene,
  shapeSample,
  shapeSamples,
  toModelPixels,
  type Scene,
} from "../src/tiny/shapes-data/shapes";
import { pastelStyleSet, styleScore, whiteness } from "../src/tiny/shapes-data/style";
import { stripedSet, writeStripedSet } from "../src/tiny/shapes-data/image-folder";
import { registerWasmUnsortedSegmentSum } from "../src/backend/wasm-segment-sum";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";

describe("tiny-shapes dataset", () => {
  const samples = shapeSamples(11, 0, 120);

  it("captions name what the pixels show (classifier agrees on background, colour, count; shape ≥ 98%)", () => {
    let shapeOk = 0;
    for (const s of samples) {
      const c = classifyImage(s.pixels);
      expect(c.background, s.caption).toBe(s.scene.background);
      expect(c.color, s.caption).toBe(s.scene.color);
      expect(c.count, s.caption).toBe(s.scene.count);
      if (c.shape === s.scene.shape) shapeOk++;
      // The caption mentions each attribute by name.
      expect(s.caption).toContain(s.scene.color);
      expect(s.caption).toContain(`${s.scene.background} background`);
    }
    expect(shapeOk / samples.length).toBeGreaterThanOrEqual(0.98);
  });

  it("draws a single shape where the caption says (its box centre is nearest the named position)", () => {
    for (const s of samples.filter((x) => x.scene.count === 1)) {
      const bg = BACKGROUNDS[s.scene.background];
      let [x0, x1, y0, y1] = [32, 0, 32, 0];
      for (let i = 0; i < TINY_SIZE * TINY_SIZE; i++) {
        const d = Math.abs(s.pixels[i * 3]! - bg[0]) + Math.abs(s.pixels[i * 3 + 1]! - bg[1]) + Math.abs(s.pixels[i * 3 + 2]! - bg[2]);
        if (d <= 60) continue;
        const [x, y] = [i % TINY_SIZE, Math.floor(i / TINY_SIZE)];
        [x0, x1, y0, y1] = [Math.min(x0, x), Math.max(x1, x + 1), Math.min(y0, y), Math.max(y1, y + 1)];
      }
      const [cx, cy] = [(x0 + x1) / 2, (y0 + y1) / 2];
      // Nominal centres: 2 px margin between the shape's radius (5 or 10 px) and the frame.
      const off = 16 - (s.scene.size === "small" ? 5 : 10) - 2;
      const nominal = { left: [16 - off, 16], right: [16 + off, 16], top: [16, 16 - off], bottom: [16, 16 + off], center: [16, 16] };
      const dist = (p: number[]): number => Math.hypot(cx - p[0]!, cy - p[1]!);
      const nearest = Object.entries(nominal).sort((a, b) => dist(a[1]) - dist(b[1]))[0]![0];
      expect(nearest, `${s.caption}: box centre (${cx.toFixed(1)}, ${cy.toFixed(1)})`).toBe(s.scene.position);
    }
  });

  it("renders exact colours: a pixel fully inside a shape has the shape colour, the corners the background", () => {
    const scene: Scene = {
      shape: "square",
      color: "cyan",
      background: "gray",
      count: 1,
      size: "large",
      position: "center",
      centers: [[16, 16]],
    };
    const px = renderScene(scene);
    expect([...px.subarray((16 * 32 + 16) * 3, (16 * 32 + 16) * 3 + 3)]).toEqual([...COLORS.cyan]);
    expect([...px.subarray(0, 3)]).toEqual([...BACKGROUNDS.gray]);
    // Half-size 0.85·10 = 8.5 px around 16: columns 8–23 are fully inside (16 px), 7.5 px… partly.
    const row = 16 * 32 * 3;
    expect(px[row + 8 * 3]).toBe(COLORS.cyan[0]);
    expect(px[row + 6 * 3]).toBe(BACKGROUNDS.gray[0]);
    expect(captionOf(scene)).toBe("a large cyan square in the center, gray background");
  });

  it("is deterministic by (seed, index) and differs across seeds", () => {
    const a = shapeSample(5, 17);
    const b = shapeSample(5, 17);
    expect(b.caption).toBe(a.caption);
    expect(Buffer.from(b.pixels).equals(Buffer.from(a.pixels))).toBe(true);
    // A sample does not depend on which others were drawn before it.
    expect(shapeSamples(5, 15, 4)[2]!.caption).toBe(a.caption);
    const other = shapeSamples(6, 0, 20).map((s) => s.caption);
    const same = shapeSamples(5, 0, 20).map((s) => s.caption);
    expect(other).not.toEqual(same);
  });

  it("covers every shape, colour, background, size, position and count, with a closed vocabulary", () => {
    const many = shapeSamples(3, 0, 600);
    const seen = (f: (s: Scene) => string | number | undefined): Set<string | number | undefined> => new Set(many.map((s) => f(s.scene)));
    expect(seen((s) => s.shape).size).toBe(6);
    expect(seen((s) => s.color).size).toBe(6);
    expect(seen((s) => s.background).size).toBe(3);
    expect(seen((s) => s.size).size).toBe(2);
    expect(seen((s) => s.position).size).toBe(6); // five positions + undefined for pairs
    expect(seen((s) => s.count).size).toBe(2);
    const vocab = new Set(captionVocabulary());
    for (const s of many) for (const w of s.caption.replace(",", " ,").split(/\s+/)) expect(vocab.has(w), w).toBe(true);
  });

  it("converts bytes to model pixels in [−1, 1] and back exactly", () => {
    const imgs = shapeSamples(1, 0, 3).map((s) => s.pixels);
    const f = toModelPixels(imgs);
    expect(Math.min(...f)).toBeGreaterThanOrEqual(-1);
    expect(Math.max(...f)).toBeLessThanOrEqual(1);
    const back = fromModelPixels(f, 3);
    back.forEach((b, i) => expect(Buffer.from(b).equals(Buffer.from(imgs[i]!))).toBe(true));
  });
});

describe("classifier colour by hue", () => {
  it("computes HSV hue and chroma (hand-checked values)", () => {
    expect(hueChroma(255, 0, 0)).toEqual({ hue: 0, chroma: 255 });
    expect(hueChroma(0, 255, 0)).toEqual({ hue: 120, chroma: 255 });
    expect(hueChroma(0, 0, 255)).toEqual({ hue: 240, chroma: 255 });
    expect(hueChroma(255, 255, 0)).toEqual({ hue: 60, chroma: 255 });
    expect(hueChroma(100, 100, 100)).toEqual({ hue: 0, chroma: 0 });
    // (40, 200, 210): max b, hue = 60·((r − g)/C + 4) = 60·(−160/170 + 4) ≈ 183.5
    expect(hueChroma(40, 200, 210).hue).toBeCloseTo(60 * (-160 / 170 + 4), 9);
  });

  it("keeps a colour's hue when it is mixed with a neutral (lightened, darkened)", () => {
    for (const c of Object.values(COLORS)) {
      const h = hueChroma(...(c as readonly number[] as [number, number, number])).hue;
      const light = c.map((v) => v * 0.6 + 110) as [number, number, number];
      const dark = c.map((v) => v * 0.3 + 8) as [number, number, number];
      expect(hueChroma(...light).hue).toBeCloseTo(h, 6);
      expect(hueChroma(...dark).hue).toBeCloseTo(h, 6);
    }
  });

  it("names the colour of every held-out ground-truth image (data seed 2024, 100 images)", () => {
    const wrong = shapeSamples(2024, 0, 100).filter((s) => classifyImage(s.pixels).color !== s.scene.color);
    expect(wrong.map((s) => s.caption)).toEqual([]);
  });

  it("names the colour of every pastel-style image (each colour mixed halfway to white)", () => {
    const wrong = pastelStyleSet(120, 5).filter((s) => classifyImage(s.pixels).color !== s.scene.color);
    expect(wrong.map((s) => s.caption)).toEqual([]);
  });
});

/** Each palette colour mixed halfway to white, worked out by hand: (c + 255) / 2, halves rounded up. */
const PASTEL_BY_HAND: Record<keyof typeof COLORS, number[]> = {
  red: [238, 148, 148], // (220, 40, 40)
  green: [148, 213, 158], // (40, 170, 60)
  blue: [148, 163, 238], // (40, 70, 220)
  yellow: [245, 230, 148], // (235, 205, 40)
  magenta: [228, 153, 228], // (200, 50, 200)
  cyan: [148, 228, 233], // (40, 200, 210)
};

describe("pastel style set and styleScore", () => {
  const pastel = pastelStyleSet(40);

  it("is deterministic and captioned with content only, on black", () => {
    const again = pastelStyleSet(40);
    expect(again.map((s) => s.caption)).toEqual(pastel.map((s) => s.caption));
    for (const s of pastel) {
      expect(s.caption).toBe(captionOf(s.scene));
      expect(s.caption.endsWith("black background")).toBe(true);
    }
  });

  it("draws each shape where the base model would, in its colour mixed halfway to white", () => {
    for (const s of pastel.slice(0, 10)) {
      const flat = renderScene(s.scene);
      const want = PASTEL_BY_HAND[s.scene.color];
      let inside = 0;
      for (let i = 0; i < 32 * 32; i++) {
        // Fully covered pixels of the flat rendering are exactly the palette colour; there the pastel one is the pastel colour.
        if ([0, 1, 2].every((c) => flat[i * 3 + c] === COLORS[s.scene.color][c])) {
          expect([...s.pixels.subarray(i * 3, i * 3 + 3)]).toEqual(want);
          inside++;
        }
      }
      expect(inside, s.caption).toBeGreaterThan(0);
    }
  });

  it("separates the style from the base look on ground truth", () => {
    const styleImgs = pastel.map((s) => s.pixels);
    // The very same scenes drawn the base way: only the style differs.
    const baseSame = pastel.map((s) => renderScene(s.scene));
    const baseData = shapeSamples(7, 0, 100).map((s) => s.pixels);
    const sStyle = styleScore(styleImgs);
    expect(sStyle).toBeGreaterThan(0.55);
    expect(styleScore(baseSame)).toBeLessThan(0.3);
    expect(styleScore(baseData)).toBeLessThan(0.3); // white and gray backgrounds too: edges do not count
    // Mixing half and half lands in between.
    const mixed = styleScore([...styleImgs.slice(0, 20), ...baseSame.slice(20)]);
    expect(mixed).toBeGreaterThan(styleScore(baseSame));
    expect(mixed).toBeLessThan(sStyle);
  });

  it("keeps the content readable: the classifier names the shape of ≥ 95% of pastel images", () => {
    const set = pastelStyleSet(120, 5);
    const shapeRight = set.filter((s) => classifyImage(s.pixels).shape === s.scene.shape).length;
    expect(shapeRight / set.length).toBeGreaterThanOrEqual(0.95);
  });

  it("whiteness: hand-computed on squares; edge pixels do not count; null without an inside", () => {
    const img = new Uint8Array(32 * 32 * 3);
    for (let i = 0; i < 32 * 32; i++) img.set([15, 15, 15], i * 3);
    // A 10×10 square with a white outer ring (drawn: nearer yellow than black, but every ring pixel
    // has an undrawn neighbour, so it does not count) around an 8×8 of (200, 100, 50): 50/200.
    for (let y = 10; y < 20; y++)
      for (let x = 10; x < 20; x++)
        img.set(y === 10 || y === 19 || x === 10 || x === 19 ? [255, 255, 255] : [200, 100, 50], (y * 32 + x) * 3);
    expect(whiteness(img)).toBeCloseTo(0.25, 12);
    // Its inner 6×6 made (220, 110, 110), 110/220: 36 pixels at 0.5 and 28 at 0.25.
    for (let y = 12; y < 18; y++) for (let x = 12; x < 18; x++) img.set([220, 110, 110], (y * 32 + x) * 3);
    expect(whiteness(img)).toBeCloseTo((36 * 0.5 + 28 * 0.25) / 64, 12);
    const thin = new Uint8Array(32 * 32 * 3);
    for (let x = 5; x < 25; x++) thin.set([220, 40, 40], (16 * 32 + x) * 3); // a one-pixel line has no inside
    expect(whiteness(thin)).toBeNull();
    expect(whiteness(new Uint8Array(32 * 32 * 3))).toBeNull();
    expect(styleScore([thin])).toBe(0);
    expect(() => whiteness(new Uint8Array(5))).toThrow(/32×32/);
  });
});

describe("the striped toy style set as an image folder (notebooks 01 and 03)", () => {
  it("darkens exactly the pixels on the diagonal stripes to 35 %, keeps the captions, and writes PNG + .txt pairs that read back unchanged", async () => {
    const plain = shapeSamples(7, 0, 3);
    const striped = stripedSet(3);
    for (const [i, s] of striped.entries()) {
      expect(s.caption).toBe(plain[i]!.caption);
      for (const [y, x, c] of [
        [0, 0, 0],
        [0, 1, 2],
        [5, 1, 1],
        [31, 31, 0],
        [2, 3, 1],
        [10, 13, 2],
      ] as const) {
        const j = (y * 32 + x) * 3 + c;
        const want = (x + y) % 6 < 2 ? Math.round(plain[i]!.pixels[j]! * 0.35) : plain[i]!.pixels[j]!;
        expect(s.pixels[j], `image ${i} pixel (${x}, ${y}) channel ${c}`).toBe(want);
      }
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "striped-"));
    const files = await writeStripedSet(dir, 3);
    expect(fs.readdirSync(dir).sort()).toEqual(["img000.png", "img000.txt", "img001.png", "img001.txt", "img002.png", "img002.txt"]);
    expect(files).toEqual([0, 1, 2].map((i) => path.join(dir, `img00${i}.png`)));
    expect(fs.readFileSync(path.join(dir, "img001.txt"), "utf8")).toBe(plain[1]!.caption);
    const back = await sharp(path.join(dir, "img002.png")).raw().toBuffer({ resolveWithObject: true });
    expect([back.info.width, back.info.height, back.info.channels]).toEqual([32, 32, 3]);
    expect(Buffer.compare(back.data, Buffer.from(striped[2]!.pixels))).toBe(0);
    // A second write does not replace the user's files unless asked.
    await expect(writeStripedSet(dir, 3)).rejects.toThrow(/img000\.png already exists; pass \{ overwrite: true \}/);
    await writeStripedSet(dir, 2, { overwrite: true, seed: 8 });
    expect(fs.readFileSync(path.join(dir, "img000.txt"), "utf8")).toBe(shapeSamples(8, 0, 1)[0]!.caption);
  });
});

describe("wasm UnsortedSegmentSum (the gradient of the token-embedding lookup)", () => {
  beforeAll(setupBackend);

  it("sums gradients of repeated ids into their rows", async () => {
    if (tf.getBackend() === "wasm") registerWasmUnsortedSegmentSum();
    const table = tf.variable(tf.tensor2d([1, 2, 3, 4, 5, 6, 7, 8], [4, 2]));
    const ids = tf.tensor1d([2, 0, 2, 3, 2], "int32");
    const weights = tf.tensor2d([1, 10, 100, 1000, 1, 2, 3, 4, 5, 6], [5, 2]);
    await expectNoLeak(() => {
      const { grads, value } = tf.variableGrads(() => tf.sum(tf.mul(tf.gather(table, ids), weights)) as tf.Scalar, [table]);
      // Row 2 was used at positions 0, 2, 4; row 0 at 1; row 3 at 3; row 1 never.
      expectClose(grads[table.name]!.dataSync(), [100, 1000, 0, 0, 1 + 1 + 5, 10 + 2 + 6, 3, 4]);
      tf.dispose([value, grads]);
    });
    tf.dispose([table, ids, weights]);
  });
});

describe("the shipped tiny model", () => {
  let base: BaseModel;
  beforeAll(async () => {
    await setupBackend();
    base = loadTinyModel();
  });
  afterAll(() => base?.dispose());

  it("has the documented architecture: self-attention widths 32, 64 and 96, cross-attention context 80", () => {
    const cfg = readTinyConfig();
    expect(base.space).toBe("pixel");
    expect(base.sampleSize).toBe(32);
    expect(base.channels).toBe(3);
    const self = new Set<number>();
    const cross = new Set<number>();
    for (const [p, layer] of base.unet.attentionLayers()) {
      const toK = layer.namedParameters().find(([k]) => k === "to_k.weight")![1];
      (p.endsWith("attn1") ? self : cross).add(toK.torchShape[1]!);
    }
    expect([...self].sort((a, b) => a - b)).toEqual([32, 64, 96]);
    expect([...cross]).toEqual([80]);
    expect(cfg.text.width).toBe(80);
    const bytes = fs.statSync(path.join(TINY_MODEL_DIR, "model.safetensors")).size;
    expect(bytes).toBeLessThan(8 * 2 ** 20);
  });

  it("tokenizes every caption word without <unk>", () => {
    const warnings: string[] = [];
    for (const s of shapeSamples(2, 0, 50)) base.tokenizer.tokenize(s.caption, warnings);
    expect(warnings).toEqual([]);
  });

  it("runs a UNet forward and a text encode with no tensor leaks", async () => {
    const x = tf.tensor4d(toModelPixels(shapeSamples(1, 0, 2).map((s) => s.pixels)), [2, 32, 32, 3]);
    await expectNoLeak(() => {
      const ctx = base.encodeText(["a large red circle on the left, white background", ""]);
      expect(ctx.shape).toEqual([2, 16, 80]);
      const eps = base.unet.forward(x, [10, 900], ctx);
      expect(eps.shape).toEqual([2, 32, 32, 3]);
      const v = eps.dataSync();
      expect(v.every(Number.isFinite)).toBe(true);
      tf.dispose([ctx, eps]);
    });
    x.dispose();
  });

  it("samples images with sampleTiny, reproducibly by seed, without leaks", async () => {
    const prompts = ["a large red circle in the center, white background"];
    const a = await expectNoLeak(() => sampleTiny(base, prompts, { seed: 3, steps: 2, sampler: "DDIM" }));
    const b = await sampleTiny(base, prompts, { seed: 3, steps: 2, sampler: "DDIM" });
    expect(a).toHaveLength(1);
    expect(a[0]!.length).toBe(32 * 32 * 3);
    expect(Buffer.from(a[0]!).equals(Buffer.from(b[0]!))).toBe(true);
  });
});

describe("the model card", () => {
  it("reports the numbers that models/tiny/eval.json holds", () => {
    const card = fs.readFileSync(path.join(TINY_MODEL_DIR, "MODEL_CARD.md"), "utf8");
    const evalJson = JSON.parse(fs.readFileSync(path.join(TINY_MODEL_DIR, "eval.json"), "utf8")) as Record<string, number>;
    const config = readTinyConfig();
    const pct = (label: string): number => {
      const m = new RegExp(`\\|\\s*${label}\\s*\\|\\s*([0-9.]+)\\s*%`).exec(card);
      if (!m) throw new Error(`MODEL_CARD.md has no "| ${label} | N% |" row`);
      return Number(m[1]);
    };
    expect(pct("colour accuracy")).toBeCloseTo(evalJson.colorAccuracy! * 100, 1);
    expect(pct("shape accuracy")).toBeCloseTo(evalJson.shapeAccuracy! * 100, 1);
    expect(pct("classifier on ground truth")).toBeCloseTo(evalJson.classifierOnGroundTruth! * 100, 1);
    expect(evalJson.modelSteps).toBe(config.training?.steps);
    const steps = /\|\s*training steps\s*\|\s*([0-9,]+)\s*\|/.exec(card);
    expect(Number(steps?.[1]?.replace(/,/g, ""))).toBe(config.training?.steps);
  });
});
