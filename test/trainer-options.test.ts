/**
 * Gradient clipping and gradient accumulation: the pure clipping function against PyTorch's
 * definitions (hand-computed), and both options wired through a real training run.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readOptimizerFile } from "../src/hypernet/optim-file";
import type { BaseModel } from "../src/pipeline/base-model";
import { type StepEvent, type TrainOptions, clipGradients, train } from "../src/train";
import { expectClose, expectNoLeak } from "./helpers/tf";
import { type ToyBench, closeToyBench, openToyBench } from "./helpers/toy-bench";
import { makeToyNet, toyTrainOptions } from "./helpers/train-setup";

let base: BaseModel;
let tmp: string;
let dataDir: string;

let bench: ToyBench | undefined;
beforeAll(async () => ({ base, tmp, dataDir } = bench = await openToyBench("hn-train-opts-")));
afterAll(() => closeToyBench(bench));

const opts = (logDir: string, extra: Partial<TrainOptions> = {}): TrainOptions =>
  toyTrainOptions(dataDir, logDir, { maxSteps: 4, learningRate: "1e-2", ...extra });

describe("clipGradients (torch clip_grad_value_ / clip_grad_norm_)", () => {
  it("by value clamps each element; by norm scales everything by c / (‖g‖ + 1e-6) when ‖g‖ > c", async () => {
    await expectNoLeak(() => {
      const g = [tf.tensor1d([3, -4]), tf.tensor2d([[0.5, -12]])];
      const v = clipGradients(g, "value", 1);
      expect([...v[0]!.dataSync()]).toEqual([1, -1]);
      expect([...v[1]!.dataSync()]).toEqual([0.5, -1]);
      // ‖g‖ = √(9 + 16 + 0.25 + 144) = 13.0096…
      const norm = Math.sqrt(9 + 16 + 0.25 + 144);
      const n = clipGradients(g, "norm", 2);
      const coef = 2 / (norm + 1e-6);
      expectClose(n[0]!.dataSync(), [3 * coef, -4 * coef], 1e-6);
      expectClose(n[1]!.dataSync(), [0.5 * coef, -12 * coef], 1e-6);
      // below the threshold nothing changes
      const same = clipGradients(g, "norm", 100);
      expectClose(same[1]!.dataSync(), [0.5, -12], 0);
      for (const t of [...g, ...v, ...n, ...same]) t.dispose();
    });
  });
});

describe("clipping in a run", () => {
  it("a clip larger than any gradient changes nothing; a tight one changes the trajectory; gradNorm is the unclipped norm", async () => {
    const run = async (name: string, extra: Partial<TrainOptions>): Promise<{ losses: number[]; norms: number[] }> => {
      const net = makeToyNet();
      const norms: number[] = [];
      const r = await train(base, net, opts(path.join(tmp, name), { ...extra, onStep: (e: StepEvent) => norms.push(e.gradNorm) })).done;
      net.dispose();
      return { losses: r.losses, norms };
    };
    const plain = await run("plain", {});
    const loose = await run("loose", { gradientClipping: "norm", clipValue: "1e9" });
    const tight = await run("tight", { gradientClipping: "value", clipValue: "1e-7" });
    expect(loose.losses).toEqual(plain.losses);
    expect(tight.losses[0]).toBe(plain.losses[0]); // step 1's loss is computed before any update
    // With every element clamped to ±1e-7 the AdamW update still moves (Adam normalises), but the
    // moments differ from the unclipped run's from step 2 on, so later losses differ.
    expect(tight.losses.slice(2)).not.toEqual(plain.losses.slice(2));
    // the reported norm is of the true gradient, before clipping (A1111 reported the clipped, scaled one)
    expect(tight.norms[0]).toBe(plain.norms[0]);
    expect(plain.norms[0]).toBeGreaterThan(1e-5);
  }, 120_000);
});

describe("gradient accumulation", () => {
  it("one optimizer step per `gradientAccumulation` micro-batches: epochs, CSV and AdamW step counts agree", async () => {
    const net = makeToyNet();
    const logDir = path.join(tmp, "accum");
    const steps: StepEvent[] = [];
    // 4 images, batch 1, accumulation 2 → 4 micro-batches per epoch → 2 optimizer steps per epoch
    const r = await train(
      base,
      net,
      opts(logDir, { batchSize: 1, gradientAccumulation: 2, maxSteps: 4, saveEvery: 4, onStep: (e) => steps.push(e) }),
    ).done;
    expect(r.reason).toBe("max-steps");
    expect(steps.map((e) => [e.step, e.epoch, e.epochStep, e.stepsPerEpoch])).toEqual([
      [1, 0, 0, 2],
      [2, 0, 1, 2],
      [3, 1, 0, 2],
      [4, 1, 1, 2],
    ]);
    const rows = fs.readFileSync(path.join(logDir, "hypernetwork_loss.csv"), "utf8").trim().split("\n").slice(1);
    expect(rows.map((row) => row.split(",").slice(0, 3).join(","))).toEqual(["1,0,0", "2,0,1", "3,1,0", "4,1,1"]);
    // AdamW saw 4 updates, not 8: accumulation sums micro-batch gradients into one step
    const st = readOptimizerFile(path.join(logDir, "hypernetworks", "toy-4.pt"));
    expect(st.state).toBeDefined();
    expect(st.state!.params.every((p) => p.step === 4)).toBe(true);
    net.dispose();
  }, 120_000);
});

describe("timesteps range (kohya's min/max timestep; not in A1111)", () => {
  it("every training forward draws t from [min, max); the full range is the default; bad ranges are refused", async () => {
    const seen: number[] = [];
    const forward = base.unet.forward.bind(base.unet);
    base.unet.forward = (x, t, c) => {
      seen.push(...(t as number[]));
      return forward(x, t, c);
    };
    const run = async (name: string, extra: Partial<TrainOptions>): Promise<{ losses: number[]; t: number[] }> => {
      seen.length = 0;
      const net = makeToyNet();
      const r = await train(base, net, opts(path.join(tmp, name), { maxSteps: 6, ...extra })).done;
      net.dispose();
      return { losses: r.losses, t: [...seen] };
    };
    try {
      const low = await run("t-low", { timesteps: [100, 110] });
      expect(low.t.length).toBe(12); // 6 steps × batch 2, one forward each
      for (const t of low.t) expect(t >= 100 && t < 110 && Number.isInteger(t)).toBe(true);
      const dflt = await run("t-default", {});
      const full = await run("t-full", { timesteps: [0, 1000] });
      expect(full.losses).toEqual(dflt.losses);
      expect(full.t).toEqual(dflt.t);
      // 12 uniform draws from 0–999 all below 110 would have probability 0.11¹² ≈ 3e-12
      expect(Math.max(...dflt.t)).toBeGreaterThan(110);
      for (const bad of [
        [0, 1001],
        [500, 500],
        [-1, 10],
        [0.5, 10],
      ] as Array<[number, number]>) {
        const net = makeToyNet();
        await expect(train(base, net, opts(path.join(tmp, "t-bad"), { timesteps: bad })).done).rejects.toThrow(
          /timesteps must be integers \[min, max\)/,
        );
        net.dispose();
      }
    } finally {
      base.unet.forward = forward;
    }
  }, 120_000);
});
