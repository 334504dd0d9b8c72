/**
 * The tiny base model's training batch and its data-parallel gradient (scripts/train-base-batch.ts):
 * a batch is drawn reproducibly, splitting it loses nothing, and the gradient summed over worker
 * threads equals the gradient computed in one process.
 */
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../src/diffusion/random";
import { sd15Schedule } from "../src/diffusion/schedule";
import type { Param } from "../src/nn/module";
import { buildTinyModel, defaultTinyConfig, type TinyModelParts } from "../src/tiny/model";
import { registerWasmUnsortedSegmentSum } from "../src/tiny/wasm-segment-sum";
import { GradientPool, batchGradients, drawBatch, splitBatch, type DrawOptions } from "../scripts/train-base-batch";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";

const OPTS: DrawOptions = { batch: 5, dropout: 0.1, highT: 0.5, snrCap: 20, offsetNoise: 0.1, dataSeed: 7, meanLoss: 1, meanCap: 100 };
const schedule = sd15Schedule();

let parts: TinyModelParts;
let named: Array<[string, Param]>;

beforeAll(async () => {
  await setupBackend();
  if (tf.getBackend() === "wasm") registerWasmUnsortedSegmentSum();
  parts = buildTinyModel(defaultTinyConfig(), { trainable: true });
  named = [...parts.unet.namedParameters("unet."), ...parts.textEncoder.namedParameters("text.")];
});
afterAll(() => {
  parts.unet.dispose();
  parts.textEncoder.dispose();
});

describe("drawBatch / splitBatch", () => {
  it("is reproducible from the RNG state, and its weights sum to 1", () => {
    const a = drawBatch(OPTS, 3, new Rng(5), schedule, parts.tokenizer);
    const b = drawBatch(OPTS, 3, new Rng(5), schedule, parts.tokenizer);
    expect(a).toEqual(b);
    expect(a.start).toBe(15);
    expect(a.noise.length).toBe(5 * 32 * 32 * 3);
    expect(a.weights.reduce((x, y) => x + y, 0)).toBeCloseTo(1, 12);
    // High-noise timesteps get the larger (x₀-error) weight, and never less than plain ε-MSE's.
    const lo = a.timesteps.indexOf(Math.min(...a.timesteps));
    const hi = a.timesteps.indexOf(Math.max(...a.timesteps));
    expect(a.weights[hi]!).toBeGreaterThanOrEqual(a.weights[lo]!);
  });

  it("splits into consecutive parts that put the batch back together", () => {
    const b = drawBatch(OPTS, 0, new Rng(9), schedule, parts.tokenizer);
    const ps = splitBatch(b, 2);
    expect(ps.map((p) => p.count)).toEqual([3, 2]);
    expect(ps.map((p) => p.start)).toEqual([0, 3]);
    expect(ps.flatMap((p) => p.timesteps)).toEqual(b.timesteps);
    expect(ps.flatMap((p) => p.ids)).toEqual(b.ids);
    expect(ps.flatMap((p) => p.weights)).toEqual(b.weights);
    expect(ps.flatMap((p) => p.meanWeights)).toEqual(b.meanWeights);
    expect(Array.from(ps[0]!.noise).concat(Array.from(ps[1]!.noise))).toEqual(Array.from(b.noise));
    expect(splitBatch(b, 8).length).toBe(5); // no empty parts
  });
});

describe("data-parallel gradient", () => {
  it("two worker threads give the same gradient as one process", async () => {
    const batch = drawBatch({ ...OPTS, batch: 2 }, 0, new Rng(11), schedule, parts.tokenizer);
    const vars = named.map(([, p]) => p.value);
    const single = batchGradients(parts, vars, batch, OPTS.dataSeed, schedule);
    const slots = named.map(([key, param]) => ({ key, param }));
    const pool = await GradientPool.start(2, parts.config, OPTS.dataSeed, slots);
    try {
      const par = await pool.gradients(batch, slots);
      expect(par.mseSum).toBeCloseTo(single.mseSum, 5);
      expect(Object.keys(par.grads).sort()).toEqual(Object.keys(single.grads).sort());
      let compared = 0;
      for (const [name, g] of Object.entries(single.grads)) {
        const scale = (g.dataSync() as Float32Array).reduce((m, x) => Math.max(m, Math.abs(x)), 1e-3);
        expectClose(par.grads[name]!.dataSync(), g.dataSync(), 1e-4 * scale);
        compared++;
      }
      expect(compared).toBe(named.length);
      tf.dispose(par.grads);
    } finally {
      tf.dispose(single.grads);
      await pool.close();
    }
  }, 120_000);

  it("batchGradients leaves no tensors behind but its gradients", async () => {
    const batch = drawBatch({ ...OPTS, batch: 1 }, 0, new Rng(2), schedule, parts.tokenizer);
    const vars = named.map(([, p]) => p.value);
    await expectNoLeak(() => {
      const { grads } = batchGradients(parts, vars, batch, OPTS.dataSeed, schedule);
      tf.dispose(grads);
    });
  });
});
