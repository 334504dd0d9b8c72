/**
 * A1111's prompt editing, alternation and AND inside generation (prompt-conditioning.ts and
 * sample.ts `promptSyntax`), on a toy ε-model whose context is one number per text, so every model
 * call's conditioning can be read back. Expectations are worked out by hand from A1111's
 * `CFGDenoiser.forward` (its `step` counts model calls from 0; `reconstruct_cond_batch` takes the
 * first schedule entry with step ≤ end_at_step) and `combine_denoised` (u + cfg·Σ w_i·(c_i − u)).
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../src/diffusion/random";
import { samplerByName } from "../src/diffusion/sampler-names";
import type { BaseModel } from "../src/pipeline/base-model";
import { PromptConditioning, a1111ScheduleSteps, combineMulticond } from "../src/pipeline/prompt-conditioning";
import { sampleImages } from "../src/pipeline/sample";
import { txt2img } from "../src/pipeline/txt2img";
import { loadTinyModel } from "../src/tiny/model";
import { promptSchedules } from "../src/text/prompt-schedule";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

/** Each text's context value (one token, one channel). */
const CODE: Record<string, number> = { "": 0, red: 1, blue: 2, a: 3, b: 4, neg: 5, "a cat": 6 };
const code = (t: string): number => {
  const v = CODE[t.trim()];
  if (v === undefined) throw new Error(`toy encoder: no code for ${JSON.stringify(t)}`);
  return v;
};
const encode = (texts: string[]): tf.Tensor3D => tf.tensor3d(texts.map(code), [texts.length, 1, 1]);

/** ε(x, c) = 0.5·x + c: linear in x, one value per conditioning. Records the context rows of every call. */
function toyBase(): { base: BaseModel; calls: number[][] } {
  const calls: number[][] = [];
  const base = {
    imageSize: 2,
    downscale: 1,
    channels: 1,
    unet: {
      forward(x: tf.Tensor4D, _t: number[], ctx: tf.Tensor3D): tf.Tensor4D {
        calls.push(Array.from(ctx.dataSync()));
        return tf.tidy(() => tf.add(tf.mul(x, 0.5), ctx.reshape([-1, 1, 1, 1])));
      },
    },
    encodeText: encode,
    decode: (x: tf.Tensor4D) => x.clone(),
  } as unknown as BaseModel;
  return { base, calls };
}

const run = (base: BaseModel, prompt: string, sampler: string, steps: number, extra: { negativePrompt?: string; cfgScale?: number } = {}) =>
  sampleImages(base, {
    prompts: [prompt],
    sampler,
    steps,
    seed: 7,
    cfgScale: extra.cfgScale ?? 7,
    negativePrompt: extra.negativePrompt ?? "",
    promptSyntax: { encode },
  });

describe("prompt editing and alternation switch the conditioning per model call, as A1111", () => {
  it("[red:blue:0.5] over 10 Euler steps: red for calls 0–5 (A1111's step ≤ 5), blue for 6–9; the uncond every call", async () => {
    const { base, calls } = toyBase();
    await expectNoLeak(() => run(base, "[red:blue:0.5]", "Euler", 10));
    // Each call: [cond, uncond] rows in one UNet call.
    expect(calls.map((c) => c.length)).toEqual(new Array(10).fill(2));
    expect(calls.map((c) => c[0])).toEqual([1, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
    expect(calls.map((c) => c[1])).toEqual(new Array(10).fill(0));
  });

  it("Heun: A1111 schedules over 2·steps (second_order) and counts model calls, not sampler steps", async () => {
    const { base, calls } = toyBase();
    await expectNoLeak(() => run(base, "[red:blue:0.5]", "Heun", 10));
    // Schedule over 20: red up to step 10. 9 steps of two evaluations and a last Euler step into
    // σ = 0 make 19 calls; calls 0–10 (A1111's step ≤ 10) are red, 11–18 blue.
    expect(calls.length).toBe(19);
    expect(calls.map((c) => c[0])).toEqual([...new Array(11).fill(1), ...new Array(8).fill(2)]);
    expect(a1111ScheduleSteps("DPM++ 2M Karras", 10)).toBe(10);
    expect(a1111ScheduleSteps("k_dpmpp_2s_a", 10)).toBe(20);
  });

  it("[a|b] alternates: a, a, b, a over 4 steps (schedule ends 1, 2, 3, 4 against the 0-based counter)", async () => {
    const { base, calls } = toyBase();
    await expectNoLeak(() => run(base, "[a|b]", "Euler", 4));
    expect(calls.map((c) => c[0])).toEqual([3, 3, 4, 3]);
  });

  it("the negative prompt is scheduled too: [neg::2] is dropped after call 2", async () => {
    const { base, calls } = toyBase();
    await expectNoLeak(() => run(base, "a", "Euler", 5, { negativePrompt: "[neg::2]" }));
    expect(calls.map((c) => c[1])).toEqual([5, 5, 5, 0, 0]);
    expect(calls.map((c) => c[0])).toEqual([3, 3, 3, 3, 3]);
  });

  it("each distinct schedule text is encoded once, in one batch per schedule", () => {
    const seen: string[][] = [];
    const spy = (texts: string[]): tf.Tensor3D => {
      seen.push(texts);
      return encode(texts);
    };
    const pc = PromptConditioning.build({ prompts: ["[a|b]", "[a|b]"], negativePrompt: "", steps: 6, encode: spy });
    try {
      expect(seen).toEqual([["a", "b"], [""], [""]]);
      // Same selection at calls 0 and 3 (both "a"): the cached stack is returned.
      expect(pc.at(0)).toBe(pc.at(3));
    } finally {
      pc.dispose();
    }
  });
});

describe("AND (composable diffusion) with weights", () => {
  it("combineMulticond: u + cfg·Σ w_i·(c_i − u), by hand", () => {
    const out = tf.tensor4d([1, 3, 10, 0.5, 2], [5, 1, 1, 1]); // cond rows: c_a = 1, c_b = 3 (image 0), c = 10 (image 1); uncond 0.5, 2
    const got = tf.tidy(() =>
      combineMulticond(
        out,
        [
          [
            [0, 1],
            [1, 0.5],
          ],
          [[2, 2]],
        ],
        7,
      ).dataSync(),
    );
    // image 0: 0.5 + 7·((1 − 0.5) + 0.5·(3 − 0.5)) = 12.75; image 1: 2 + 7·2·(10 − 2) = 114
    expectClose(got, [12.75, 114], 1e-6);
    out.dispose();
  });

  it("`a AND b:0.5` at cfg 7 equals the sampler run with u + 7·((c_a − u) + 0.5·(c_b − u)) computed by hand", async () => {
    const { base, calls } = toyBase();
    const got = await expectNoLeak(() => run(base, "a AND b:0.5", "Euler a", 4, { negativePrompt: "neg" }));
    // One UNet call per step with rows [a, b, uncond].
    expect(calls).toEqual(new Array(4).fill([3, 4, 5]));
    // The same run with a denoiser written out: ε = 0.5·x + c, so
    // ε_u + 7·((ε_a − ε_u) + 0.5·(ε_b − ε_u)) = 0.5·x + 5 + 7·((3 − 5) + 0.5·(4 − 5)) = 0.5·x − 12.5.
    const sampler = samplerByName("Euler a", { steps: 4 });
    const want = await sampler.sample({
      denoiser: (x) => tf.tidy(() => tf.add(tf.mul(x, 0.5), -12.5)),
      shape: [1, 2, 2, 1],
      cond: tf.zeros([1, 1, 1]),
      guidanceScale: 1,
      rng: new Rng(7),
    });
    expectClose(got.pixels.slice(0, 4), want.dataSync(), 1e-5, 1e-6); // the toy decodes to one channel
    want.dispose();
  });

  it("a weight alone (`a:0.5`, no AND) is a composable weight too, and AND works with cfg 1", async () => {
    const { base, calls } = toyBase();
    const got = await expectNoLeak(() => run(base, "a:0.5", "Euler", 3, { cfgScale: 1 }));
    expect(calls).toEqual(new Array(3).fill([3, 0]));
    // ε = 0.5·x + 0 + 1·0.5·(3 − 0) = 0.5·x + 1.5
    const want = await samplerByName("Euler", { steps: 3 }).sample({
      denoiser: (x) => tf.tidy(() => tf.add(tf.mul(x, 0.5), 1.5)),
      shape: [1, 2, 2, 1],
      cond: tf.zeros([1, 1, 1]),
      guidanceScale: 1,
      rng: new Rng(7),
    });
    expectClose(got.pixels.slice(0, 4), want.dataSync(), 1e-5, 1e-6); // the toy decodes to one channel
    want.dispose();
  });
});

describe("a plain prompt keeps the plain path", () => {
  it("bit-identical with and without promptSyntax, one encoder call and [cond, uncond] per model call", async () => {
    const a = toyBase();
    const b = toyBase();
    const withSyntax = await expectNoLeak(() => run(a.base, "a cat", "DPM++ 2M", 5, { negativePrompt: "neg" }));
    const plain = await sampleImages(b.base, {
      prompts: ["a cat"],
      sampler: "DPM++ 2M",
      steps: 5,
      seed: 7,
      cfgScale: 7,
      negativePrompt: "neg",
    });
    expect(Array.from(withSyntax.pixels)).toEqual(Array.from(plain.pixels));
    expect(a.calls).toEqual(b.calls);
    expect(PromptConditioning.needed(["a cat"], "neg", 5)).toBe(false);
    expect(PromptConditioning.needed(["a cat"], "[neg|x]", 5)).toBe(true);
    expect(PromptConditioning.needed(["a AND b"], "", 5)).toBe(true);
  });
});

describe("an edit that never switches within the run encodes the text A1111 resolves it to", () => {
  interface Case {
    prompt: string;
    steps: number;
    hires: number | null;
    old: boolean;
    result?: [number, string][];
  }
  // get_learned_conditioning_prompt_schedules answers (test/scripts/make_a1111_prompt_fixtures.py)
  const FX = JSON.parse(fs.readFileSync(fixture("a1111-prompts.json"), "utf8")) as { schedules: Case[] };
  const oneText = FX.schedules.filter(
    (c) => c.hires === null && !c.old && c.result?.length === 1 && c.result[0]![1] !== c.prompt && !/\bAND\b/.test(c.prompt),
  );

  it(`needed() is true for the ${oneText.length} A1111 cases whose one schedule entry is not the prompt ([a:b:10] over 10 steps → "a")`, () => {
    expect(oneText.map((c) => c.prompt)).toEqual(expect.arrayContaining(["[a:b:10]", "[a:b:0]", "[a:b:100]", "[a:b:3.]"]));
    for (const c of oneText) {
      expect(promptSchedules([c.prompt], c.steps)[0], c.prompt).toEqual(c.result);
      expect(PromptConditioning.needed([c.prompt], "", c.steps), c.prompt).toBe(true);
      expect(PromptConditioning.needed(["a"], c.prompt, c.steps), `negative ${c.prompt}`).toBe(true);
    }
    // a written-out weight of 1 is a sub-prompt too: A1111 encodes "a", not "a:1"
    expect(PromptConditioning.needed(["a:1"], "", 5)).toBe(true);
    // [a:b:1.5] over 3 steps: "1.5" has a point, so a fraction of the steps: 4.5 → min(3, 4) = 3, never switches
    expect(promptSchedules(["[a:b:1.5]"], 3)[0]).toEqual([[3, "a"]]);
    expect(PromptConditioning.needed(["[a:b:1.5]"], "", 3)).toBe(true);
  });

  it("sampling encodes only the resolved texts, never the bracket text, and gives the plain prompt's image", async () => {
    for (const [prompt, steps, negative, resolved] of [
      ["[a:b:1.5]", 3, "", "a"],
      ["[a:b:20]", 10, "", "a"],
      ["red", 4, "[neg:b:9]", "neg"],
      ["a:1", 4, "", "a"],
    ] as const) {
      const seen: string[] = [];
      const recording = (texts: string[]): tf.Tensor3D => {
        seen.push(...texts);
        return encode(texts);
      };
      const { base, calls } = toyBase();
      await expectNoLeak(() =>
        sampleImages(base, {
          prompts: [prompt],
          sampler: "Euler",
          steps,
          seed: 7,
          cfgScale: 7,
          negativePrompt: negative,
          promptSyntax: { encode: recording },
        }),
      );
      expect(seen, prompt).not.toContain(negative === "" ? prompt : negative);
      expect(seen, prompt).toContain(resolved);
      // every model call conditions on the resolved texts: the plain run of the resolved prompts
      const plain = toyBase();
      const [p, n] = negative === "" ? [resolved, ""] : [prompt, resolved];
      await sampleImages(plain.base, { prompts: [p], sampler: "Euler", steps, seed: 7, cfgScale: 7, negativePrompt: n });
      expect(calls, prompt).toEqual(plain.calls);
    }
  });
});

describe("txt2img on the tiny model", () => {
  it("a schedule, an alternation or an AND that amount to the plain prompt give its image; a real edit changes it; no tensors left", async () => {
    const base = loadTinyModel();
    try {
      const gen = { steps: 3, seed: 11, cfgScale: 4, sampler: "Euler a", negativePrompt: "blurry" } as const;
      const plain = await txt2img(base, { ...gen, prompt: "a red circle" });
      for (const prompt of ["[a red circle:a red circle:0.5]", "[a red circle|a red circle]", "a red circle:0.5 AND a red circle:0.5"]) {
        const r = await expectNoLeak(() => txt2img(base, { ...gen, prompt }));
        expectClose(r.pixels, plain.pixels, 1e-5);
        expect(r.infotexts[0]!.split("\n")[0]).toBe(prompt);
      }
      const edited = await expectNoLeak(() => txt2img(base, { ...gen, prompt: "[a red circle:two blue squares:1]" }));
      expect(Array.from(edited.pixels)).not.toEqual(Array.from(plain.pixels));
    } finally {
      base.dispose();
    }
  });
});
