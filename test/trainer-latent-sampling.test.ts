/**
 * Latent sampling ("once", "deterministic", "random") seen from a real training run through a real
 * (tiny, seeded) VAE: the x₀ each loss is computed on is compared with the VAE posterior of its
 * image, computed here straight from the VAE. "deterministic" is the posterior mean; "once" is one
 * sample per image, the same in every epoch; "random" is a new sample on every fetch, fixed by the
 * seed. A sample is checked to look like mean + std·N(0, 1).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type DatasetItem, TrainingDataset } from "../src/data/dataset";
import type { LatentSampling } from "../src/data/dataset";
import type { BaseModel } from "../src/pipeline/base-model";
import { type TrainOptions, train } from "../src/train";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { row } from "./helpers/train-capture";
import { makeToyLatentBase, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

/** qSample's x₀ for every loss the trainer computes. */
const q = vi.hoisted(() => ({ on: false, x0: [] as Float32Array[] }));
vi.mock(import("../src/diffusion/schedule"), async (importOriginal) => {
  const m = await importOriginal();
  return {
    ...m,
    qSample: (x0: tf.Tensor, noise: tf.Tensor, t: ArrayLike<number>, s?: InstanceType<typeof m.NoiseSchedule>) => {
      if (q.on) q.x0.push(Float32Array.from(x0.dataSync()));
      return m.qSample(x0, noise, t, s);
    },
  };
});

const COLOURS: Array<[number, number, number]> = [
  [220, 30, 30],
  [30, 40, 220],
  [40, 200, 50],
  [230, 220, 40],
];
/** One latent: 8×8×4. */
const LATENT = 8 * 8 * 4;

let base: BaseModel;
let tmp: string;
let dataDir: string;
/** Each image's posterior in UNet units (mean, std), from the VAE directly. */
const posterior: Array<{ mean: Float32Array; std: Float32Array }> = [];

beforeAll(async () => {
  await setupBackend();
  base = makeToyLatentBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-latent-sampling-"));
  dataDir = path.join(tmp, "data");
  fs.mkdirSync(dataDir);
  // 16×16 (the model's size, so nothing is resized) constant colours, in file order c0 … c3
  for (const [k, [r, g, b]] of COLOURS.entries()) {
    await sharp({ create: { width: 16, height: 16, channels: 3, background: { r, g, b } } })
      .png()
      .toFile(path.join(dataDir, `c${k}.png`));
    fs.writeFileSync(path.join(dataDir, `c${k}.txt`), "toy");
    const s = base.vae!.config.scaleFactor;
    const px = Array.from({ length: 16 * 16 }, () => [r, g, b].map((v) => v / 127.5 - 1)).flat();
    const dist = base.vae!.encode(tf.tensor4d(px, [1, 16, 16, 3]));
    posterior.push({
      mean: Float32Array.from(dist.mean.dataSync(), (m) => m * s),
      std: Float32Array.from(dist.logvar.dataSync(), (v) => Math.exp(v / 2) * s),
    });
    tf.dispose([dist.mean, dist.logvar]);
  }
});

afterAll(() => {
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Train 6 steps (3 epochs of 2 batches of 2) and return each loss row's x₀ with the image it came from. */
async function latents(name: string, extra: Partial<TrainOptions>): Promise<Array<{ image: number; x0: Float32Array }>> {
  const images: number[] = [];
  const get = TrainingDataset.prototype.get;
  const spy = vi.spyOn(TrainingDataset.prototype, "get").mockImplementation(function (this: TrainingDataset, i: number): DatasetItem {
    const item = get.call(this, i);
    images.push(item.image);
    return item;
  });
  const net = makeToyNet();
  q.x0.length = 0;
  q.on = true;
  try {
    await expectNoLeak(
      () => train(base, net, toyTrainOptions(dataDir, path.join(tmp, name), { maxSteps: 6, template: ["toy"], ...extra })).done,
    );
  } finally {
    q.on = false;
    spy.mockRestore();
    net.dispose();
  }
  const rows = q.x0.flatMap((b) => [row(b, 0, LATENT), row(b, 1, LATENT)]);
  expect(q.x0).toHaveLength(6);
  expect(images).toHaveLength(rows.length);
  return rows.map((x0, k) => ({ image: images[k]!, x0 }));
}

/** (x₀ − mean) / std of a row against its image's posterior: standard normal for a true sample. */
function standardised(r: { image: number; x0: Float32Array }): { mean: number; variance: number } {
  const p = posterior[r.image]!;
  const z = Array.from(r.x0, (v, i) => (v - p.mean[i]!) / p.std[i]!);
  const mean = z.reduce((a, b) => a + b, 0) / z.length;
  const variance = z.reduce((a, b) => a + (b - mean) ** 2, 0) / (z.length - 1);
  return { mean, variance };
}

/** A sample of 256 standard normals: mean within ±0.3 (4.8 sd), variance within [0.6, 1.5]. */
function expectNormal(r: { image: number; x0: Float32Array }): void {
  const { mean, variance } = standardised(r);
  expect(Math.abs(mean)).toBeLessThan(0.3);
  expect(variance).toBeGreaterThan(0.6);
  expect(variance).toBeLessThan(1.5);
}

describe("latent sampling through a real VAE", () => {
  it("the posterior has spread, and the four images have different means (so the checks below can tell them apart)", () => {
    for (const p of posterior) expect(Math.min(...p.std)).toBeGreaterThan(1e-3);
    for (let a = 0; a < 4; a++)
      for (let b = a + 1; b < 4; b++) expect(posterior[a]!.mean.some((v, i) => Math.abs(v - posterior[b]!.mean[i]!) > 1e-4)).toBe(true);
  });

  it('"deterministic" trains on the posterior mean of each image', async () => {
    const rows = await latents("deterministic", { latentSampling: "deterministic" });
    expect(new Set(rows.map((r) => r.image))).toEqual(new Set([0, 1, 2, 3]));
    for (const r of rows) expectClose(r.x0, posterior[r.image]!.mean, 1e-6, 1e-5);
  }, 120_000);

  it('"once" (the default) draws one sample per image at load and reuses it in every epoch', async () => {
    const rows = await latents("once", { latentSampling: "once" });
    const first = new Map<number, Float32Array>();
    for (const r of rows) {
      const seen = first.get(r.image);
      if (seen) expect(r.x0).toEqual(seen);
      else first.set(r.image, r.x0);
      expectNormal(r); // a sample, not the mean
    }
    // 3 epochs × 4 images: every image came back with its very same latent
    expect(first.size).toBe(4);
    const dflt = await latents("once-default", {});
    expect(dflt.map((r) => r.x0)).toEqual(rows.map((r) => r.x0));
  }, 120_000);

  it('"random" draws a new sample on every fetch; the same seed draws the same ones, another seed others', async () => {
    const mode: LatentSampling = "random";
    const rows = await latents("random", { latentSampling: mode });
    for (const r of rows) expectNormal(r);
    for (let a = 0; a < rows.length; a++)
      for (let b = a + 1; b < rows.length; b++) if (rows[a]!.image === rows[b]!.image) expect(rows[a]!.x0).not.toEqual(rows[b]!.x0);
    const again = await latents("random-again", { latentSampling: mode });
    expect(again).toEqual(rows);
    const other = await latents("random-seed", { latentSampling: mode, seed: 6 });
    expect(other.map((r) => r.x0)).not.toEqual(rows.map((r) => r.x0));
  }, 180_000);
});
