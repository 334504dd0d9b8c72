import { describe, it, expect, beforeAll } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import sharp from "sharp";
import {
  alphaToWeights,
  fillTemplate,
  loadTemplate,
  processTags,
  STOCK_TEMPLATES,
  TrainingDataset,
  type Rng,
  type LatentDistribution,
} from "../src/data";

/** mulberry32: a small seeded uniform generator, independent of the code under test. */
function seeded(seed: number): Rng {
  let a = seed >>> 0;
  return {
    next(): number {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    },
  };
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-ds-"));
async function solid(file: string, w: number, h: number, rgb: [number, number, number]): Promise<void> {
  await sharp({ create: { width: w, height: h, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } })
    .png()
    .toFile(file);
}

describe("templates and tags", () => {
  it("stock templates load and substitute [filewords] and [name]", () => {
    const lines = loadTemplate("style_filewords");
    expect(lines.length).toBe(17);
    for (const l of lines) expect(l).toMatch(/\[filewords\].*art by \[name\]$/);
    expect(loadTemplate("none")).toEqual(["picture"]);
    for (const t of STOCK_TEMPLATES) expect(loadTemplate(t).length).toBeGreaterThan(0);
    expect(loadTemplate("subject_filewords")[0]).toBe("a photo of a [name], [filewords]");
    expect(fillTemplate("a painting of [filewords], art by [name]", "cat, sitting", "watery")).toBe(
      "a painting of cat, sitting, art by watery",
    );
    expect(() => loadTemplate("no-such-template")).toThrow(/style_filewords/);
  });

  it("shuffle keeps the first N tags fixed and permutes the rest uniformly", () => {
    const rng = seeded(1);
    const caption = "masterpiece, 1girl, a, b, c, d";
    const firstFree: Record<string, number> = {};
    const trials = 4000;
    for (let i = 0; i < trials; i++) {
      const tags = processTags(caption, { shuffle: true, keepTokens: 2 }, rng).split(", ");
      expect(tags.slice(0, 2)).toEqual(["masterpiece", "1girl"]);
      expect([...tags.slice(2)].sort()).toEqual(["a", "b", "c", "d"]);
      firstFree[tags[2]!] = (firstFree[tags[2]!] ?? 0) + 1;
    }
    // each of 4 tags lands in the first free slot with p = 1/4: 1000 ± 3σ, σ = sqrt(4000·¼·¾) = 27.4
    for (const t of ["a", "b", "c", "d"]) expect(Math.abs(firstFree[t]! - 1000)).toBeLessThan(83);
    // no shuffle, no dropout: the caption untouched (even its spacing)
    expect(processTags("a,b ,  c", {}, rng)).toBe("a,b ,  c");
  });

  it("tag dropout removes each free tag with the given rate and never a kept one", () => {
    const rng = seeded(2);
    const tags = Array.from({ length: 11 }, (_, i) => `t${i}`);
    let kept = 0;
    const trials = 2000;
    for (let i = 0; i < trials; i++) {
      const out = processTags(tags.join(", "), { dropout: 0.3, keepTokens: 1 }, rng)
        .split(", ")
        .filter((s) => s);
      expect(out[0]).toBe("t0");
      kept += out.length - 1;
    }
    // 10 free tags × 2000 trials, keep probability 0.7: mean 0.7, σ = sqrt(0.21/20000) = 0.0032
    expect(Math.abs(kept / (trials * 10) - 0.7)).toBeLessThan(0.0032 * 4);
  });
});

describe("TrainingDataset", () => {
  const dir = path.join(tmp, "set");
  beforeAll(async () => {
    fs.mkdirSync(dir);
    await solid(path.join(dir, "00000-0-red fox.png"), 64, 32, [255, 0, 0]);
    fs.writeFileSync(path.join(dir, "b.txt"), "cat, sitting\n");
    await solid(path.join(dir, "b.png"), 64, 32, [0, 255, 0]);
    await solid(path.join(dir, "c.png"), 32, 64, [0, 0, 255]);
    fs.writeFileSync(path.join(dir, "readme.md"), "not an image");
  });

  it("captions, fresh template line per fetch, pixels in [-1, 1]", async () => {
    const ds = await TrainingDataset.load(dir, {
      name: "watery",
      rng: seeded(3),
      width: 32,
      height: 32,
      template: ["A [filewords] by [name]", "B [filewords] by [name]"],
    });
    expect(ds.imageCount).toBe(3);
    expect(ds.skipped.map((s) => s.file)).toEqual(["readme.md"]);
    expect([ds.caption(0), ds.caption(1), ds.caption(2)]).toEqual(["red fox", "cat, sitting", "c"]);
    const first = ds.get(1);
    expect(first.prompt).toMatch(/^[AB] cat, sitting by watery$/);
    expect(first.shape).toEqual([32, 32, 3]);
    // green 255 → 1, red 0 → −1 (solid colour survives the resize)
    expect(first.pixels![0]).toBeCloseTo(-1, 6);
    expect(first.pixels![1]).toBeCloseTo(1, 6);
    let a = 0;
    const n = 400;
    for (let i = 0; i < n; i++) if (ds.get(1).prompt.startsWith("A")) a++;
    // each line with p = ½ on every fetch: 200 ± 3σ, σ = 10
    expect(Math.abs(a - 200)).toBeLessThan(30);
  });

  it("filename word regex and join string make the caption when there is no .txt", async () => {
    const ds = await TrainingDataset.load(dir, {
      name: "n",
      rng: seeded(8),
      width: 32,
      height: 32,
      filenameWordRegex: "\\w+",
      filenameJoin: "+",
    });
    expect(ds.caption(0)).toBe("red+fox");
    expect(ds.caption(1)).toBe("cat, sitting");
  });

  it("repeats repeat, and the same seed gives the same prompts", async () => {
    const opts = { name: "n", width: 32, height: 32, repeats: 3, template: "style_filewords", shuffle: true } as const;
    const ds = await TrainingDataset.load(dir, { ...opts, rng: seeded(4) });
    expect(ds.length).toBe(9);
    const seen = new Array(3).fill(0);
    for (const batch of ds.epochBatches(3)) for (const i of batch) seen[ds.get(i).image]++;
    expect(seen).toEqual([3, 3, 3]);
    expect(() => ds.get(9)).toThrow(RangeError);
    const again = await TrainingDataset.load(dir, { ...opts, rng: seeded(4) });
    const ds2 = await TrainingDataset.load(dir, { ...opts, rng: seeded(4) });
    expect(Array.from({ length: 5 }, (_, i) => again.get(i).prompt)).toEqual(Array.from({ length: 5 }, (_, i) => ds2.get(i).prompt));
  });

  it("do-not-resize keeps native sizes in buckets; batches never mix sizes", async () => {
    const ds = await TrainingDataset.load(dir, { name: "n", rng: seeded(5), doNotResize: true, repeats: 2 });
    expect(Object.fromEntries(ds.buckets())).toEqual({ "64x32": [0, 1, 3, 4], "32x64": [2, 5] });
    expect(ds.get(2).shape).toEqual([64, 32, 3]);
    expect(ds.get(0).shape).toEqual([32, 64, 3]);
    for (let e = 0; e < 20; e++) {
      const batches = ds.epochBatches(2);
      expect(batches.length).toBe(3); // ⌊6/2⌋
      for (const b of batches) {
        expect(b.length).toBe(2);
        expect(new Set(b.map((i) => ds.get(i).shape.join("x"))).size).toBe(1);
      }
    }
  });

  it("latent sampling: once, deterministic, random", async () => {
    // fake encoder: mean = the red channel at 1/8 size, std 0.5 everywhere, 1 channel
    const encode = (pixels: Float32Array, shape: [number, number, number]): LatentDistribution => {
      const [h, w] = [shape[0] / 8, shape[1] / 8];
      const mean = new Float32Array(h * w);
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) mean[y * w + x] = pixels[(y * 8 * shape[1] + x * 8) * 3]!;
      return { shape: [h, w, 1], mean, std: new Float32Array(h * w).fill(0.5) };
    };
    const base = { name: "n", width: 64, height: 64, encode };
    const det = await TrainingDataset.load(dir, { ...base, rng: seeded(6), latentSampling: "deterministic" });
    expect(det.get(0).shape).toEqual([8, 8, 1]);
    expect(det.get(0).pixels).toBeUndefined();
    expect(Array.from(det.get(0).latent!)).toEqual(new Array(64).fill(1)); // red 255 → 1
    const once = await TrainingDataset.load(dir, { ...base, rng: seeded(6), latentSampling: "once" });
    expect(once.get(0).latent).toBe(once.get(0).latent);
    const rnd = await TrainingDataset.load(dir, { ...base, rng: seeded(6), latentSampling: "random" });
    expect(rnd.get(0).latent).not.toEqual(rnd.get(0).latent);
    // (latent − mean)/std over many fetches ~ N(0, 1)
    let s = 0;
    let s2 = 0;
    const k = 200;
    for (let i = 0; i < k; i++)
      for (const v of rnd.get(0).latent!) {
        const z = (v - 1) / 0.5;
        s += z;
        s2 += z * z;
      }
    const m = s / (k * 64);
    expect(Math.abs(m)).toBeLessThan(0.05);
    expect(Math.abs(s2 / (k * 64) - m * m - 1)).toBeLessThan(0.06);
  });

  it("alpha weights: mean 1, transparent weighs 0, uniform alpha gives ones (no NaN)", async () => {
    const adir = path.join(tmp, "alpha");
    fs.mkdirSync(adir);
    const w = 64,
      h = 32;
    const rgba = Buffer.alloc(w * h * 4, 200);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) rgba[(y * w + x) * 4 + 3] = x < 32 ? 0 : 255;
    await sharp(rgba, { raw: { width: w, height: h, channels: 4 } })
      .png()
      .toFile(path.join(adir, "half.png"));
    await sharp(Buffer.alloc(w * h * 4, 255), { raw: { width: w, height: h, channels: 4 } })
      .png()
      .toFile(path.join(adir, "opaque.png"));
    const ds = await TrainingDataset.load(adir, { name: "n", rng: seeded(7), doNotResize: true, alphaWeights: true });
    const half = ds.get(0);
    // 64×32 image, latent 8×4 (rows × cols = 4 × 8): the axes are not swapped
    expect(half.weightShape).toEqual([4, 8]);
    const wt = half.weight!;
    expect(wt.reduce((a, b) => a + b, 0) / wt.length).toBeCloseTo(1, 5);
    // left half alpha 0 → 0; right half 255 → 255/mean(shifted) = 255/127.5 = 2 (edges blur slightly)
    expect(wt[0]).toBeCloseTo(0, 1);
    expect(wt[7]).toBeCloseTo(2, 1);
    const opaque = ds.get(1);
    expect(Array.from(opaque.weight!)).toEqual(new Array(32).fill(1));
    expect(Array.from(alphaToWeights([0, 0, 0, 3]))).toEqual([0, 0, 0, 4]);
  });
});
