/**
 * A1111's learning-rate schedule strings (spec §4.3), also used for the gradient-clipping value.
 *
 *     "5e-5:100, 5e-6:1500, 5e-7:10000, 5e-8:-1"    rate 5e-5 until step 100, 5e-6 until 1500, …
 *     "1e-5"                                        one rate until Max steps
 *
 * Parsing, given Max steps and the step training starts at (the network's stored `step`):
 *   - entries are split on ","; blank entries are skipped;
 *   - `RATE:STEP` (exactly one ":"): STEP is a Python `int` (so "1e3" and "100.0" are errors);
 *       STEP > start  → add (RATE, min(STEP, max)); stop parsing if STEP > max;
 *       STEP == −1    → add (RATE, max) and stop parsing ("to the end");
 *       otherwise     → the entry is already passed on resume and is skipped;
 *   - a bare `RATE` (or anything with two or more ":") → add (RATE, max) and stop parsing; any later
 *     entry is ignored — A1111 does the same; we report it as a warning.
 *
 * Stepping is A1111's `LearnRateScheduler`, run forward exactly: before every micro-batch it is
 * called with the optimizer steps done `s`, and when `s ≥ end` of the entry in force it moves on by
 * ONE entry (or, past the last, is exhausted: a learning-rate schedule then stops training before
 * the micro-batch; the clipping schedule keeps its last value). The rate an optimizer step uses is
 * the one in force after its `accum` calls. For increasing ends this is plainly "r_i while the step
 * counter is below end_i". For an entry that ends at or before the one ahead of it
 * (`"1e-3:500, 1e-4:200"`), A1111 moves on one entry per call: 1e-4 is used for one step (501) and
 * training stops at step 501 — with 2 micro-batches per step both moves happen within step 501's
 * calls, so training stops at 500. We reproduce that, warn about it, and name the true last step.
 * One deliberate difference: Max steps is never exceeded (A1111's loop could run one step past it
 * when such an entry followed one ending at Max steps).
 * A last entry that ends before Max steps caps training — we warn about that instead of doing it
 * silently. A schedule whose entries have all passed was a crash in A1111; here it is an error.
 */

/** One schedule entry: `rate` applies while the step counter is below `end`. */
export interface ScheduleEntry {
  rate: number;
  end: number;
  /** The entry as written (trimmed), for messages. */
  text?: string;
}

/** A run of optimizer steps `[from, to)` (steps done at their start) that use one entry's rate. */
export interface ScheduleSegment {
  from: number;
  to: number;
  rate: number;
  /** Index of the entry in `entries`. */
  entry: number;
}

/** A parsed schedule. */
export interface ParsedSchedule {
  /** The entries still ahead of the starting step, in order. */
  entries: ScheduleEntry[];
  /** The steps from the start to `end` as A1111 steps through them, in order (see the module comment). */
  segments: ScheduleSegment[];
  /**
   * Where the schedule leaves off (≤ Max steps): for a learning-rate schedule the step training
   * stops at; for clipping, Max steps (its last value is kept).
   */
  end: number;
  /** True when the schedule runs out before Max steps (a learning-rate schedule then stops training there). */
  exhausted: boolean;
  /** Things the user probably did not mean (ignored entries, training capped before Max steps). */
  warnings: string[];
}

/** Error for a schedule string that cannot be parsed; the message says what to write instead. */
export class ScheduleError extends Error {
  constructor(what: string, schedule: string, detail: string) {
    super(
      `invalid ${what} schedule ${JSON.stringify(schedule)}: ${detail}. Write a number ("1e-5") or RATE:STEP entries ` +
        `separated by commas ("5e-5:100, 5e-6:1500, 5e-7:-1": 5e-5 until step 100, then 5e-6 until 1500, then 5e-7 to the end)`,
    );
    this.name = "ScheduleError";
  }
}

/** Python `int(s)` on a decimal string: optional sign, digits with single underscores, whitespace around. */
function pyInt(s: string): number | undefined {
  const m = /^\s*([+-]?\d+(?:_\d+)*)\s*$/.exec(s);
  if (!m) return undefined;
  const n = Number(m[1]!.replace(/_/g, ""));
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Python `float(s)`: decimal/exponent syntax with underscores between digits, inf/nan spellings. */
function pyFloat(s: string): number | undefined {
  const t = s.trim();
  const special = /^([+-]?)(inf|infinity|nan)$/i.exec(t);
  if (special) return special[2]!.toLowerCase() === "nan" ? NaN : special[1] === "-" ? -Infinity : Infinity;
  const digits = String.raw`\d+(?:_\d+)*`;
  const re = new RegExp(`^[+-]?(?:${digits}(?:\\.(?:${digits})?)?|\\.${digits})(?:[eE][+-]?${digits})?$`);
  if (!re.test(t)) return undefined;
  return Number(t.replace(/_/g, ""));
}

/**
 * Parse a schedule string the way A1111 does (see the module comment).
 * @param schedule e.g. `"5e-5:100, 5e-6:1500"` or `"1e-5"`
 * @param maxSteps absolute Max steps of the run
 * @param startStep the step training starts at (the network's stored step; 0 for a new network)
 * @param what "learning rate" or "gradient clipping", for messages
 * @param opts.accumulation micro-batches per optimizer step (default 1): A1111 steps the schedule once per micro-batch
 * @param opts.stopsTraining whether running out ends training (default: for the learning rate only)
 */
export function parseSchedule(
  schedule: string,
  maxSteps: number,
  startStep = 0,
  what = "learning rate",
  opts: { accumulation?: number; stopsTraining?: boolean } = {},
): ParsedSchedule {
  if (typeof schedule !== "string") throw new ScheduleError(what, String(schedule), "it must be a string");
  if (!Number.isSafeInteger(maxSteps) || maxSteps < 1)
    throw new Error(`${what} schedule: Max steps must be a positive integer, got ${maxSteps}`);
  const accumulation = opts.accumulation ?? 1;
  if (!Number.isSafeInteger(accumulation) || accumulation < 1)
    throw new Error(`${what} schedule: gradient accumulation must be a positive integer, got ${accumulation}`);
  const stopsTraining = opts.stopsTraining ?? what === "learning rate";
  const entries: ScheduleEntry[] = [];
  const warnings: string[] = [];
  const parts = schedule.split(",");
  let stoppedAt = -1;
  const rateOf = (text: string, entry: string): number => {
    const r = pyFloat(text);
    if (r === undefined)
      throw new ScheduleError(what, schedule, `${JSON.stringify(text.trim())} in entry ${JSON.stringify(entry.trim())} is not a number`);
    if (!Number.isFinite(r) || r < 0)
      throw new ScheduleError(what, schedule, `the rate ${JSON.stringify(text.trim())} must be a finite number ≥ 0`);
    return r;
  };
  for (let i = 0; i < parts.length; i++) {
    const entry = parts[i]!;
    if (!entry.trim()) continue;
    const bits = entry.split(":");
    if (bits.length === 2) {
      const step = pyInt(bits[1]!);
      if (step === undefined)
        throw new ScheduleError(
          what,
          schedule,
          `the step ${JSON.stringify(bits[1]!.trim())} in entry ${JSON.stringify(entry.trim())} is not a whole number (write 1000, not 1e3 or 1000.0)`,
        );
      const rate = rateOf(bits[0]!, entry);
      if (step > startStep) {
        entries.push({ rate, end: Math.min(step, maxSteps), text: entry.trim() });
        if (step > maxSteps) {
          stoppedAt = i;
          break;
        }
      } else if (step === -1) {
        entries.push({ rate, end: maxSteps, text: entry.trim() });
        stoppedAt = i;
        break;
      }
      // else: an entry that ends at or before the starting step — already passed.
    } else {
      entries.push({ rate: rateOf(bits[0]!, entry), end: maxSteps, text: entry.trim() });
      stoppedAt = i;
      break;
    }
  }
  if (stoppedAt >= 0) {
    const rest = parts.slice(stoppedAt + 1).filter((p) => p.trim());
    if (rest.length)
      warnings.push(
        `${what} schedule: entries after ${JSON.stringify(parts[stoppedAt]!.trim())} are ignored (${rest.map((r) => r.trim()).join(", ")}): that entry already runs to step ${maxSteps}`,
      );
  }
  if (entries.length === 0) {
    throw new ScheduleError(
      what,
      schedule,
      startStep > 0
        ? `every entry ends at or before step ${startStep}, where this network already is; add an entry that ends later (or -1 for "to the end")`
        : "it has no entries",
    );
  }
  const { segments, end, exhausted } = stepThrough(entries, startStep, maxSteps, accumulation, stopsTraining);
  warnings.push(...outOfOrderWarnings(what, entries, segments, accumulation));
  if (exhausted && stopsTraining)
    warnings.push(
      `${what} schedule ends at step ${end}, before Max steps ${maxSteps}; training will stop at step ${end} (end the last entry with :-1 to train to Max steps)`,
    );
  return { entries, segments, end, exhausted, warnings };
}

/**
 * A1111's `LearnRateScheduler` run forward from `startStep` (see the module comment): `accum` calls
 * per optimizer step, each moving on by at most one entry once the step counter has reached the
 * entry's end. Stops at Max steps, or (when `stopsTraining`) where the entries run out.
 */
function stepThrough(
  entries: readonly ScheduleEntry[],
  startStep: number,
  maxSteps: number,
  accum: number,
  stopsTraining: boolean,
): { segments: ScheduleSegment[]; end: number; exhausted: boolean } {
  const segments: ScheduleSegment[] = [];
  const last = entries.length - 1;
  let idx = 0;
  let s = startStep;
  let exhausted = false;
  while (s < maxSteps) {
    for (let j = 0; j < accum; j++) {
      if (s < entries[idx]!.end) continue;
      if (idx < last) idx += 1;
      else exhausted = true;
    }
    if (exhausted && stopsTraining) break;
    // The entry now in force holds while the counter is below its end; an entry whose end has
    // already passed lasts one step: the next step's calls move on from it, or (past the last
    // entry) end training — a clipping schedule instead keeps its last value to Max steps.
    const e = entries[idx]!.end;
    const to = s < e ? Math.min(maxSteps, e) : idx === last && !stopsTraining ? maxSteps : s + 1;
    const prev = segments[segments.length - 1];
    if (prev && prev.entry === idx && prev.to === s) prev.to = to;
    else segments.push({ from: s, to, rate: entries[idx]!.rate, entry: idx });
    s = to;
  }
  return { segments, end: s, exhausted: exhausted || (stopsTraining && s < maxSteps) };
}

/** Warnings for entries that end at or before the entry ahead of them: what A1111 makes of them. */
function outOfOrderWarnings(
  what: string,
  entries: readonly ScheduleEntry[],
  segments: readonly ScheduleSegment[],
  accum: number,
): string[] {
  const out: string[] = [];
  let latest = entries[0]!.end;
  for (let i = 1; i < entries.length; i++) {
    const before = latest;
    latest = Math.max(latest, entries[i]!.end);
    if (entries[i]!.end > before) continue;
    const used = segments.filter((g) => g.entry === i);
    const steps = used.reduce((n, g) => n + g.to - g.from, 0);
    const where = used.length ? `step${steps > 1 ? "s" : ""} ${used[0]!.from + 1}${steps > 1 ? `–${used[used.length - 1]!.to}` : ""}` : "";
    out.push(
      `${what} schedule: the entry ${JSON.stringify(entries[i]!.text ?? `${entries[i]!.rate}:${entries[i]!.end}`)} ends at step ${entries[i]!.end}, ` +
        `not after the entries before it (step ${before}); as in A1111, which moves on one entry per micro-batch once an entry's end has passed` +
        `${accum > 1 ? ` (${accum} per step here)` : ""}, it is ${steps ? `used for ${steps} step${steps > 1 ? "s" : ""} (${where})` : "never used"}. ` +
        "Write the ends in increasing order to say how long each rate lasts",
    );
  }
  return out;
}

/**
 * A parsed schedule with a position, stepped with the optimizer step counter as A1111 steps it.
 * `at(step)` gives the rate for the optimizer step that starts with `step` steps done.
 */
export class Schedule {
  readonly entries: readonly ScheduleEntry[];
  readonly segments: readonly ScheduleSegment[];
  /** Where the schedule leaves off: for the learning rate the step training stops at (≤ Max steps). */
  readonly end: number;
  readonly warnings: readonly string[];

  /**
   * @param accumulation micro-batches per optimizer step: A1111 steps its schedules once per micro-batch,
   *   which matters only for entries whose ends are not increasing (see the module comment)
   */
  constructor(
    readonly text: string,
    maxSteps: number,
    startStep = 0,
    readonly what = "learning rate",
    accumulation = 1,
  ) {
    const p = parseSchedule(text, maxSteps, startStep, what, { accumulation });
    this.entries = p.entries;
    this.segments = p.segments;
    this.end = p.end;
    this.warnings = p.warnings;
  }

  /** The segment holding the step after `step` steps done, or -1 outside `[start, end)`. */
  segmentAt(step: number): number {
    return this.segments.findIndex((g) => step >= g.from && step < g.to);
  }

  /** Index of the entry in force after `step` optimizer steps, or -1 once the schedule is exhausted. */
  indexAt(step: number): number {
    const k = this.segmentAt(step);
    return k < 0 ? -1 : this.segments[k]!.entry;
  }

  /** True when `step` steps done reach the schedule's end. */
  exhausted(step: number): boolean {
    return step >= this.end;
  }

  /**
   * The rate for the step after `step` steps done. Past the end the last rate is kept (what the
   * clipping schedule does in A1111; the learning-rate schedule stops training there instead).
   */
  at(step: number): number {
    const k = this.segmentAt(step);
    if (k >= 0) return this.segments[k]!.rate;
    if (step < (this.segments[0]?.from ?? 0)) return this.entries[0]!.rate;
    return (this.segments[this.segments.length - 1] ?? { rate: this.entries[0]!.rate }).rate;
  }
}
