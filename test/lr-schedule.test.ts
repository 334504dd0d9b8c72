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
