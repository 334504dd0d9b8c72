/**
 * The one sampling path (`sampleImages`) and the one PNG writer (`io/png.ts`): how prompts, counts
 * and UNet batches map to images and noise, what the negative prompt does with and without
 * guidance, no leaks (also when a step fails), and that the PNG bytes are the pixels.
 */
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { beforeAll, describe, expect, it } from "vitest";
import { encodePng, encodePngFrom, unitToBytes } from "../src/io/png";
import type { BaseModel } from "../src/pipeline/base-model";
import { sampleImages, toUnitRange } from "../src/pipeline/sample";
import { loadTinyModel } from "../src/tiny/model";
import { expectNoLeak, setupBackend } from "./helpers/tf";

/** Index of the first element where two arrays differ, or -1 (bit-for-bit comparison). */
function firstDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

describe("sampleImages", () => {
  let base: BaseModel;
  const common = { steps: 2, cfgScale: 4, sampler: "Euler a" } as const;
  beforeAll(async () => {
    await setupBackend();
    base = loadTinyModel();
  });

  it("returns count decoded images of the model's size, in [-1, 1], without leaking tensors", async () => {
    const r = await expectNoLeak(() => sampleImages(base, { ...common, prompts: ["a red circle", "two blue squares"], seed: 1 }));
    expect(r.shape).toEqual([2, base.imageSize, base.imageSize, 3]);
    expect(r.pixels.length).toBe(2 * base.imageSize * base.imageSize * 3);
    expect(r.pixels.every((v) => v >= -1 && v <= 1)).toBe(true);
    // Two different prompts give two different images.
    const n = base.imageSize * base.imageSize * 3;
    expect(firstDifference(r.pixels.subarray(0, n), r.pixels.subarray(n))).toBeGreaterThanOrEqual(0);
  });

  it("one prompt for `count` images is the same as the prompt repeated (cond broadcast over the batch)", async () => {
    const once = await sampleImages(base, { ...common, prompts: ["a green triangle"], count: 3, seed: 5 });
    const repeated = await sampleImages(base, {
      ...common,
      prompts: ["a green triangle", "a green triangle", "a green triangle"],
      seed: 5,
    });
    expect(firstDifference(once.pixels, repeated.pixels)).toBe(-1);
  });

  it("UNet batches draw their noise from one generator in turn: the first batch is the run of its prompts alone", async () => {
    const prompts = ["a red circle", "a yellow star", "two blue squares"];
    const chunked = await sampleImages(base, { ...common, prompts, seed: 9, batchSize: 2 });
    const first = await sampleImages(base, { ...common, prompts: prompts.slice(0, 2), seed: 9 });
    const whole = await sampleImages(base, { ...common, prompts, seed: 9 });
    expect(firstDifference(chunked.pixels.subarray(0, first.pixels.length), first.pixels)).toBe(-1);
    // The third image's noise comes after the first batch's whole run, so it differs from the one-batch run's.
    const n = base.imageSize * base.imageSize * 3;
    expect(firstDifference(chunked.pixels.subarray(2 * n), whole.pixels.subarray(2 * n))).toBeGreaterThanOrEqual(0);
  });

  it("the negative prompt is the unconditional side: it matters with guidance and not at CFG 1", async () => {
    const run = (negativePrompt: string, cfgScale: number): Promise<Float32Array> =>
      sampleImages(base, { ...common, prompts: ["a red circle"], negativePrompt, cfgScale, seed: 2 }).then((r) => r.pixels);
    expect(firstDifference(await run("", 1), await run("a blue square", 1))).toBe(-1);
    expect(firstDifference(await run("", 4), await run("a blue square", 4))).toBeGreaterThanOrEqual(0);
    // A seed gives the same images again; another seed other images.
    expect(firstDifference(await run("", 4), await run("", 4))).toBe(-1);
    const other = (await sampleImages(base, { ...common, prompts: ["a red circle"], cfgScale: 4, seed: 3 })).pixels;
    expect(firstDifference(await run("", 4), other)).toBeGreaterThanOrEqual(0);
  });

  it("frees every tensor when a step fails, and refuses bad requests with what to give", async () => {
    await expectNoLeak(async () => {
      await expect(
        sampleImages(base, {
          ...common,
          prompts: ["a red circle"],
          seed: 1,
          callback: () => {
            throw new Error("stop here");
          },
        }),
      ).rejects.toThrow(/stop here/);
    });
    await expect(sampleImages(base, { ...common, prompts: [], seed: 1 })).rejects.toThrow(/at least one prompt/);
    await expect(sampleImages(base, { ...common, prompts: ["a", "b"], count: 3, seed: 1 })).rejects.toThrow(/2 prompts for 3 images/);
    await expect(sampleImages(base, { ...common, prompts: ["a"], count: 0, seed: 1 })).rejects.toThrow(/count must be a positive integer/);
    await expect(sampleImages(base, { ...common, prompts: ["a"], batchSize: 0, seed: 1 })).rejects.toThrow(
      /batchSize must be a positive integer/,
    );
    await expect(sampleImages(base, { ...common, prompts: ["a"] })).rejects.toThrow(/give a seed/);
    await expect(sampleImages(base, { ...common, sampler: "Euler q", prompts: ["a"], seed: 1 })).rejects.toThrow(/Euler q/);
  });
});

describe("pixel conversions and the PNG writer", () => {
  beforeAll(setupBackend);

  it("toUnitRange is float32's clip((x + 1) / 2, 0, 1), bit for bit, edge values included", () => {
    const values = [-1.5, -1, -0.9999999403953552, -1e-30, -0, 0, 1e-30, 2 ** -24, 0.5, 0.9999999403953552, 1, 3, NaN];
    let s = 12345;
    for (let i = 0; i < 5000; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      values.push(Math.fround((s / 2 ** 32) * 2.2 - 1.1) * (i % 7 === 0 ? 1e-6 : 1));
    }
    const x = Float32Array.from(values);
    const want = tf.tidy(() => tf.clipByValue(tf.div(tf.add(tf.tensor1d(x), 1), 2), 0, 1).dataSync() as Float32Array);
    const got = toUnitRange(x);
    // A NaN becomes 0, as the wasm backend's clip makes it (the pure-JS cpu backend keeps NaN).
    for (let i = 0; i < x.length; i++) expect(got[i], `index ${i} (${x[i]})`).toBe(Number.isNaN(x[i]!) ? 0 : want[i]);
    if (tf.getBackend() === "wasm") expect(want[values.findIndex((v) => Number.isNaN(v))]).toBe(0);
  });

  it("unitToBytes rounds v·255 per value of the chosen image", () => {
    const px = Float32Array.from([0, 0.5, 1, 0.2, 0.002, 0.998, 1 / 255, 0.4 / 255, 254.6 / 255, 0.25, 0.75, 0.1]);
    expect([...unitToBytes(px, 0, 2, 1)]).toEqual([0, 128, 255, 51, 1, 254]);
    expect([...unitToBytes(px, 1, 2, 1)]).toEqual([1, 0, 255, 64, 191, 26]);
  });

  it("encodePng writes the given pixels (RGB and RGBA) and names a size mistake", async () => {
    const rgb = Uint8Array.from({ length: 3 * 2 * 3 }, (_, i) => (i * 37) % 256);
    const png = await encodePng({ data: rgb, width: 3, height: 2, channels: 3 });
    expect(png.subarray(0, 4).toString("latin1")).toBe("\x89PNG");
    const back = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect([back.info.width, back.info.height, back.info.channels]).toEqual([3, 2, 3]);
    expect([...back.data]).toEqual([...rgb]);
    const rgba = Uint8Array.from({ length: 2 * 2 * 4 }, (_, i) => (i * 53) % 256);
    const back4 = await sharp(await encodePng({ data: rgba, width: 2, height: 2, channels: 4 }))
      .raw()
      .toBuffer();
    expect([...back4]).toEqual([...rgba]);
    await expect(encodePng({ data: rgb, width: 4, height: 2, channels: 3 })).rejects.toThrow(
      /18 bytes do not make a 4×2 image of 3 channel\(s\) \(24 bytes\)/,
    );
    await expect(encodePng({ data: rgb, width: 0, height: 2, channels: 3 })).rejects.toThrow(/positive integers/);
    await expect(encodePng({ data: rgb, width: 3, height: 2, channels: 5 })).rejects.toThrow(/channels must be 1, 2, 3 or 4/);
    const grey = await sharp(await encodePngFrom(sharp({ create: { width: 2, height: 1, channels: 3, background: "#102030" } })))
      .raw()
      .toBuffer();
    expect([...grey]).toEqual([16, 32, 48, 16, 32, 48]);
  });
});
