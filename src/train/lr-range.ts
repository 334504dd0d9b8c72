/**
 * The learning-rate range test (L. Smith's "LR range test", as fastai's `lr_find`): train a copy of
 * the network for K steps while the learning rate grows exponentially from `minLr` to `maxLr`, and
 * watch the loss. It falls once the rate is large enough to matter, bottoms out, and blows up when
 * the rate is too large; a good training rate sits below the bottom. The network passed in is
 * never touched: the sweep trains a copy, through the trainer itself (same data, same loss, same
 * AdamW), in a temporary folder that is removed afterwards.
 *
 *     lr_i = minLr · (maxLr / minLr)^(i / (K − 1)),   i = 0 … K−1    (step i + 1 uses lr_i)
 *
 * The loss after each step is by default the validation loss on a fixed batch (`validation.ts`):
 * the training loss draws new t and ε every step and is far too noisy to read a curve from.
 *
 * The suggestion (`suggestLearningRate`), stated once here and in the README:
 *   1. smooth the losses with a centred moving average over 2w + 1 points (w = 2; fewer at the ends);
 *   2. cut the curve where it diverges: at the first point whose smoothed loss is non-finite or
 *      more than `stopFactor` (4) × the lowest smoothed loss before it;
 *   3. the valley is the point of lowest smoothed loss before the cut; its rate is `valleyLr`;
 *   4. the suggested rate is valleyLr / 10, rounded down to 1, 2 or 5 × 10ⁿ;
 *   5. the schedule for N planned steps is "rate:⌊N/2⌋, rate/10:N" (A1111's string: the suggested
 *      rate for the first half, a tenth of it for the second).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fromNetworkAsync, toNetwork } from "../hypernet/file";
import type { Hypernetwork } from "../hypernet/network";
import type { BaseModel } from "../pipeline/base-model";
import type { TrainOptions } from "./options";
import { train } from "./trainer";

/** Options of {@link lrRangeTest}: the trainer's data and batch options, plus the sweep's. */
export interface LrRangeOptions
  extends Omit<
    TrainOptions,
    | "maxSteps"
    | "learningRate"
    | "resumeFrom"
    | "finalFile"
    | "overwrite"
    | "logDir"
    | "saveEvery"
    | "previewEvery"
    | "preview"
    | "validationEvery"
    | "normsEvery"
    | "blowUpFactor"
  > {
  /** Lowest and highest learning rate of the sweep (default 1e-7 and 1e-2). */
  minLr?: number;
  maxLr?: number;
  /** Steps of the sweep, K (default 60). */
  steps?: number;
  /** The loss read after each step: "fixed-batch" (default; the validation loss) or "training" (the step's own loss). */
  measure?: "fixed-batch" | "training";
  /** End the sweep once the loss exceeds this many times its lowest value (default 4). */
  stopFactor?: number;
  /** Half-width w of the moving average the suggestion smooths with (default 2). */
  window?: number;
  /** Steps of the training run the suggested schedule is for, N (default 2000). */
  plannedSteps?: number;
}

/** One step of the sweep. */
export interface LrRangePoint {
  step: number;
  lr: number;
  /** The measured loss after this step (fixed-batch or training, per `measure`). */
  loss: number;
  /** The step's own training loss. */
  trainingLoss: number;
}

/** What the rule of the module comment suggests. */
export interface LrSuggestion {
  /** The suggested learning rate (valleyLr / 10, rounded down to 1, 2 or 5 × 10ⁿ). */
  lr: number;
  /** The rate at the lowest smoothed loss. */
  valleyLr: number;
  /** An A1111 schedule string for `plannedSteps` steps. */
  schedule: string;
  /** The smoothed losses, one per point (NaN after the cut). */
  smoothed: number[];
  /** Index of the valley point, and of the first point cut off as diverged (the length when none was). */
  valley: number;
  cut: number;
  /** When the sweep's range looks too narrow: what to change. */
  note?: string;
}

/** The sweep's result. */
export interface LrRangeResult {
  points: LrRangePoint[];
  /** The fixed-batch loss before the first step (with measure "fixed-batch"). */
  startLoss?: number;
  suggestion: LrSuggestion;
  /** True when the sweep ended before K steps because the loss diverged. */
  stoppedEarly: boolean;
}

/** The rates of a K-step sweep from `minLr` to `maxLr`, exponentially spaced. */
export function sweepRates(minLr: number, maxLr: number, steps: number): number[] {
  if (!(minLr > 0 && maxLr > minLr && Number.isFinite(maxLr)))
    throw new Error(`lrRangeTest: need 0 < minLr < maxLr, got minLr ${minLr}, maxLr ${maxLr}`);
  if (!Number.isSafeInteger(steps) || steps < 2) throw new Error(`lrRangeTest: steps must be an integer ≥ 2, got ${steps}`);
  return Array.from({ length: steps }, (_, i) => minLr * (maxLr / minLr) ** (i / (steps - 1)));
}

/** `x` rounded down to 1, 2 or 5 × 10ⁿ, as mantissa and exponent (so x/10 is exact too). */
function roundDown125(x: number): { m: number; e: number } {
  let e = Math.floor(Math.log10(x));
  // log10 can land a hair below an exact power of ten.
  if (10 ** (e + 1) <= x * (1 + 1e-12)) e += 1;
  const f = x / 10 ** e;
  return { m: f >= 5 * (1 - 1e-12) ? 5 : f >= 2 * (1 - 1e-12) ? 2 : 1, e };
}

/**
 * The suggested learning rate and A1111 schedule for a loss-vs-rate curve, by the rule of the
 * module comment. `points` must be in increasing rate order.
 */
export function suggestLearningRate(
  points: ReadonlyArray<{ lr: number; loss: number }>,
  opts: { window?: number; stopFactor?: number; plannedSteps?: number } = {},
): LrSuggestion {
  const w = opts.window ?? 2;
  const factor = opts.stopFactor ?? 4;
  const n = opts.plannedSteps ?? 2000;
  if (points.length === 0) throw new Error("suggestLearningRate: no points (the sweep took no step)");
  if (!Number.isSafeInteger(w) || w < 0) throw new Error(`suggestLearningRate: window must be an integer ≥ 0, got ${w}`);
  if (!Number.isSafeInteger(n) || n < 2) throw new Error(`suggestLearningRate: plannedSteps must be an integer ≥ 2, got ${n}`);
  const losses = points.map((p) => p.loss);
  const smoothed = losses.map((_, i) => {
    const part = losses.slice(Math.max(0, i - w), Math.min(losses.length, i + w + 1));
    return part.reduce((a, b) => a + b, 0) / part.length;
  });
  let cut = smoothed.length;
  let best = Infinity;
  let valley = -1;
  for (let i = 0; i < smoothed.length; i++) {
    const s = smoothed[i]!;
    if (!Number.isFinite(s) || (valley >= 0 && s > factor * best)) {
      cut = i;
      break;
    }
    if (s < best) [best, valley] = [s, i];
  }
  if (valley < 0) throw new Error("suggestLearningRate: the first loss is already non-finite; lower minLr");
  const valleyLr = points[valley]!.lr;
  const { m, e } = roundDown125(valleyLr / 10);
  const rate = Number(`${m}e${e}`);
  const schedule = `${m}e${e}:${Math.floor(n / 2)}, ${m}e${e - 1}:${n}`;
  const note =
    valley === 0
      ? "the loss was lowest at the first rate: the sweep started too high; rerun with a smaller minLr"
      : valley === cut - 1 && cut === smoothed.length
        ? "the loss was still falling at the last rate: rerun with a larger maxLr to find where it turns"
        : undefined;
  return {
    lr: rate,
    valleyLr,
    schedule,
    smoothed: smoothed.map((s, i) => (i < cut ? s : NaN)),
    valley,
    cut,
    ...(note ? { note } : {}),
  };
}

/**
 * Run the range test on a copy of `net` (see the module comment) and suggest a schedule.
 * `opts` holds the data and batch options as for `train` (dataDir, template, batchSize, …).
 */
export async function lrRangeTest(base: BaseModel, net: Hypernetwork, opts: LrRangeOptions): Promise<LrRangeResult> {
  const { minLr = 1e-7, maxLr = 1e-2, steps = 60, measure = "fixed-batch", stopFactor = 4, window, plannedSteps, ...rest } = opts;
  if (measure !== "fixed-batch" && measure !== "training")
    throw new Error(`lrRangeTest: measure must be "fixed-batch" or "training", got ${JSON.stringify(measure)}`);
  if (!(stopFactor > 1)) throw new Error(`lrRangeTest: stopFactor must be > 1, got ${stopFactor}`);
  const rates = sweepRates(minLr, maxLr, steps);
  const copy = toNetwork(await fromNetworkAsync(net), { trainable: true });
  copy.info.step = 0;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hn-lr-range-"));
  const points: LrRangePoint[] = [];
  const training = new Map<number, { lr: number; loss: number }>();
  let startLoss: number | undefined;
  let lowest = Infinity;
  let stoppedEarly = false;
  let stop = (): void => {};
  const record = (step: number, loss: number): void => {
    const t = training.get(step)!;
    points.push({ step, lr: t.lr, loss, trainingLoss: t.loss });
    lowest = Math.min(lowest, loss);
    if (!Number.isFinite(loss) || loss > stopFactor * lowest) {
      stoppedEarly = step < steps;
      stop();
    }
  };
  try {
    const run = train(base, copy, {
      handleSigint: false,
      onLog: () => {},
      ...rest,
      maxSteps: steps,
      learningRate: rates.map((r, i) => `${r}:${i + 1}`).join(", "),
      logDir: dir,
      saveEvery: 0,
      saveOptimizer: false,
      saveSettings: false,
      csvEvery: 0,
      previewEvery: 0,
      blowUpFactor: 0,
      progress: false,
      validationEvery: measure === "fixed-batch" ? 1 : 0,
      validation: rest.validation ?? { images: 2, timesteps: 4 },
      onStep: (e) => {
        training.set(e.step, { lr: e.lr, loss: e.loss });
        if (measure === "training") record(e.step, e.loss);
        rest.onStep?.(e);
      },
      onValidation: (e) => {
        if (e.step === 0) startLoss = e.loss;
        else record(e.step, e.loss);
        rest.onValidation?.(e);
      },
    });
    stop = run.stop;
    const result = await run.done;
    // A non-finite step is not applied: the trainer stops before it and reports no loss event for it.
    if (result.reason === "unsafe") stoppedEarly = true;
  } finally {
    copy.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const suggestion = suggestLearningRate(points, { window, stopFactor, plannedSteps });
  return { points, ...(startLoss !== undefined ? { startLoss } : {}), suggestion, stoppedEarly };
}
