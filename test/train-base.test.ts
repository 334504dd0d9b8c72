/**
 * The tiny base model's training batch and its data-parallel gradient (scripts/train-base-batch.ts):
 * a batch is drawn reproducibly, splitting it loses nothing, and the gradient summed over worker
 * threads equals the gradient computed in one process; and the script itself, run for a few steps:
 * checkpoint, resume, loss CSV, `--init`.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../src/diffusion/random";
import { sd15Schedule } from "../src/diffusion/schedule";
import type { Param } from "../src/nn/module";
import { buildTinyModel, defaultTinyConfig, loadTinyModel, readTinyConfig, type TinyModelParts } from "../src/tiny/model";
import { registerWasmUnsortedSegmentSum } from "../src/backend/wasm-segment-sum";
import { GradientPool, batchGradients, drawBatch, smallSceneIndex, splitBatch, type DrawOptions } from "../scripts/train-base-batch";
import { shapeSample } from "../src/tiny/shapes-data/shapes";
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

  it("--small-frac swaps scenes for small ones from a second stream, --low-t draws t < 500, and off changes nothing", () => {
    const plain = drawBatch(OPTS, 2, new Rng(4), schedule, parts.tokenizer);
    const off = drawBatch({ ...OPTS, smallFrac: 0, lowT: 0 }, 2, new Rng(4), schedule, parts.tokenizer);
    expect(off).toEqual(plain);
    expect(plain.sources).toBeUndefined();
    const all = drawBatch({ ...OPTS, batch: 12, highT: 0, smallFrac: 1, lowT: 1 }, 2, new Rng(4), schedule, parts.tokenizer);
    expect(all.sources).toHaveLength(12);
    for (const [seed, index] of all.sources!) {
      expect(seed).toBe(OPTS.dataSeed + 1);
      expect(shapeSample(seed, index).scene.size).toBe("small");
    }
    expect(all.timesteps.every((t) => t >= 0 && t < 500)).toBe(true);
    // The first small scene at or after the scan start, by a direct scan.
    const from = 40;
    let j = from;
    while (shapeSample(OPTS.dataSeed + 1, j).scene.size !== "small") j++;
    expect(smallSceneIndex(OPTS.dataSeed + 1, from)).toBe(j);
    const ps = splitBatch(all, 2);
    expect(ps.flatMap((p) => p.sources!)).toEqual(all.sources);
  });
});

describe("data-parallel gradient", () => {
  it("two worker threads give the same gradient as one process", async () => {
    const batch = drawBatch({ ...OPTS, batch: 2 }, 0, new Rng(11), schedule, parts.tokenizer);
    const vars = named.map(([, p]) => p.value);
    const single = await batchGradients(parts, vars, batch, OPTS.dataSeed, schedule);
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
    await expectNoLeak(async () => {
      const { grads } = await batchGradients(parts, vars, batch, OPTS.dataSeed, schedule);
      tf.dispose(grads);
    });
  });
});

describe("npm run train-base (the script end to end, two steps at a time)", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "train-base-"));
  const run = (args: string[]): string =>
    execFileSync(
      process.execPath,
      [
        require.resolve("ts-node/dist/bin.js"),
        "--transpile-only",
        "scripts/train-base.ts",
        "--backend",
        "wasm",
        "--batch",
        "2",
        "--workers",
        "1",
        "--warmup",
        "1",
        "--log-every",
        "1",
        ...args,
      ],
      {
        encoding: "utf8",
        timeout: 120_000,
      },
    );
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it("trains, checkpoints, resumes where it stopped, and a run started with --init counts the steps before it", () => {
    const runA = path.join(tmp, "run-a");
    const expA = path.join(tmp, "model-a");
    run(["--run", runA, "--export", expA, "--steps", "2"]);
    const out = run(["--run", runA, "--export", expA, "--steps", "3"]);
    expect(out).toMatch(/resuming at step 2/);
    const rows = fs.readFileSync(path.join(runA, "loss.csv"), "utf8").trim().split("\n");
    expect(rows[0]).toBe("step,loss,lr,grad_norm,elapsed_s");
    expect(rows.slice(1).map((r) => Number(r.split(",")[0]))).toEqual([1, 2, 3]);
    for (const r of rows.slice(1)) expect(Number.isFinite(Number(r.split(",")[1]))).toBe(true);
    expect(readTinyConfig(expA).training?.steps).toBe(3);

    const runB = path.join(tmp, "run-b");
    const expB = path.join(tmp, "model-b");
    expect(run(["--init", expA, "--run", runB, "--export", expB, "--steps", "1"])).toMatch(
      /starting from the weights in .*model-a \(trained 3 steps before\)/,
    );
    const t = readTinyConfig(expB).training!;
    expect(t.steps).toBe(4);
    expect(t.runSteps).toBe(1);
    expect(t.initFrom).toMatchObject({ dir: expA, steps: 3 });
    // The exported weights load as a tiny model.
    const m = loadTinyModel(expB);
    m.dispose();
  }, 300_000);
});
