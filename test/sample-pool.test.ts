/**
 * The tiny model's sampler pool (src/tiny/sample-pool.ts): the same pixels as one-thread sampling
 * with the same seed, networks and gate; no tensors left on the main thread; workers that stop
 * cleanly; a clear error when one dies.
 */
import type { Worker } from "node:worker_threads";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type StackEntry, attachHypernetworks } from "../src/hypernet/attach";
import { createHypernetwork, type Hypernetwork } from "../src/hypernet/network";
import type { BaseModel } from "../src/pipeline/base-model";
import { sampleImages } from "../src/pipeline/sample";
import { loadTinyModel } from "../src/tiny/model";
import { TinySamplerPool } from "../src/tiny/sample-pool";
import { sampleTiny } from "../src/tiny/sample";
import { setupBackend } from "./helpers/tf";

const PROMPTS = [
  "a large red circle on the left, black background",
  "two small blue stars, gray background",
  "a small green cross at the top, white background",
  "a large yellow ring in the center, black background",
  "a large cyan triangle on the right, gray background",
];

/** One thread, the reference: the networks attached to the main thread's model, then `sampleImages` as `sampleTiny` calls it. */
async function reference(
  base: BaseModel,
  entries: StackEntry[],
  o: { seed: number; sampler: string; steps: number; cfg: number; batchSize: number },
): Promise<Float32Array> {
  const att = entries.length ? attachHypernetworks(base.unet, entries) : undefined;
  try {
    const { pixels } = await sampleImages(base, {
      prompts: PROMPTS,
      sampler: o.sampler,
      steps: o.steps,
      cfgScale: o.cfg,
      seed: o.seed,
      batchSize: o.batchSize,
    });
    return pixels;
  } finally {
    att?.detach();
  }
}

function workersOf(pool: TinySamplerPool): Worker[] {
  return (pool as unknown as { workers: Worker[] }).workers;
}

describe("TinySamplerPool", () => {
  let base: BaseModel;
  let pool: TinySamplerPool;
  let net: Hypernetwork;

  beforeAll(async () => {
    await setupBackend();
    base = loadTinyModel();
    net = createHypernetwork(
      { name: "pool-test", dims: [...base.contextDims], layerStructure: [1, 2, 1], activation: "relu", weightInit: "Normal", seed: 5 },
      base,
    );
    // Make the network's effect large enough to change the images (Normal init starts it near identity).
    for (const [, p] of net.namedParameters()) {
      const bigger = tf.mul(p.value, 40);
      p.value.assign(bigger);
      bigger.dispose();
    }
    pool = await TinySamplerPool.start({ workers: 2 });
  }, 300_000);

  afterAll(async () => {
    await pool?.close();
    net?.dispose();
    base?.dispose();
  });

  it("makes bit-identical pixels to one thread (Euler a, uneven batches, network at ×0.8), leaving no tensors behind", async () => {
    const o = { seed: 7, sampler: "Euler a", steps: 3, cfg: 4, batchSize: 2 };
    const entries: StackEntry[] = [{ network: net, multiplier: 0.8 }];
    const want = await reference(base, entries, o);
    const before = tf.memory().numTensors;
    const got = await pool.samplePixels(PROMPTS, {
      seed: o.seed,
      sampler: "Euler a",
      steps: o.steps,
      guidanceScale: o.cfg,
      batchSize: o.batchSize,
      networks: entries,
    });
    expect(tf.memory().numTensors, "tensors left on the main thread").toBe(before);
    expect(got.length).toBe(want.length);
    expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    // The network really was applied in the workers: without it the pixels differ.
    const plain = await pool.samplePixels(PROMPTS, {
      seed: o.seed,
      sampler: "Euler a",
      steps: o.steps,
      guidanceScale: o.cfg,
      batchSize: 2,
    });
    let maxDiff = 0;
    for (let i = 0; i < plain.length; i++) maxDiff = Math.max(maxDiff, Math.abs(plain[i]! - got[i]!));
    expect(maxDiff).toBeGreaterThan(0.01);
    // …and equal the one-thread images without a network.
    const plainWant = await reference(base, [], o);
    expect(Buffer.from(plain.buffer).equals(Buffer.from(plainWant.buffer))).toBe(true);
  }, 300_000);

  it("matches one thread with a timestep gate and DPM++ 2M, and as bytes with sampleTiny's defaults", async () => {
    const o = { seed: 11, sampler: "DPM++ 2M", steps: 4, cfg: 3, batchSize: 3 };
    const entries: StackEntry[] = [{ network: net, multiplier: 1, timesteps: [0, 500] }];
    const want = await reference(base, entries, o);
    const got = await pool.samplePixels(PROMPTS, {
      seed: o.seed,
      sampler: "DPM++ 2M",
      steps: o.steps,
      guidanceScale: o.cfg,
      batchSize: o.batchSize,
      networks: entries,
    });
    expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    // sampleTiny's own defaults (Euler a, batch 16 → one batch, one worker busy): same bytes.
    const bytes = await pool.sample(PROMPTS.slice(0, 2), { seed: 3, steps: 2 });
    const one = await sampleTiny(base, PROMPTS.slice(0, 2), { seed: 3, steps: 2 });
    expect(bytes.map((b) => Buffer.from(b).toString("hex"))).toEqual(one.map((b) => Buffer.from(b).toString("hex")));
  }, 300_000);

  it("refuses overlapping calls, a bad batch size and a bad model folder with clear messages", async () => {
    const first = pool.samplePixels(PROMPTS.slice(0, 1), { seed: 1, steps: 1 });
    await expect(pool.samplePixels(PROMPTS, { seed: 1, steps: 1 })).rejects.toThrow(/one call at a time/);
    await first;
    await expect(pool.samplePixels(PROMPTS, { seed: 1, steps: 1, batchSize: 0 })).rejects.toThrow(/batchSize must be a positive integer/);
    await expect(TinySamplerPool.start({ modelDir: "/nonexistent/tiny-model", workers: 1 })).rejects.toThrow(/\/nonexistent\/tiny-model/);
  }, 300_000);

  it("fails with a clear error when a worker dies, then closes cleanly", async () => {
    const p = await TinySamplerPool.start({ workers: 2 });
    const ws = workersOf(p);
    const exited = ws.map((w) => new Promise<number>((resolve) => w.once("exit", resolve)));
    await ws[1]!.terminate();
    await expect(p.samplePixels(PROMPTS, { seed: 2, steps: 2, batchSize: 1 })).rejects.toThrow(/worker 2 of 2 stopped .*start a new one/);
    await expect(p.sample(PROMPTS, { seed: 2, steps: 2 })).rejects.toThrow(/worker 2 of 2 stopped/);
    await p.close();
    await Promise.all(exited);
    expect(ws.every((w) => w.threadId === -1)).toBe(true);
    await expect(p.sample(PROMPTS, { seed: 2 })).rejects.toThrow(/already closed/);
  }, 300_000);

  it("closes: every worker thread exits after close()", async () => {
    const p = await TinySamplerPool.start({ workers: 2 });
    await p.sample(PROMPTS.slice(0, 2), { seed: 4, steps: 1, batchSize: 1 });
    const ws = workersOf(p);
    const codes = ws.map((w) => new Promise<number>((resolve) => w.once("exit", resolve)));
    await p.close();
    expect(await Promise.all(codes)).toEqual([0, 0]);
  }, 300_000);
});
