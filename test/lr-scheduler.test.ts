/**
 * Warm-up and cosine annealing with warm restarts on top of A1111's schedule string: the rate of
 * every step against PyTorch's CosineAnnealingWarmRestarts (fixture) and against hand-computed values
 * (γ decay, warm-up, min LR, composition with a two-entry string), cycle ends, option checks, and
 * the ETA that can no longer go negative.
 */
import * as fs from "node:fs";
import { describe, expect, it } from "vitest";
import { Schedule } from "../src/train/lr-schedule";
import { LearningRatePlan, cycleOf, resolveSchedulerConfig } from "../src/train/lr-scheduler";
import { StepClock, formatDuration } from "../src/train/progress";
import { fixture } from "./helpers/tf";

const ref = JSON.parse(fs.readFileSync(fixture("train-options.json"), "utf8")) as {
  cosine: { base_lr: number; T_0: number; T_mult: number; eta_min: number; lrs: number[] };
};

const plan = (
  text: string,
  max: number,
  warmupSteps?: number,
  cosine?: Parameters<typeof resolveSchedulerConfig>[1],
  start = 0,
): LearningRatePlan => new LearningRatePlan(new Schedule(text, max, start), resolveSchedulerConfig(warmupSteps, cosine));

describe("cosine annealing with warm restarts", () => {
  it("matches torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=1e-5) for 25 steps", () => {
    const c = ref.cosine;
    const p = plan(String(c.base_lr), 100, 0, { cycleSteps: c.T_0, cycleMult: c.T_mult, minLr: c.eta_min });
    const ours = c.lrs.map((_, s) => p.rateAt(s)!);
    ours.forEach((v, s) => expect(Math.abs(v - c.lrs[s]!), `step ${s}`).toBeLessThanOrEqual(1e-18));
  });

  it("γ decay, min LR and a 2-step warm-up, hand-computed (T₀ 4, m 2, γ 0.5, η_min 1e-4, rate 1e-3)", () => {
    const p = plan("1e-3", 100, 2, { cycleSteps: 4, cycleMult: 2, gamma: 0.5, minLr: 1e-4 });
    const cosAt = (peak: number, pos: number, len: number): number => 1e-4 + (peak - 1e-4) * 0.5 * (1 + Math.cos((Math.PI * pos) / len));
    const want = [
      5e-4, // warm-up: 1/2 of 1e-3
      1e-3, // warm-up: 2/2
      1e-3, // cycle 1 (4 steps), peak 1e-3
      1e-4 + 9e-4 * 0.8535533905932737, // cos(π/4)
      1e-4 + 9e-4 * 0.5,
      1e-4 + 9e-4 * 0.14644660940672624, // cos(3π/4)
      5e-4, // cycle 2 (8 steps) restarts at γ·1e-3
      cosAt(5e-4, 1, 8),
    ];
    want.forEach((w, s) => expect(p.rateAt(s)!, `step ${s}`).toBeCloseTo(w, 15));
    expect(p.rateAt(14)).toBeCloseTo(2.5e-4, 15); // cycle 3 (16 steps) at γ²·1e-3
    expect(p.rateAt(13)).toBeCloseTo(cosAt(5e-4, 7, 8), 15);
    // cycles end after steps 2 + 4 = 6, 6 + 8 = 14, 14 + 16 = 30
    const ends = Array.from({ length: 40 }, (_, k) => k).filter((k) => p.isCycleEnd(k));
    expect(ends).toEqual([6, 14, 30]);
  });

  it("a peak decayed below the min LR stays at the min LR", () => {
    const p = plan("1e-3", 100, 0, { cycleSteps: 2, gamma: 0.01, minLr: 1e-4 });
    expect([0, 1, 2, 3].map((s) => p.rateAt(s))).toEqual([1e-3, 1e-4 + 9e-4 * 0.5, 1e-4, 1e-4]);
  });

  it("composes with the A1111 string: the string's rate is each step's peak, and its end still stops training", () => {
    const p = plan("1e-3:5, 1e-4:-1", 12, 0, { cycleSteps: 4, minLr: 0 });
    const half = (r: number, pos: number): number => r * 0.5 * (1 + Math.cos((Math.PI * pos) / 4));
    const want = [1e-3, half(1e-3, 1), half(1e-3, 2), half(1e-3, 3), 1e-3, half(1e-4, 1), half(1e-4, 2), half(1e-4, 3), 1e-4];
    want.forEach((w, s) => expect(p.rateAt(s)!, `step ${s}`).toBeCloseTo(w, 16));
    const capped = plan("1e-3:500, 1e-4:200", 1000, 3, { cycleSteps: 100 });
    expect(capped.end).toBe(501);
    expect(capped.rateAt(501)).toBeUndefined();
    expect(capped.rateAt(0)).toBeCloseTo(1e-3 / 3, 18);
  });

  it("warm-up alone scales the string's rate; nothing set leaves the string's rates bit for bit", () => {
    const w = plan("1e-3:4, 1e-4:-1", 10, 5);
    expect([0, 1, 2, 3, 4, 5].map((s) => w.rateAt(s))).toEqual([1e-3 / 5, 2e-3 / 5, 3e-3 / 5, 4e-3 / 5, 1e-4, 1e-4]);
    const plain = plan("1e-3:4, 1e-4:-1", 10);
    const sched = new Schedule("1e-3:4, 1e-4:-1", 10);
    for (let s = 0; s < 10; s++) expect(plain.rateAt(s)).toBe(sched.at(s));
    expect(plain.isCycleEnd(4)).toBe(false);
  });

  it("a resumed run continues the same curve (cycles count the network's steps)", () => {
    const full = plan("1e-3", 50, 3, { cycleSteps: 5, cycleMult: 1.5, gamma: 0.8, minLr: 1e-5 });
    const resumed = plan("1e-3", 50, 3, { cycleSteps: 5, cycleMult: 1.5, gamma: 0.8, minLr: 1e-5 }, 17);
    for (let s = 17; s < 50; s++) expect(resumed.rateAt(s)).toBe(full.rateAt(s));
  });

  it("cycleOf: fractional multipliers round each cycle's length; long runs with short cycles stay cheap", () => {
    // lengths round(4·1.5^c) = 4, 6, 9, 14 → starts 0, 4, 10, 19, 33
    expect(cycleOf(9, 4, 1.5)).toEqual({ cycle: 1, pos: 5, length: 6, start: 4 });
    expect(cycleOf(19, 4, 1.5)).toEqual({ cycle: 3, pos: 0, length: 14, start: 19 });
    expect(cycleOf(1_000_001, 1, 1)).toEqual({ cycle: 1_000_001, pos: 0, length: 1, start: 1_000_001 });
    const p = plan("1e-3", 200_000, 0, { cycleSteps: 1, cycleMult: 1.0001 });
    for (let s = 0; s < 200_000; s += 997) p.rateAt(s);
  });

  it("news: A1111's message names the step each rate really lasts to, and cycles are announced", () => {
    const p = plan("1e-3:500, 1e-4:200", 1000);
    expect(p.newsAt(0, 0)).toBe("Training at rate of 0.001 until step 500");
    expect(p.newsAt(500, 0)).toBe("Training at rate of 0.0001 until step 501");
    expect(p.newsAt(1, 0)).toBeUndefined();
    const c = plan("1e-3", 100, 2, { cycleSteps: 4 });
    expect(c.newsAt(2, 0)).toMatch(/cosine cycle 1: steps 3–6/);
    expect(c.newsAt(6, 0)).toMatch(/cosine cycle 2: steps 7–10/);
  });

  it("bad options are errors naming the option", () => {
    expect(() => resolveSchedulerConfig(-1, undefined)).toThrow(/warmupSteps must be an integer ≥ 0/);
    expect(() => resolveSchedulerConfig(0, { cycleSteps: 0 })).toThrow(/cosineRestarts.cycleSteps must be an integer ≥ 1/);
    expect(() => resolveSchedulerConfig(0, { cycleSteps: 3, cycleMult: 0.5 })).toThrow(/cycleMult must be a number ≥ 1/);
    expect(() => resolveSchedulerConfig(0, { cycleSteps: 3, gamma: 0 })).toThrow(/gamma must be in \(0, 1\]/);
    expect(() => resolveSchedulerConfig(0, { cycleSteps: 3, minLr: Number.NaN })).toThrow(/minLr must be a finite number ≥ 0/);
  });
});

describe("ETA", () => {
  it("is never negative, even when a caller's end step is behind the step count", () => {
    const clock = new StepClock();
    const { etaSeconds } = clock.tick(-499);
    expect(etaSeconds).toBe(0);
    expect(formatDuration(-5)).toBe("?");
    expect(formatDuration(65)).toBe("1m05s");
  });
});
