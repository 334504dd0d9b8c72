/**
 * Learning-rate schedulers beyond A1111's string, composed with it: a linear warm-up and cosine
 * annealing with warm restarts (what MonkeyPatch and kohya users know as "cosine with restarts").
 * The A1111 string (`lr-schedule.ts`) still decides the base rate r(s) of every step and where
 * training stops; these shape it. For the step that starts with `s` steps done (steps counted on the
 * network, so a resumed run continues the same curve):
 *
 *     warm-up (W steps):        w(s) = min(1, (s + 1) / W)                     (1 when W = 0)
 *     cycles after the warm-up: u = s − W; cycle c has T_c = round(T₀ · m^c) steps (T₀ cycleSteps,
 *                               m cycleMult); p = u − (T₀ + … + T_{c−1}) is the position in it
 *     peak of cycle c:          P_c = max(η_min, γ^c · r(s))                    (γ gamma, η_min minLr)
 *     rate:                     s < W:  w(s) · r(s)
 *                               s ≥ W:  η_min + (P_c − η_min) · (1 + cos(π · p / T_c)) / 2
 *
 * With γ = 1, W = 0, a constant r and a whole-number m this is PyTorch's `CosineAnnealingWarmRestarts`
 * (T_0, T_mult, eta_min) step for step. Without cosine and warm-up the rate is the A1111 string's,
 * bit for bit. A cycle ends after its last (lowest-rate) step: steps W + T₀, W + T₀ + T₁, …; a run
 * can save a checkpoint and a preview there (`saveAtCycleEnds`, `previewAtCycleEnds`).
 */
import type { Schedule } from "./lr-schedule";

/** Cosine annealing with warm restarts (see the module comment). */
export interface CosineRestarts {
  /** Steps of the first cycle, T₀ (an integer ≥ 1). */
  cycleSteps: number;
  /** Each cycle is this many times longer than the one before, m (≥ 1, default 1: equal cycles). */
  cycleMult?: number;
  /** The peak of each cycle is γ times the one before (0 < γ ≤ 1, default 1: no decay). */
  gamma?: number;
  /** The rate each cycle anneals down to, η_min (≥ 0, default 0). */
  minLr?: number;
  /** Save a checkpoint at every cycle end, besides every `saveEvery` steps (default false). */
  saveAtCycleEnds?: boolean;
  /** Make a preview at every cycle end, besides every `previewEvery` steps (default false). */
  previewAtCycleEnds?: boolean;
}

/** The scheduler options, checked, with defaults filled in. */
export interface SchedulerConfig {
  warmupSteps: number;
  cosine?: Required<CosineRestarts>;
}

/** Check `warmupSteps` and `cosineRestarts` (errors name the option and what it accepts). */
export function resolveSchedulerConfig(warmupSteps: number | undefined, cosine: CosineRestarts | undefined): SchedulerConfig {
  const w = warmupSteps ?? 0;
  if (!Number.isSafeInteger(w) || w < 0) throw new Error(`train: warmupSteps must be an integer ≥ 0, got ${w}`);
  if (cosine === undefined) return { warmupSteps: w };
  const c = {
    cycleSteps: cosine.cycleSteps,
    cycleMult: cosine.cycleMult ?? 1,
    gamma: cosine.gamma ?? 1,
    minLr: cosine.minLr ?? 0,
    saveAtCycleEnds: cosine.saveAtCycleEnds ?? false,
    previewAtCycleEnds: cosine.previewAtCycleEnds ?? false,
  };
  if (!Number.isSafeInteger(c.cycleSteps) || c.cycleSteps < 1)
    throw new Error(`train: cosineRestarts.cycleSteps must be an integer ≥ 1 (steps of the first cycle), got ${c.cycleSteps}`);
  if (!(Number.isFinite(c.cycleMult) && c.cycleMult >= 1))
    throw new Error(`train: cosineRestarts.cycleMult must be a number ≥ 1 (1: equal cycles, 2: each twice the last), got ${c.cycleMult}`);
  if (!(Number.isFinite(c.gamma) && c.gamma > 0 && c.gamma <= 1))
    throw new Error(`train: cosineRestarts.gamma must be in (0, 1] (the peak's decay per cycle; 1: none), got ${c.gamma}`);
  if (!(Number.isFinite(c.minLr) && c.minLr >= 0))
    throw new Error(`train: cosineRestarts.minLr must be a finite number ≥ 0, got ${c.minLr}`);
  return { warmupSteps: w, cosine: c };
}

/** Where a step falls in the cosine cycles: cycle c (0-based), position p in it, its length and first step. */
export interface CyclePosition {
  cycle: number;
  pos: number;
  length: number;
  start: number;
}

/**
 * Where step `u` (steps after the warm-up) falls, for cycles of `round(cycleSteps · cycleMult^c)`
 * steps. `starts` (optional) caches the cycles' first steps between calls, so a long run with short
 * cycles does not walk every cycle again on every step.
 */
export function cycleOf(u: number, cycleSteps: number, cycleMult: number, starts: number[] = [0]): CyclePosition {
  const lengthOf = (c: number): number => Math.max(1, Math.round(cycleSteps * cycleMult ** c));
  if (cycleMult === 1) {
    const cycle = Math.floor(u / cycleSteps);
    return { cycle, pos: u - cycle * cycleSteps, length: cycleSteps, start: cycle * cycleSteps };
  }
  if (starts.length === 0) starts.push(0);
  while (starts[starts.length - 1]! + lengthOf(starts.length - 1) <= u)
    starts.push(starts[starts.length - 1]! + lengthOf(starts.length - 1));
  // The last cycle whose start is ≤ u (binary search over the cached starts).
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= u) lo = mid;
    else hi = mid - 1;
  }
  return { cycle: lo, pos: u - starts[lo]!, length: lengthOf(lo), start: starts[lo]! };
}

/**
 * The learning rate of every step of a run: the A1111 schedule shaped by the warm-up and the cosine
 * cycles (see the module comment). Stateless: every method answers for a step number.
 */
export class LearningRatePlan {
  private readonly starts: number[] = [0];

  constructor(
    /** The A1111 schedule, stepped with the run's gradient accumulation. */
    readonly base: Schedule,
    readonly config: SchedulerConfig = { warmupSteps: 0 },
  ) {}

  /** Where training stops (≤ Max steps): the A1111 schedule's end. */
  get end(): number {
    return this.base.end;
  }

  /** True when `step` steps done reach the end. */
  exhausted(step: number): boolean {
    return this.base.exhausted(step);
  }

  /** The A1111 entry in force for the step after `step` steps done, or -1 past the end. */
  indexAt(step: number): number {
    return this.base.indexAt(step);
  }

  /** The rate of the step after `step` steps done, or undefined once the schedule has stopped training. */
  rateAt(step: number): number | undefined {
    return this.base.exhausted(step) ? undefined : this.at(step);
  }

  /** The rate of the step after `step` steps done (past the end: as if the last base rate went on). */
  at(step: number): number {
    const r = this.base.at(step);
    const { warmupSteps: w, cosine } = this.config;
    if (step < w) return (r * (step + 1)) / w;
    if (!cosine) return r;
    const { cycle, pos, length } = cycleOf(step - w, cosine.cycleSteps, cosine.cycleMult, this.starts);
    const peak = Math.max(cosine.minLr, cosine.gamma ** cycle * r);
    return cosine.minLr + ((peak - cosine.minLr) * (1 + Math.cos((Math.PI * pos) / length))) / 2;
  }

  /** True when `step` steps done end a cosine cycle (the next step restarts at the peak). */
  isCycleEnd(step: number): boolean {
    const { warmupSteps: w, cosine } = this.config;
    if (!cosine || step <= w) return false;
    const { pos, length } = cycleOf(step - 1 - w, cosine.cycleSteps, cosine.cycleMult, this.starts);
    return pos === length - 1;
  }

  /** Whether to save a checkpoint after `step` steps: every `saveEvery` steps, and at cycle ends when asked. */
  checkpointDue(step: number, saveEvery: number): boolean {
    return (saveEvery > 0 && step % saveEvery === 0) || (this.config.cosine?.saveAtCycleEnds === true && this.isCycleEnd(step));
  }

  /** Whether to make a preview after `step` steps: every `previewEvery` steps, and at cycle ends when asked. */
  previewDue(step: number, previewEvery: number): boolean {
    return (previewEvery > 0 && step % previewEvery === 0) || (this.config.cosine?.previewAtCycleEnds === true && this.isCycleEnd(step));
  }

  /**
   * What to tell the user when the step after `step` steps done starts: A1111's "Training at rate
   * of R until step S" when a base entry starts (S: the step it really lasts to), and the start of
   * the warm-up and of each cosine cycle. Undefined when nothing starts.
   */
  newsAt(step: number, startStep: number): string | undefined {
    const news: string[] = [];
    const k = this.base.segmentAt(step);
    const seg = this.base.segments[k];
    if (seg && (step === seg.from || step === startStep)) news.push(`Training at rate of ${seg.rate} until step ${seg.to}`);
    const { warmupSteps: w, cosine } = this.config;
    if (step < w && step === startStep) news.push(`warm-up: the rate rises linearly to the schedule's over steps 1–${w}`);
    if (cosine && step >= w) {
      const c = cycleOf(step - w, cosine.cycleSteps, cosine.cycleMult, this.starts);
      if (c.pos === 0 || step === startStep)
        news.push(
          `cosine cycle ${c.cycle + 1}: steps ${w + c.start + 1}–${w + c.start + c.length}, from ${this.at(w + c.start)} down towards ${cosine.minLr}`,
        );
    }
    return news.length ? news.join("; ") : undefined;
  }
}
