/**
 * A1111's "Use old prompt editing timelines" setting (`use_old_scheduling`) through the prompt
 * schedules, txt2img and the infotext. Expectations are worked out by hand from A1111's
 * `get_learned_conditioning_prompt_schedules` (modules/prompt_parser.py, 1.6+): with the setting a
 * `when` < 1 is a fraction of the steps and anything else a step (`int(v)`), and the hires-fix
 * offsets are ignored; without it a `when` written with a dot is a fraction (minus 1.0 in the
 * hires pass) and an integer is a step (minus the first pass's steps in the hires pass). The cases
 * marked "doctest" are A1111's own doctests.
 */
import { beforeAll, describe, expect, it } from "vitest";
import type { BaseModel } from "../src/pipeline/base-model";
import { readInfotext } from "../src/pipeline/infotext-read";
import { oldSchedulingMatters, txt2img } from "../src/pipeline/txt2img";
import { type ScheduleEntry, promptSchedules } from "../src/text/prompt-schedule";
import { loadTinyModel } from "../src/tiny/model";
import { expectNoLeak, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

const g = (p: string, old: boolean, hires?: number): ScheduleEntry[] =>
  promptSchedules([p], 10, { oldScheduling: old, ...(hires !== undefined ? { hiresSteps: hires } : {}) })[0]!;

describe("promptSchedules with and without A1111's old prompt editing timelines", () => {
  it("agree where a `when` is an integer step or a fraction below 1 (doctests)", () => {
    for (const old of [false, true]) {
      expect(g("test", old)).toEqual([[10, "test"]]);
      expect(g("a [b:3]", old)).toEqual([
        [3, "a "],
        [10, "a b"],
      ]);
      expect(g("a [b : c : 1] d", old)).toEqual([
        [1, "a b  d"],
        [10, "a  c  d"],
      ]);
      expect(g("a[b:[c:d:2]:1]e", old)).toEqual([
        [1, "abe"],
        [2, "ace"],
        [10, "ade"],
      ]);
      expect(g("a [b:.5] c", old)).toEqual([
        [5, "a  c"],
        [10, "a b c"],
      ]);
    }
  });

  it("differ for a `when` ≥ 1 written with a dot: new = fraction (capped at the steps), old = step", () => {
    // new: 1.0·10 = 10 → the edit happens after the last step; old: int(1.0) = 1
    expect(g("a [b:1.0] c", false)).toEqual([[10, "a  c"]]);
    expect(g("a [b:1.0] c", true)).toEqual([
      [1, "a  c"],
      [10, "a b c"],
    ]);
    // new: min(10, int(2.5·10)) = 10; old: int(2.5) = 2
    expect(g("[x:y:2.5]", false)).toEqual([[10, "x"]]);
    expect(g("[x:y:2.5]", true)).toEqual([
      [2, "x"],
      [10, "y"],
    ]);
  });

  it("old timelines ignore the hires-fix offsets (doctests for the new ones)", () => {
    // doctest: hires 10 steps, "[b:.5]" → (0.5 − 1)·10 < 1, so b from the start
    expect(g("a [b:.5] c", false, 10)).toEqual([[10, "a b c"]]);
    // doctest: "[b:1.5]" → (1.5 − 1)·10 = 5
    expect(g("a [b:1.5] c", false, 10)).toEqual([
      [5, "a  c"],
      [10, "a b c"],
    ]);
    // old: the first pass's 10 steps, 0.5 → 5 and 1.5 → step 1
    expect(g("a [b:.5] c", true, 10)).toEqual([
      [5, "a  c"],
      [10, "a b c"],
    ]);
    expect(g("a [b:1.5] c", true, 10)).toEqual([
      [1, "a  c"],
      [10, "a b c"],
    ]);
    // an integer: new counts on from the first pass (12 − 10 = 2), old caps it at the steps
    expect(g("a [b:12] c", false, 10)).toEqual([
      [2, "a  c"],
      [10, "a b c"],
    ]);
    expect(g("a [b:12] c", true, 10)).toEqual([[10, "a  c"]]);
  });

  it("oldSchedulingMatters says when A1111 writes the infotext field", () => {
    expect(oldSchedulingMatters(["a [b:1.5] c", ""], 20)).toBe(true);
    expect(oldSchedulingMatters(["a [b:3] c", "[x:0.5]"], 20)).toBe(false);
    expect(oldSchedulingMatters(["plain", "[n:m:2.0]"], 20)).toBe(true);
  });
});

describe("txt2img's oldScheduling, its infotext field, and reading it back", () => {
  let base: BaseModel;
  beforeAll(() => {
    base = loadTinyModel();
  });
  const gen = { negativePrompt: "", steps: 3, sampler: "Euler a", cfgScale: 5, seed: 21, noiseSource: "CPU" as const };

  it("changes the conditioning only where the timelines differ, writes 'Old prompt editing timelines: True' then, and reads it back", async () => {
    // "[…:…:1.5]" over 3 steps: new → min(3, int(4.5)) = 3, no switch; old → step 1, a switch
    const prompt = "a [cyan circle:red square:1.5] on the left";
    const now = await txt2img(base, { ...gen, prompt });
    const old = await expectNoLeak(() => txt2img(base, { ...gen, prompt, oldScheduling: true }));
    expect(old.pixels).not.toEqual(now.pixels);
    expect(now.infotexts[0]).not.toMatch(/Old prompt editing timelines/);
    expect(old.infotexts[0]).toMatch(/, Old prompt editing timelines: True$/);
    // reading the infotext back turns the setting on again and remakes the image
    const read = readInfotext(old.infotexts[0]!, { base });
    expect(read.oldScheduling).toBe(true);
    expect(read.cannotHonour).toEqual([]);
    const again = await txt2img(base, read);
    expect(again.pixels).toEqual(old.pixels);
    expect(again.infotexts[0]).toBe(old.infotexts[0]);
  }, 120_000);

  it("with the setting on but no difference in the timelines, nothing changes and no field is written", async () => {
    const prompt = "a [cyan circle:red square:2] on the left";
    const now = await txt2img(base, { ...gen, prompt });
    const old = await txt2img(base, { ...gen, prompt, oldScheduling: true });
    expect(old.pixels).toEqual(now.pixels);
    expect(old.infotexts[0]).toBe(now.infotexts[0]);
    expect(old.infotexts[0]).not.toMatch(/Old prompt editing timelines/);
  }, 120_000);
});
