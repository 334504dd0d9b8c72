/**
 * The training tools on the toy model (test/helpers/train-setup.ts) and on hand-made numbers: the
 * LR range test's suggestion rule on curves with a known answer; the range test itself (the
 * network passed in untouched, the rates of the sweep, the trainer's data path, no leaks, no
 * leftover folder); the checkpoint gallery (cells equal to sampling each checkpoint by hand);
 * loss-by-timestep bins; the live training chart with its validation curve (Plotly and PNG); and
 * the verbs' outputs outside a notebook.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { attachHypernetworks } from "../src/hypernet/attach";
import { fromNetwork, loadHypernetwork } from "../src/hypernet/file";
import { type Figure, lossChartPng, lossChartSvg, lossFigure } from "../src/kernel-helpers/charts";
import { setOutputDir } from "../src/kernel-helpers/display";
import * as verbs from "../src/kernel-helpers/steps";
import { lineChartSvg, lrRangeChart } from "../src/kernel-helpers/tool-charts";
import * as tools from "../src/kernel-helpers/training-tools";
import type { BaseModel } from "../src/pipeline/base-model";
import { sampleImages } from "../src/pipeline/sample";
import { checkpointGallery, evenlySpaced } from "../src/train/gallery";
import { lrRangeTest, suggestLearningRate, sweepRates } from "../src/train/lr-range";
import { timestepLossBins, timestepLossOverRun } from "../src/train/timestep-loss";
import { train } from "../src/train/trainer";
import { expectNoLeak, setupBackend } from "./helpers/tf";
import { TOY_TEMPLATE, makeToyBase, makeToyDataset, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

let base: BaseModel;
let tmp: string;
let dataDir: string;
let outDir: string;
const previousOutputDir = process.env.HYPERNET_OUTPUT_DIR;

beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-tools-"));
  dataDir = path.join(tmp, "data");
  outDir = path.join(tmp, "out");
  setOutputDir(outDir);
  await makeToyDataset(dataDir);
});

afterAll(() => {
  setOutputDir(previousOutputDir ?? path.resolve("hypernet-output"));
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Run `fn` with stdout captured. */
async function quiet<T>(fn: () => T | Promise<T>): Promise<{ value: T; printed: string }> {
  let printed = "";
  const spy = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
    printed += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8");
    return true;
  });
  try {
    return { value: await fn(), printed };
  } finally {
    spy.mockRestore();
  }
}

/** Every weight of a network, flat (bit-exact comparison). */
function weights(net: ReturnType<typeof makeToyNet>): number[] {
  return [...fromNetwork(net).weights.values()].flatMap((pair) => pair.flatMap((sd) => [...sd.values()].flatMap((t) => [...t.data])));
}

/** Pixels of an orange (#ff7f0e-like) colour in a PNG. */
async function orangePixels(png: Buffer): Promise<number> {
  const { data, info } = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  let n = 0;
  for (let i = 0; i < info.width * info.height; i++) {
    const [r, g, b] = [data[3 * i]!, data[3 * i + 1]!, data[3 * i + 2]!];
    if (r > 220 && g > 100 && g < 160 && b < 60) n++;
  }
  return n;
}

describe("the LR range test's suggestion rule", () => {
  // 10 points per decade from 1e-6 to 1e-1: lr_i = 10^(−6 + i/10).
  const rates = sweepRates(1e-6, 1e-1, 51);
  const curve = (centre: number, blowUpAfter: number): Array<{ lr: number; loss: number }> =>
    rates.map((lr, i) => ({ lr, loss: i > blowUpAfter ? 100 : 1 + 0.1 * (Math.log10(lr) - centre) ** 2 }));

  it("sweepRates: exponentially spaced from minLr to maxLr", () => {
    expect(rates[0]).toBe(1e-6);
    expect(rates[50]).toBeCloseTo(1e-1, 15);
    expect(rates[30]! / 1e-3).toBeCloseTo(1, 12);
    expect(() => sweepRates(1e-3, 1e-4, 10)).toThrow(/minLr < maxLr/);
    expect(() => sweepRates(1e-7, 1e-2, 1)).toThrow(/steps/);
  });

  it("a parabola with its lowest loss at 1e-3 that blows up past 1.3e-2: valley 1e-3, suggestion 1e-4, cut where the average first sees the blow-up", () => {
    const s = suggestLearningRate(curve(-3, 41), { plannedSteps: 2000 });
    expect(s.valley).toBe(30);
    expect(s.valleyLr).toBeCloseTo(1e-3, 12);
    expect(s.lr).toBe(1e-4);
    expect(s.schedule).toBe("1e-4:1000, 1e-5:2000");
    // Smoothed point 40 averages points 38–42, and point 42 is 100: (1.0 + … + 100)/5 > 4 × 1.
    expect(s.cut).toBe(40);
    expect(s.smoothed.slice(40).every(Number.isNaN)).toBe(true);
    expect(s.note).toBeUndefined();
  });

  it("rounds down to 1, 2 or 5 × 10ⁿ: a valley at 10^−2.5 ≈ 3.2e-3 suggests 2e-4; N odd gives ⌊N/2⌋", () => {
    const s = suggestLearningRate(curve(-2.5, 45), { plannedSteps: 1001, window: 0 });
    expect(s.valley).toBe(35);
    expect(s.lr).toBe(2e-4);
    expect(s.schedule).toBe("2e-4:500, 2e-5:1001");
    const five = suggestLearningRate(curve(-1.3, 60), { window: 0 });
    expect(five.valleyLr).toBeCloseTo(10 ** -1.3, 12); // 5.01e-2 → 5.01e-3 → 5e-3
    expect(five.lr).toBe(5e-3);
  });

  it("says when the range was too narrow, and refuses what it cannot use", () => {
    expect(suggestLearningRate(curve(0, 99)).note).toMatch(/larger maxLr/);
    expect(suggestLearningRate(curve(-9, 99)).note).toMatch(/smaller minLr/);
    expect(() => suggestLearningRate([])).toThrow(/no points/);
    expect(() => suggestLearningRate([{ lr: 1e-5, loss: NaN }], { window: 0 })).toThrow(/lower minLr/);
  });
});

describe("lrRangeTest on the toy model", () => {
  it("trains a copy through the trainer at the sweep's rates, leaves the network, the tensors and the temp folders as they were", async () => {
    const net = makeToyNet();
    const before = weights(net);
    const tmpBefore = new Set(fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("hn-lr-range-")));
    const tensors = tf.memory().numTensors;
    const opts = toyTrainOptions(dataDir, path.join(tmp, "unused"));
    const { logDir: _, maxSteps: __, learningRate: ___, saveEvery: ____, ...data } = opts;
    const result = await lrRangeTest(base, net, { ...data, minLr: 1e-5, maxLr: 1, steps: 12 });
    expect(tf.memory().numTensors).toBe(tensors);
    expect(weights(net)).toEqual(before);
    expect(net.info.step).toBe(0);
    expect(fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("hn-lr-range-") && !tmpBefore.has(f))).toEqual([]);

    const rates = sweepRates(1e-5, 1, 12);
    expect(result.points.length).toBeGreaterThan(2);
    expect(result.points.map((p) => p.lr)).toEqual(rates.slice(0, result.points.length));
    expect(result.points.map((p) => p.step)).toEqual(result.points.map((_, i) => i + 1));
    if (!result.stoppedEarly) expect(result.points).toHaveLength(12);
    // The measured loss is the fixed batch's: it starts from the untrained network's and moves as the copy trains.
    expect(result.startLoss).toBeGreaterThan(0);
    expect(new Set(result.points.map((p) => p.loss)).size).toBeGreaterThan(1);
    // Step 1's training loss is the trainer's own first loss with these options (same data, same draws).
    const plainNet = makeToyNet();
    const plain = await train(base, plainNet, { ...opts, maxSteps: 1 }).done;
    expect(result.points[0]!.trainingLoss).toBe(plain.losses[0]);
    plainNet.dispose();
    expect(result.suggestion.schedule).toMatch(/^[125]e-?\d+:1000, [125]e-?\d+:2000$/);

    // measure "training": the points are the steps' own losses.
    const byTraining = await lrRangeTest(base, net, { ...data, minLr: 1e-5, maxLr: 1e-3, steps: 3, measure: "training" });
    expect(byTraining.points.map((p) => p.loss)).toEqual(byTraining.points.map((p) => p.trainingLoss));
    expect(byTraining.startLoss).toBeUndefined();
    expect(weights(net)).toEqual(before);
    net.dispose();
  }, 240_000);

  it("the verb shows the chart (PNG inside) and the suggested schedule", async () => {
    const net = makeToyNet();
    const opts = toyTrainOptions(dataDir, path.join(tmp, "unused"));
    const { printed, value } = await quiet(() =>
      tools.lrRangeTest(base, net, { dataDir, template: TOY_TEMPLATE, batchSize: 2, seed: opts.seed, minLr: 1e-5, maxLr: 1e-2, steps: 4 }),
    );
    expect(printed).toContain(`learningRate: "${value.suggestion.schedule}"`);
    const html = fs.readFileSync(path.join(outDir, "lr-range.html"), "utf8");
    expect(html).toContain("data:image/png;base64,");
    expect(html).toContain("LR range test");
    net.dispose();
  }, 240_000);
});

describe("checkpoint gallery", () => {
  it("samples every checkpoint at the same seeds: each cell is that checkpoint sampled by hand; base first; no leaks", async () => {
    const net = makeToyNet(4);
    const runDir = path.join(tmp, "gallery-run");
    await train(base, net, toyTrainOptions(dataDir, runDir, { maxSteps: 4, saveEvery: 2, learningRate: "1e-1" })).done;
    net.dispose();
    const procs = [...base.unet.getProcessors()];
    const common = { prompt: "a photo of red", seeds: [5, 6], steps: 2, cfgScale: 3, cell: 8 };
    const result = await expectNoLeak(() => checkpointGallery(base, runDir, common));
    expect([...base.unet.getProcessors()]).toEqual(procs);
    expect(result.columns.map((c) => c.label)).toEqual(["base", "step 2", "step 4"]);
    const meta = await sharp(result.grid).metadata();
    expect(meta.width).toBe(3 * 8);

    const raw = (png: Buffer): Promise<Buffer> => sharp(png).removeAlpha().raw().toBuffer();
    const byHand = async (file: string | undefined, seed: number): Promise<Float32Array> => {
      const loaded = file ? loadHypernetwork(file) : undefined;
      const att = loaded ? attachHypernetworks(base.unet, [loaded]) : undefined;
      try {
        return (await sampleImages(base, { prompts: [common.prompt], seed, steps: 2, cfgScale: 3 })).pixels;
      } finally {
        att?.detach();
        loaded?.dispose();
      }
    };
    const cellOf = async (png: Buffer): Promise<Float32Array> => Float32Array.from(await raw(png));
    for (const [row, seed] of common.seeds.entries()) {
      for (const col of result.columns) {
        const want = await byHand(col.file, seed);
        const got = await cellOf(col.images[row]!);
        // The PNG holds the sample at 8 bits: compare in [0, 255].
        const wantBytes = Array.from(want, (v) => Math.round(Math.min(1, Math.max(0, (v + 1) / 2)) * 255));
        let worst = 0;
        got.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - wantBytes[i]!))));
        expect(worst, `${col.label} seed ${seed}`).toBeLessThanOrEqual(1);
      }
    }
    // Training changed the network: the last checkpoint's cell differs from the base model's.
    expect((await raw(result.columns[2]!.images[0]!)).equals(await raw(result.columns[0]!.images[0]!))).toBe(false);

    const { printed } = await quiet(() => tools.checkpointGallery(base, runDir, { ...common, includeBase: false, maxCheckpoints: 1 }));
    expect(printed).toContain("checkpoint-gallery");
    expect(fs.existsSync(path.join(outDir, "checkpoint-gallery.png"))).toBe(true);
    await expect(checkpointGallery(base, path.join(tmp, "no-run"), common)).rejects.toThrow(/no-run has no checkpoints/);
    expect(evenlySpaced([1, 2, 3, 4, 5, 6, 7], 3)).toEqual([1, 4, 7]);
    expect(evenlySpaced([1, 2], 5)).toEqual([1, 2]);
  }, 240_000);
});

describe("loss against timestep", () => {
  it("bins samples by hand values", () => {
    const bins = timestepLossBins(
      [
        { t: 0, loss: 1 },
        { t: 99, loss: 3 },
        { t: 100, loss: 5 },
        { t: 999, loss: 7 },
      ],
      10,
    );
    expect(bins[0]).toEqual({ lo: 0, hi: 100, loss: 2, count: 2 });
    expect(bins[1]).toEqual({ lo: 100, hi: 200, loss: 5, count: 1 });
    expect(bins[9]).toEqual({ lo: 900, hi: 1000, loss: 7, count: 1 });
    expect(bins[5]!.count).toBe(0);
    expect(bins[5]!.loss).toBeNaN();
    // A narrower range drops what lies outside it.
    expect(timestepLossBins([{ t: 50, loss: 1 }], 2, [100, 300]).map((b) => b.count)).toEqual([0, 0]);
    expect(() => timestepLossBins([], 0)).toThrow(/bins/);
  });

  it("over a run: one row per validation, as many bins as timesteps per image by default", () => {
    const event = (step: number) => ({
      step,
      loss: 0,
      samples: [0, 1].flatMap((image) => [100, 600].map((t) => ({ image, file: "f", t, loss: step + t / 1000 }))),
    });
    const over = timestepLossOverRun([event(0), event(10)]);
    expect(over.steps).toEqual([0, 10]);
    expect(over.bins[1]!.map((b) => b.loss)).toEqual([10.1, 10.6]);
    expect(over.bins[0]!.map((b) => b.count)).toEqual([2, 2]);
  });
});

describe("charts with the validation curve", () => {
  const points = Array.from({ length: 10 }, (_, i) => ({ step: i + 1, loss: 1 - i * 0.05, lr: 1e-3 }));
  const validation = [
    { step: 0, loss: 1.1 },
    { step: 5, loss: 0.9 },
    { step: 10, loss: 0.8 },
  ];

  it("lossFigure draws the validation loss as its own trace; the PNG fallback draws it too", async () => {
    const fig = lossFigure(points, { validation });
    const trace = fig.data.find((t) => t.name === "validation loss") as { x: number[]; y: number[] };
    expect(trace.x).toEqual([0, 5, 10]);
    expect(trace.y).toEqual([1.1, 0.9, 0.8]);
    expect(lossFigure(points).data.some((t) => t.name === "validation loss")).toBe(false);
    const svg = lossChartSvg(points, { validation });
    expect(svg.match(/<circle [^>]*fill="#ff7f0e"/g)).toHaveLength(3);
    expect(svg).toContain("validation loss");
    expect(await orangePixels(await lossChartPng(points, { validation }))).toBeGreaterThan(30);
    expect(await orangePixels(await lossChartPng(points))).toBe(0);
  });

  it("the LR range chart: log learning-rate axis, valley and suggestion marked", () => {
    const pts = sweepRates(1e-6, 1e-1, 51).map((lr, i) => ({
      step: i + 1,
      lr,
      loss: 1 + 0.1 * (Math.log10(lr) + 3) ** 2,
      trainingLoss: 1,
    }));
    const chart = lrRangeChart({ points: pts, suggestion: suggestLearningRate(pts), stoppedEarly: false });
    expect(chart.xLog).toBe(true);
    expect(chart.marks!.map((m) => m.label)).toEqual(["lowest 1.0e-3", "suggested 1e-4"]);
    const svg = lineChartSvg(chart);
    expect(svg).toContain("suggested 1e-4");
    expect(svg).toContain(">1e-6<");
  });

  it("the train verb's live chart shows the validation curve beside the training loss, and its result carries the validation and norms events", async () => {
    const net = makeToyNet(9);
    const dir = path.join(tmp, "live");
    setOutputDir(dir);
    try {
      const { value: result } = await quiet(
        () =>
          verbs.train(base, net, {
            ...toyTrainOptions(dataDir, path.join(tmp, "live-run"), { maxSteps: 4 }),
            validationEvery: 2,
            normsEvery: 2,
            chartEveryMs: 0,
          }).done,
      );
      expect(result.validation.map((e) => e.step)).toEqual([0, 2, 4]);
      expect(result.norms.map((e) => e.step)).toEqual([2, 4]);
      const html = fs.readFileSync(path.join(dir, "loss.html"), "utf8");
      const fig = JSON.parse(/var fig = (.*?); var n = 0;/.exec(html)![1]!) as Figure;
      const val = fig.data.find((t) => t.name === "validation loss") as { x: number[]; y: number[] };
      expect(val.x).toEqual([0, 2, 4]);
      expect(val.y).toEqual(result.validation.map((e) => e.loss));
      expect(fig.data.some((t) => t.name === "loss")).toBe(true);
      const png = Buffer.from(/data:image\/png;base64,([^"]+)"/.exec(html)![1]!, "base64");
      expect(await orangePixels(png)).toBeGreaterThan(10);

      await quiet(() => tools.timestepLossChart(result));
      await quiet(() => tools.moduleNormsChart(result));
      for (const f of ["timestep-loss.html", "gradient-norms.html", "output-norms.html"])
        expect(fs.existsSync(path.join(dir, f)), f).toBe(true);
      await expect(tools.timestepLossChart([])).rejects.toThrow(/validationEvery/);
      await expect(tools.moduleNormsChart([])).rejects.toThrow(/normsEvery/);
    } finally {
      net.dispose();
      setOutputDir(outDir);
    }
  }, 240_000);
});
