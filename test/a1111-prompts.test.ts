/**
 * A1111 prompt syntax against the real thing: test/fixtures/a1111-prompts.json holds what A1111's own
 * prompt_parser.py / tokenize_line / EmphasisOriginal returned (imported from an A1111 checkout by
 * test/scripts/make_a1111_prompt_fixtures.py --a1111 DIR, with lark 1.1.5 and PyTorch 1.13).
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { ClipTextModel, tinyClipTextConfig } from "../src/text/clip";
import { parsePromptAttention } from "../src/text/prompt-attention";
import { encodePrompts } from "../src/text/encode-prompts";
import { applyEmphasis, applyEmphasisTensor, chunkBatch, emptyChunk, tokenizeLine, type ChunkOptions } from "../src/text/prompt-chunks";
import { multicondPromptList, promptSchedules, scheduleIndexAt, type ScheduleEntry } from "../src/text/prompt-schedule";
import { SimpleTokenizer } from "../src/text/tokenizer";
import { expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

type Pairs = [string, number][];
interface ScheduleCase {
  prompt: string;
  steps: number;
  hires: number | null;
  old: boolean;
  result?: ScheduleEntry[];
  results?: ScheduleEntry[][];
  error?: string;
}
interface ChunkCase {
  line: string;
  emphasis?: "None";
  backtrack?: number;
  tokenCount: number;
  chunks: { tokens: number[]; multipliers: number[]; fixes: [number, string][] }[];
}
const FX = JSON.parse(fs.readFileSync(fixture("a1111-prompts.json"), "utf8")) as {
  attention: { text: string; result?: Pairs; error?: string }[];
  schedules: ScheduleCase[];
  multicond: { prompts: string[]; result: [[number, number][][], string[]] }[];
  chunks: ChunkCase[];
  emphasis: { lines: string[]; chunks: { multipliers: number[][]; z: string; result: string }[] };
  fuzz: { prompt: string; attention: Pairs | null; attentionError?: string; multicond: [[number, number][][], string[]] }[];
};

function f32(b64: string): Float32Array {
  const bytes = Buffer.from(b64, "base64");
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

describe("parsePromptAttention = A1111 parse_prompt_attention", () => {
  it(`gives A1111's runs and weights for ${FX.attention.length} tricky prompts (escapes, nesting, unbalanced, BREAK, Unicode)`, () => {
    for (const c of FX.attention) {
      if (c.error) expect(() => parsePromptAttention(c.text), JSON.stringify(c.text)).toThrow(/is not a number/);
      else expect(parsePromptAttention(c.text), JSON.stringify(c.text)).toEqual(c.result);
    }
  });

  it(`agrees on ${FX.fuzz.length} random prompts built from the syntax and mangled`, () => {
    for (const c of FX.fuzz) {
      if (c.attentionError) expect(() => parsePromptAttention(c.prompt)).toThrow();
      else expect(parsePromptAttention(c.prompt), JSON.stringify(c.prompt)).toEqual(c.attention);
    }
  });

  it("hand-checked: weights multiply, BREAK inside brackets is text", () => {
    expect(parsePromptAttention("a ((b)) [c] (d:1.5)")).toEqual([
      ["a ", 1],
      ["b", 1.1 * 1.1],
      [" ", 1],
      ["c", 1 / 1.1],
      [" ", 1],
      ["d", 1.5],
    ]);
    expect(parsePromptAttention("(x BREAK y)")[1]).toEqual(["BREAK", -1.1]);
  });
});

describe("promptSchedules = A1111 get_learned_conditioning_prompt_schedules", () => {
  const ambiguous = FX.schedules.filter((c) => c.results).length;
  it(`matches A1111 on ${FX.schedules.length} prompts (edits, alternation, nesting, hires-fix steps, bad input)`, () => {
    for (const c of FX.schedules) {
      const run = (): ScheduleEntry[] =>
        promptSchedules([c.prompt], c.steps, { hiresSteps: c.hires ?? undefined, oldScheduling: c.old })[0]!;
      const what = `${JSON.stringify(c.prompt)} at ${c.steps} steps`;
      if (c.error) expect(run, what).toThrow(/out of range/);
      else if (c.result) expect(run(), what).toEqual(c.result);
      else
        expect(
          c.results!.map((r) => JSON.stringify(r)),
          what,
        ).toContain(JSON.stringify(run()));
    }
    // Where lark's Earley parser resolves an ambiguity by Python's hash seed, A1111 itself answers
    // differently from one start to the next; the fixture lists every reading the grammar allows.
    expect(ambiguous).toBeGreaterThan(0);
  });

  it("reproduces the example in A1111's source comment", () => {
    const [s] = promptSchedules(
      [
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]",
      ],
      100,
    );
    expect(s!.map((e) => e[0])).toEqual([25, 50, 60, 75, 100]);
    expect(s![0]![1]).toBe("fantasy landscape with a mountain and an oak in foreground shoddy");
    expect(s![4]![1]).toBe("fantasy landscape with a lake and a christmas tree in background masterful");
  });

  it("scheduleIndexAt follows A1111's 0-based step counter", () => {
    const [s] = promptSchedules(["[a:b:3]"], 10);
    expect([0, 1, 2, 3, 4, 9].map((t) => s![scheduleIndexAt(s!, t)]![1])).toEqual(["a", "a", "a", "a", "b", "b"]);
    const [alt] = promptSchedules(["[x|y]"], 4);
    expect([0, 1, 2, 3].map((t) => alt![scheduleIndexAt(alt!, t)]![1])).toEqual(["x", "x", "y", "x"]);
  });

  it("refuses bad step counts", () => {
    expect(() => promptSchedules(["a"], 0)).toThrow(/positive integer/);
    expect(() => promptSchedules(["a"], 10, { hiresSteps: 1.5 })).toThrow(/hiresSteps/);
  });
});

describe("multicondPromptList = A1111 get_multicond_prompt_list", () => {
  it("splits at AND with :weights exactly as A1111 (fixture and fuzz prompts)", () => {
    for (const c of FX.multicond) {
      const r = multicondPromptList(c.prompts);
      expect([r.indexes, r.texts], JSON.stringify(c.prompts)).toEqual(c.result);
    }
    for (const c of FX.fuzz) {
      const r = multicondPromptList([c.prompt]);
      expect([r.indexes, r.texts], JSON.stringify(c.prompt)).toEqual(c.multicond);
    }
  });
});

// The toy tokenizer the fixture script used: lower-case words, digits and single punctuation marks.
const toyId = (w: string): number => 1000 + ([...w].reduce((s, ch, i) => s + (i + 1) * ch.codePointAt(0)!, 0) % 30000);
const toyTokenize = (t: string): number[] => (t.toLowerCase().match(/[a-z0-9]+|[^a-z0-9\s]/g) ?? []).map(toyId);
const EMB: [number[], string, number][] = [
  [[toyId("two"), toyId("words")], "two words", 4],
  [[toyId("emb")], "emb", 3],
];
const toyOpts: ChunkOptions<string> = {
  tokenize: toyTokenize,
  bosId: 49406,
  eosId: 49407,
  commaId: toyId(","),
  findEmbedding: (tokens, pos) => {
    for (const [ids, name, vectors] of EMB)
      if (ids.every((id, k) => tokens[pos + k] === id)) return { embedding: name, vectors, length: ids.length };
    return undefined;
  },
};

describe("tokenizeLine = A1111 tokenize_line", () => {
  it(`chunks ${FX.chunks.length} prompts as A1111 (75-token chunks, comma backtrack, BREAK, weights, embeddings)`, () => {
    for (const c of FX.chunks) {
      const got = tokenizeLine(c.line, { ...toyOpts, emphasis: c.emphasis, commaBacktrack: c.backtrack });
      const what = JSON.stringify(c.line.slice(0, 60));
      expect(got.tokenCount, what).toBe(c.tokenCount);
      expect(
        got.chunks.map((ch) => ({ tokens: ch.tokens, multipliers: ch.multipliers, fixes: ch.fixes.map((f) => [f.offset, f.embedding]) })),
        what,
      ).toEqual(c.chunks);
    }
  });

  it("chunkBatch pads every prompt to the longest one's chunk count with empty chunks", () => {
    const long = Array.from({ length: 80 }, (_, i) => `w${i}`).join(" ");
    const { chunks, tokenCount } = chunkBatch(["short", long], toyOpts);
    expect(chunks.map((c) => c.length)).toEqual([2, 2]);
    expect(chunks[0]![1]).toEqual(emptyChunk(toyOpts));
    expect(tokenCount).toBe(80);
  });
});

describe("emphasis = A1111 EmphasisOriginal", () => {
  it("matches torch on random CLIP outputs, as arrays and as tensors, without leaking", async () => {
    for (const ch of FX.emphasis.chunks) {
      const z = f32(ch.z);
      const want = f32(ch.result);
      const got = applyEmphasis(z, [2, 77, 8], ch.multipliers);
      got.forEach((v, i) => expect(Math.abs(v - want[i]!)).toBeLessThan(2e-6 * Math.max(1, Math.abs(want[i]!))));
      const t = await expectNoLeak(() => {
        const zt = tf.tensor3d(z, [2, 77, 8]);
        const out = applyEmphasisTensor(zt, ch.multipliers);
        const data = out.dataSync() as Float32Array;
        tf.dispose([zt, out]);
        return data;
      });
      t.forEach((v, i) => expect(Math.abs(v - want[i]!)).toBeLessThan(2e-6 * Math.max(1, Math.abs(want[i]!))));
    }
  });

  it("hand case: weights scale each token, then the chunk's mean is restored; other modes", () => {
    const z = new Float32Array([1, 3, 2, 2]); // [1, 2, 2]: token means 2 and 2, overall 2
    const out = applyEmphasis(z, [1, 2, 2], [[2, 1]]); // weighted [2, 6, 2, 2], mean 3 → × 2/3
    expect(Array.from(out)).toEqual([2, 6, 2, 2].map((v) => Math.fround(v * Math.fround(2 / 3))));
    expect(Array.from(applyEmphasis(z, [1, 2, 2], [[2, 1]], "No norm"))).toEqual([2, 6, 2, 2]);
    expect(Array.from(applyEmphasis(z, [1, 2, 2], [[2, 1]], "Ignore"))).toEqual([1, 3, 2, 2]);
    expect(() => applyEmphasis(z, [1, 2, 2], [[2]])).toThrow(/2 weights/);
  });
});

describe("encodePrompts (the whole A1111 text path on this project's CLIP)", () => {
  const words = ["a", "cat", "dog", "red", ","];
  it("equals the plain encoder without emphasis syntax, and weights change only what they should", async () => {
    const tok = new SimpleTokenizer(words, { maxLength: 8 });
    const model = new ClipTextModel(tinyClipTextConfig({ maxPositions: 8, vocabSize: tok.vocabSize }));
    await expectNoLeak(() => {
      const plain = encodePrompts(model, tok, ["a red cat"]);
      const ref = model.encode(tok.encode(["a red cat"]).ids);
      expect(Array.from(plain.context.dataSync())).toEqual(Array.from(ref.dataSync()));
      // (cat:1.5): same tokens, so the same ids; the output differs and keeps its mean.
      const weighted = encodePrompts(model, tok, ["a red (cat:1.5)"]);
      expect(weighted.chunks[0]![0]!.multipliers.slice(0, 5)).toEqual([1, 1, 1, 1.5, 1]);
      expect(Array.from(weighted.context.dataSync())).not.toEqual(Array.from(ref.dataSync()));
      const mean = (t: tf.Tensor): number => tf.tidy(() => tf.mean(t).dataSync()[0]!);
      expect(mean(weighted.context)).toBeCloseTo(mean(ref), 5);
      // BREAK and more than 6 tokens (this toy window is 8) give two windows.
      const two = encodePrompts(model, tok, ["a cat BREAK dog", "a"], { emphasisScope: "batch" });
      expect(two.context.shape).toEqual([2, 16, 32]);
      expect(two.chunks[0]!.map((c) => c.tokens)).toEqual([
        [1, 4, 5, 2, 2, 2, 2, 2],
        [1, 6, 2, 2, 2, 2, 2, 2],
      ]);
      tf.dispose([plain.context, ref, weighted.context, two.context]);
    });
    model.dispose();
  });
});
