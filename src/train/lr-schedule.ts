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
 * Rate r_i is used while the optimizer step counter is below end_i. When the counter reaches the
 * last end, the schedule is exhausted: a learning-rate schedule then ends training (A1111), so a last
 * entry that ends before Max steps caps training — we warn about that instead of doing it silently.
 * A schedule whose entries have all passed was a crash in A1111; here it is an error that says why.
 */

/** One schedule entry: `rate` applies while the step counter is below `end`. */
export interface ScheduleEntry {
  rate: number;
  end: number;
}

/** A parsed schedule. */
export interface ParsedSchedule {
  /** The entries still ahead of the starting step, in order. */
  entries: ScheduleEntry[];
  /** The step at which the schedule is exhausted (the last entry's end). */
  end: number;
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
 */
export function parseSchedule(schedule: string, maxSteps: number, startStep = 0, what = "learning rate"): ParsedSchedule {
  if (typeof schedule !== "string") throw new ScheduleError(what, String(schedule), "it must be a string");
  if (!Number.isSafeInteger(maxSteps) || maxSteps < 1)
    throw new Error(`${what} schedule: Max steps must be a positive integer, got ${maxSteps}`);
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
        entries.push({ rate, end: Math.min(step, maxSteps) });
        if (step > maxSteps) {
          stoppedAt = i;
          break;
        }
      } else if (step === -1) {
        entries.push({ rate, end: maxSteps });
        stoppedAt = i;
        break;
      }
      // else: an entry that ends at or before the starting step — already passed.
    } else {
      entries.push({ rate: rateOf(bits[0]!, entry), end: maxSteps });
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
  const end = entries[entries.length - 1]!.end;
  if (end < maxSteps)
    warnings.push(
      `${what} schedule ends at step ${end}, before Max steps ${maxSteps}; training will stop at step ${end} (end the last entry with :-1 to train to Max steps)`,
    );
  return { entries, end, warnings };
}

/**
 * A parsed schedule with a position, stepped with the optimizer step counter.
 * `at(step)` gives the rate for the optimizer step that starts with `step` steps done.
 */
export class Schedule {
  readonly entries: readonly ScheduleEntry[];
  readonly end: number;
  readonly warnings: readonly string[];

  constructor(
    readonly text: string,
    maxSteps: number,
    startStep = 0,
    readonly what = "learning rate",
  ) {
    const p = parseSchedule(text, maxSteps, startStep, what);
    this.entries = p.entries;
    this.end = p.end;
    this.warnings = p.warnings;
  }

  /** Index of the entry in force after `step` optimizer steps, or -1 once the schedule is exhausted. */
  indexAt(step: number): number {
    return this.entries.findIndex((e) => step < e.end);
  }

  /** True when `step` steps done reach the last entry's end. */
  exhausted(step: number): boolean {
    return this.indexAt(step) < 0;
  }

  /**
   * The rate for the step after `step` steps done. Past the end the last rate is kept (what the
   * clipping schedule does in A1111; the learning-rate schedule stops training there instead).
   */
  at(step: number): number {
    const i = this.indexAt(step);
    return (i < 0 ? this.entries[this.entries.length - 1]! : this.entries[i]!).rate;
  }
}
