/**
 * The schedule and optimizer options in real (toy) training runs: a non-increasing A1111 schedule
 * stops where A1111 stops, with a right warning and an ETA that never goes negative; warm-up and
 * cosine restarts give each step the hand-computed rate and save and preview at the cycle ends;
 * AdamW's options reach the optimizer and its .optim file; the clipping norm's p changes which
 * steps are clipped; noise offset and min-SNR-γ change the losses, and their "off" settings
 * leave them bit for bit.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readOptimizerFile } from "../src/hypernet/optim-file";
import type { BaseModel } from "../src/pipeline/base-model";
import { type CheckpointEvent, type StepEvent, type TrainOptions, type TrainResult, train } from "../src/train";
import { setupBackend } from "./helpers/tf";
import { makeToyBase, makeToyDataset, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

let base: BaseModel;
let tmp: string;
let dataDir: string;

beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-train-sched-"));
  dataDir = path.join(tmp, "data");
  await makeToyDataset(dataDir);
});

afterAll(() => {
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

interface Ran {
  result: TrainResult;
  steps: StepEvent[];
  checkpoints: CheckpointEvent[];
  previews: number[];
  logs: string[];
}

/** Train a fresh toy network with `extra` options (4 images, batch 2: 2 steps per epoch). */
async function run(name: string, extra: Partial<TrainOptions>): Promise<Ran> {
  const net = makeToyNet();
  const out: Ran = { result: undefined as unknown as TrainResult, steps: [], checkpoints: [], previews: [], logs: [] };
  const opts = toyTrainOptions(dataDir, path.join(tmp, name), {
    maxSteps: 4,
    learningRate: "1e-2",
    onStep: (e) => out.steps.push(e),
    onCheckpoint: (e) => out.checkpoints.push(e),
    onPreview: (e) => void out.previews.push(e.step),
    onLog: (m) => out.logs.push(m),
    ...extra,
  });
  out.result = await train(base, net, opts).done;
  net.dispose();
  return out;
}

describe("a non-increasing A1111 schedule in a run (issue 23, bug 3)", () => {
  it('"1e-2:3, 1e-3:1" trains steps 1–3 at 1e-2, step 4 at 1e-3, then stops; the warning and ETA agree', async () => {
    const r = await run("order", { maxSteps: 8, learningRate: "1e-2:3, 1e-3:1" });
    expect(r.result.reason).toBe("schedule-end");
    expect(r.steps.map((e) => e.lr)).toEqual([1e-2, 1e-2, 1e-2, 1e-3]);
    expect(r.steps.every((e) => e.endStep === 4 && e.etaSeconds >= 0)).toBe(true);
    expect(r.steps[3]!.etaSeconds).toBe(0);
    expect(r.result.warnings.join("\n")).toMatch(/training will stop at step 4\b/);
    expect(r.result.warnings.join("\n")).toMatch(/"1e-3:1" ends at step 1.*used for 1 step \(step 4\)/);
    expect(r.logs).toContain("Training at rate of 0.001 until step 4");
    // two micro-batches per step: both moves happen within step 4's calls, so training stops at 3
    const acc = await run("order-accum", { maxSteps: 8, learningRate: "1e-2:3, 1e-3:1", batchSize: 1, gradientAccumulation: 2 });
    expect(acc.result.reason).toBe("schedule-end");
    expect(acc.steps.map((e) => e.lr)).toEqual([1e-2, 1e-2, 1e-2]);
    expect(acc.result.warnings.join("\n")).toMatch(/never used[\s\S]*training will stop at step 3\b/);
  }, 120_000);
});

describe("warm-up and cosine restarts in a run", () => {
  it("each step's rate is the hand-computed one; checkpoints and previews land on the cycle ends", async () => {
    // warm-up 2, cycles of 2 then 4 steps (ends after steps 4 and 8), η_min 1e-4, γ 0.5, rate 1e-2
    const r = await run("cosine", {
      maxSteps: 9,
      warmupSteps: 2,
      cosineRestarts: { cycleSteps: 2, cycleMult: 2, gamma: 0.5, minLr: 1e-4, saveAtCycleEnds: true, previewAtCycleEnds: true },
      preview: { steps: 2, save: false },
    });
    const cos = (peak: number, pos: number, len: number): number => 1e-4 + (peak - 1e-4) * 0.5 * (1 + Math.cos((Math.PI * pos) / len));
    const want = [5e-3, 1e-2, 1e-2, cos(1e-2, 1, 2), 5e-3, cos(5e-3, 1, 4), cos(5e-3, 2, 4), cos(5e-3, 3, 4), 2.5e-3];
    expect(r.steps.length).toBe(9);
    r.steps.forEach((e, k) => expect(e.lr, `step ${k + 1}`).toBeCloseTo(want[k]!, 15));
    expect(r.checkpoints.map((c) => [c.step, c.final])).toEqual([
      [4, false],
      [8, false],
      [9, true],
    ]);
    expect(r.previews).toEqual([4, 8]);
    // the CSV logs the rate each step used, and the .optim of step 4 holds the rate of step 4
    const rows = fs
      .readFileSync(path.join(tmp, "cosine", "hypernetwork_loss.csv"), "utf8")
      .trim()
      .split("\n")
      .slice(1);
    rows.forEach((row, k) => expect(Number(row.split(",")[4])).toBeCloseTo(want[k]!, 12));
    expect(readOptimizerFile(r.checkpoints[0]!.file).state!.lr).toBeCloseTo(want[3]!, 15);
    // bad options are refused before anything is read
    const net = makeToyNet();
    await expect(
      train(base, net, toyTrainOptions(dataDir, path.join(tmp, "bad"), { cosineRestarts: { cycleSteps: 0 } })).done,
    ).rejects.toThrow(/cosineRestarts.cycleSteps must be an integer ≥ 1/);
    net.dispose();
  }, 120_000);
});

describe("AdamW and clipping options in a run", () => {
  it("betas, ε and weight decay reach AdamW and its .optim; PyTorch's values written out equal the defaults bit for bit", async () => {
    const dflt = await run("adam-default", { maxSteps: 3, saveEvery: 3 });
    const same = await run("adam-explicit", { maxSteps: 3, adamBetas: [0.9, 0.999], adamEps: 1e-8, weightDecay: 0.01 });
    expect(same.result.losses).toEqual(dflt.result.losses);
    const mine = await run("adam-mine", { maxSteps: 3, saveEvery: 3, adamBetas: [0.5, 0.9], adamEps: 1e-3, weightDecay: 0.2 });
    expect(mine.result.losses[0]).toBe(dflt.result.losses[0]); // computed before any update
    expect(mine.result.losses[2]).not.toBe(dflt.result.losses[2]);
    const st = readOptimizerFile(mine.checkpoints[0]!.file).state!;
    expect([st.betas, st.eps, st.weightDecay]).toEqual([[0.5, 0.9], 1e-3, 0.2]);
    const d = readOptimizerFile(dflt.checkpoints[0]!.file).state!;
    expect([d.betas, d.eps, d.weightDecay]).toEqual([[0.9, 0.999], 1e-8, 0.01]);
    for (const [bad, msg] of [
      [{ adamBetas: [1, 0.9] }, /adamBetas\[0\] must be in \[0, 1\)/],
      [{ adamEps: 0 }, /adamEps must be a number > 0/],
      [{ weightDecay: -1 }, /weightDecay must be a number ≥ 0/],
      [{ clipNormType: 0 }, /clipNormType must be a number > 0/],
      [{ noiseOffset: -0.1 }, /noiseOffset must be a number ≥ 0/],
      [{ minSnrGamma: 0 }, /minSnrGamma must be a number > 0/],
    ] as Array<[Partial<TrainOptions>, RegExp]>) {
      const net = makeToyNet();
      await expect(train(base, net, toyTrainOptions(dataDir, path.join(tmp, "bad"), bad)).done).rejects.toThrow(msg);
      net.dispose();
    }
  }, 180_000);

  it("the clipping norm's p: a limit just above every ‖g‖₂ clips nothing by 2- or ∞-norm, but clips by 1-norm", async () => {
    const plain = await run("clip-plain", {});
    const limit = String(Math.max(...plain.steps.map((e) => e.gradNorm)) * 1.001);
    const l2 = await run("clip-2", { gradientClipping: "norm", clipValue: limit });
    const lInf = await run("clip-inf", { gradientClipping: "norm", clipValue: limit, clipNormType: "inf" });
    const l1 = await run("clip-1", { gradientClipping: "norm", clipValue: limit, clipNormType: 1 });
    expect(l2.result.losses).toEqual(plain.result.losses);
    expect(lInf.result.losses).toEqual(plain.result.losses); // ‖g‖∞ ≤ ‖g‖₂
    // ‖g‖₁ ≥ ‖g‖₂ (by far, with this many elements): every step is clipped, so from step 2 the run differs
    expect(l1.result.losses[0]).toBe(plain.result.losses[0]);
    expect(l1.result.losses.slice(1)).not.toEqual(plain.result.losses.slice(1));
    expect(l1.steps.map((e) => e.gradNorm)[0]).toBe(plain.steps[0]!.gradNorm); // the reported norm stays ‖g‖₂, unclipped
  }, 180_000);
});

describe("noise offset and min-SNR-γ in a run", () => {
  it("change the losses from step 1; off (0 / absent) is bit-identical; min-SNR-γ with ε weights every loss by ≤ 1", async () => {
    const plain = await run("loss-plain", {});
    const off = await run("loss-off", { noiseOffset: 0 });
    expect(off.result.losses).toEqual(plain.result.losses);
    const offset = await run("loss-offset", { noiseOffset: 0.5 });
    expect(offset.result.losses[0]).not.toBe(plain.result.losses[0]);
    const again = await run("loss-offset-2", { noiseOffset: 0.5 });
    expect(again.result.losses).toEqual(offset.result.losses); // seeded: the same run twice
    const snr = await run("loss-snr", { minSnrGamma: 5 });
    // same t and ε as the plain run; each sample's loss is multiplied by min(SNR, 5)/SNR ≤ 1
    expect(snr.result.losses[0]).toBeLessThan(plain.result.losses[0]!);
    // γ above every SNR of the schedule (max ≈ 1175): all weights are 1, the same loss up to rounding
    const huge = await run("loss-snr-huge", { minSnrGamma: 1e6, maxSteps: 1 });
    expect(huge.result.losses[0]).toBeCloseTo(plain.result.losses[0]!, 6);
  }, 180_000);
});
