/**
 * A1111's schedule strings (spec §4.3): the documented examples, Python int/float parsing rules,
 * resume skipping, and clear errors where A1111 crashed or accepted nonsense.
 */
import { describe, expect, it } from "vitest";
import { Schedule, ScheduleError, parseSchedule } from "../src/train/lr-schedule";

const pairs = (s: string, max: number, cur = 0): Array<[number, number]> => parseSchedule(s, max, cur).entries.map((e) => [e.rate, e.end]);

describe("parseSchedule: A1111 cases (spec §4.3)", () => {
  const table: Array<[string, number, number, Array<[number, number]>]> = [
    [
      "5e-5:100, 5e-6:1500, 5e-7:10000, 5e-8:-1",
      20000,
      0,
      [
        [5e-5, 100],
        [5e-6, 1500],
        [5e-7, 10000],
        [5e-8, 20000],
      ],
    ],
    [
      "5e-5:100, 5e-6:1500, 5e-7:10000, 5e-8:-1",
      20000,
      500,
      [
        [5e-6, 1500],
        [5e-7, 10000],
        [5e-8, 20000],
      ],
    ],
    ["0.001, 1e-4:500", 20000, 0, [[0.001, 20000]]],
    ["1e-5:100", 1000, 0, [[1e-5, 100]]],
    ["0.00001", 100000, 0, [[1e-5, 100000]]],
    // a step beyond Max steps is capped and ends parsing
    [
      "1e-3:50, 1e-4:5000, 1e-5:9000",
      1000,
      0,
      [
        [1e-3, 50],
        [1e-4, 1000],
      ],
    ],
    // whitespace around numbers (Python int/float tolerate it), blank entries skipped
    [
      "  2e-5 :  10 ,, 1e-6: -1 ",
      30,
      0,
      [
        [2e-5, 10],
        [1e-6, 30],
      ],
    ],
    // an entry ending exactly at the current step is passed
    ["1e-3:100, 1e-4:200", 300, 100, [[1e-4, 200]]],
    // -1 ends parsing even mid-list
    ["1e-3:-1, 1e-4:200", 300, 0, [[1e-3, 300]]],
    // three parts behave like a bare rate (A1111: len(tmp) != 2)
    ["1e-3:10:20", 300, 0, [[1e-3, 300]]],
    // Python numeric spellings
    ["1_0e-4:1_000", 5000, 0, [[1e-3, 1000]]],
    [
      ".5e-3:+20, 5.:-1",
      40,
      0,
      [
        [5e-4, 20],
        [5, 40],
      ],
    ],
  ];
  it.each(table)("%s (max %i, at %i)", (s, max, cur, want) => {
    expect(pairs(s, max, cur)).toEqual(want);
  });

  it("warns when the last entry stops training before Max steps, and about ignored entries", () => {
    expect(parseSchedule("1e-5:100", 1000).warnings.join(" ")).toMatch(/ends at step 100, before Max steps 1000/);
    expect(parseSchedule("0.001, 1e-4:500", 2000).warnings.join(" ")).toMatch(/ignored \(1e-4:500\)/);
    expect(parseSchedule("1e-5:-1", 1000).warnings).toEqual([]);
  });

  it("rejects malformed strings with a message saying what to write", () => {
    for (const bad of ["", " , ", "abc", "1e-5:1e3", "1e-5:100.0", "1e-5:", ":100", "1e-5:10x", "nan", "-1e-5", "inf:100", "1e-5;100"]) {
      expect(() => parseSchedule(bad, 1000), bad).toThrow(ScheduleError);
    }
    expect(() => parseSchedule("1e-5:1e3", 1000)).toThrow(/not a whole number \(write 1000, not 1e3/);
    expect(() => parseSchedule("abc", 1000)).toThrow(/"abc" in entry "abc" is not a number.*RATE:STEP/);
  });

  it("a schedule whose entries have all passed is a clear error, not a crash", () => {
    expect(() => parseSchedule("1e-4:100, 1e-5:200", 1000, 500)).toThrow(/every entry ends at or before step 500/);
  });

  it("Schedule.at steps through the entries with the optimizer step counter", () => {
    const s = new Schedule("1e-3:2, 1e-4:4, 1e-5:-1", 6);
    expect([0, 1, 2, 3, 4, 5].map((k) => s.at(k))).toEqual([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]);
    expect(s.exhausted(5)).toBe(false);
    expect(s.exhausted(6)).toBe(true);
    expect(s.at(6)).toBe(1e-5); // clipping keeps its last value after the end
    const capped = new Schedule("1e-5:3", 10);
    expect(capped.exhausted(3)).toBe(true);
  });
});

/**
 * A1111's loop, transliterated step for step (modules/textual_inversion/learn_schedule.py and the
 * hypernetwork training loop): a scheduler holding the current (rate, end) pair, `apply(step)`
 * before every micro-batch, stop as soon as it is finished; the optimizer uses the rate set by the
 * last `apply` before it. Returns the rate of each optimizer step and the step training stops at.
 * Independent of lr-schedule.ts (it walks every micro-batch instead of computing segments); Max
 * steps caps it as the trainer does.
 */
function a1111Loop(entries: Array<[number, number]>, start: number, max: number, accum: number): { rates: number[]; stop: number } {
  let it = 0;
  let [rate, end] = entries[it++]!;
  let finished = false;
  const rates: number[] = [];
  let step = start;
  outer: while (step < max) {
    for (let j = 0; j < accum; j++) {
      // LearnRateScheduler.step(step_number)
      if (step >= end) {
        if (it < entries.length) [rate, end] = entries[it++]!;
        else finished = true;
      }
      if (finished) break outer;
    }
    rates.push(rate);
    step += 1;
  }
  return { rates, stop: step };
}

describe("non-increasing schedules mean what they mean in A1111 (issue 23, bug 3)", () => {
  it('"1e-3:500, 1e-4:200": 1e-4 for one step, training stops at 501 (at 500 with 2 micro-batches)', () => {
    const p = parseSchedule("1e-3:500, 1e-4:200", 1000);
    expect(p.segments).toEqual([
      { from: 0, to: 500, rate: 1e-3, entry: 0 },
      { from: 500, to: 501, rate: 1e-4, entry: 1 },
    ]);
    expect(p.end).toBe(501);
    const w = p.warnings.join("\n");
    expect(w).toMatch(/training will stop at step 501/);
    expect(w).not.toMatch(/step 200;|stop at step 200/);
    expect(w).toMatch(/"1e-4:200" ends at step 200, not after the entries before it \(step 500\).*used for 1 step \(step 501\)/);

    const p2 = parseSchedule("1e-3:500, 1e-4:200", 1000, 0, "learning rate", { accumulation: 2 });
    expect(p2.segments).toEqual([{ from: 0, to: 500, rate: 1e-3, entry: 0 }]);
    expect(p2.end).toBe(500);
    expect(p2.warnings.join("\n")).toMatch(/never used[\s\S]*training will stop at step 500/);
  });

  it("a chain of out-of-order entries: each lasts one step (one per micro-batch), then the -1 entry runs to Max", () => {
    const s = "1e-3:500, 1e-4:200, 1e-5:100, 1e-6:-1";
    const one = new Schedule(s, 1000);
    expect(one.segments.map((g) => [g.rate, g.from, g.to])).toEqual([
      [1e-3, 0, 500],
      [1e-4, 500, 501],
      [1e-5, 501, 502],
      [1e-6, 502, 1000],
    ]);
    expect(one.end).toBe(1000);
    expect(one.warnings.join("\n")).not.toMatch(/training will stop/);
    const two = new Schedule(s, 1000, 0, "learning rate", 2);
    expect(two.segments.map((g) => [g.rate, g.from, g.to])).toEqual([
      [1e-3, 0, 500],
      [1e-5, 500, 501],
      [1e-6, 501, 1000],
    ]);
    // an entry ending after the one before it, but entered late, also lasts one step
    const late = new Schedule("1e-3:10, 1e-4:5, 1e-5:8", 20);
    expect(late.segments.map((g) => [g.rate, g.from, g.to])).toEqual([
      [1e-3, 0, 10],
      [1e-4, 10, 11],
      [1e-5, 11, 12],
    ]);
    expect(late.end).toBe(12);
    expect(late.warnings.join("\n")).toMatch(/"1e-5:8" ends at step 8, not after the entries before it \(step 10\)/);
  });

  it("matches the transliterated A1111 loop on random schedules, starts and accumulations", () => {
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    for (let trial = 0; trial < 400; trial++) {
      const max = 5 + rnd(40);
      const n = 1 + rnd(5);
      const parts: string[] = [];
      for (let i = 0; i < n; i++) {
        const end = rnd(7) === 0 ? -1 : rnd(max + 10);
        parts.push(`${(i + 1) * 1e-3}:${end}`);
      }
      if (rnd(4) === 0) parts.push(`${9e-3}`);
      const text = parts.join(", ");
      const start = rnd(3) === 0 ? rnd(max) : 0;
      const accum = 1 + rnd(3);
      let sched: Schedule;
      try {
        sched = new Schedule(text, max, start, "learning rate", accum);
      } catch {
        continue; // all entries passed: A1111 crashes there, we refuse with an error (tested above)
      }
      const ref = a1111Loop(
        sched.entries.map((e) => [e.rate, e.end]),
        start,
        max,
        accum,
      );
      const ours: number[] = [];
      for (let s = start; s < sched.end; s++) ours.push(sched.at(s));
      expect({ text, start, accum, stop: sched.end, rates: ours }).toEqual({ text, start, accum, stop: ref.stop, rates: ref.rates });
    }
  });

  it("the clipping schedule keeps its last value and never stops anything", () => {
    const c = new Schedule("0.5:3, 0.1:2", 10, 0, "gradient clipping");
    expect([0, 1, 2, 3, 4, 5, 9].map((k) => c.at(k))).toEqual([0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1]);
    expect(c.end).toBe(10);
    expect(c.warnings.join("\n")).not.toMatch(/training will stop/);
  });
});
