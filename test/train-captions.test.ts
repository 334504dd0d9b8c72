/**
 * Training captions through A1111's prompt front end (captions.ts): the default reads emphasis in
 * a caption as A1111's training does (its hijacked CLIP parses `(word:1.2)`), "literal" keeps the
 * characters. The emphasised context is checked against A1111's EmphasisOriginal worked out by hand
 * on the toy text encoder (scale the word's vector, restore the mean), and the trainer's feed is
 * checked to hand the UNet the context of the chosen syntax. No leaks.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BaseModel } from "../src/pipeline/base-model";
import { encodePrompts } from "../src/text/encode-prompts";
import { loadTinyModel } from "../src/tiny/model";
import { captionEncoder, resolveCaptionSyntax } from "../src/train/captions";
import { TrainingFeed } from "../src/train/feed";
import { stackConds } from "../src/train/loss";
import { resolveRunConfig } from "../src/train/options";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { captureModel } from "./helpers/train-capture";
import { makeToyBase, makeToyDataset, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

let base: BaseModel;
let tmp: string;
beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "captions-"));
});
afterAll(() => {
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe("caption syntax", () => {
  it("defaults to A1111's behaviour and names the choices on a bad value", () => {
    expect(resolveCaptionSyntax(undefined)).toBe("a1111");
    expect(resolveCaptionSyntax("literal")).toBe("literal");
    expect(() => resolveCaptionSyntax("emphasis")).toThrow(/captionSyntax must be "a1111" .* or "literal"/);
  });

  it("a caption A1111's parser rejects is named, with the way out; literal reads it", () => {
    expect(() => captionEncoder(base, "a1111")(["a (red:1.2.3) photo"])).toThrow(
      /caption "a \(red:1\.2\.3\) photo" is not valid A1111 prompt syntax .*captionSyntax: "literal"/,
    );
    const t = captionEncoder(base, "literal")(["a (red:1.2.3) photo"]);
    expect(t.shape[0]).toBe(1);
    t.dispose();
  });

  it('"a1111": (red:1.5) is the word red at weight 1.5 — the text encoder sees no brackets, its output is A1111\'s emphasis', async () => {
    // the tiny model's trained text encoder: its outputs have a clear non-zero mean (the toy
    // encoder's layer norm leaves a mean of ~1e-8, where the mean restore is all rounding)
    const tiny = loadTinyModel();
    try {
      const caption = "a (red:1.5) circle";
      // the encoder input: the tokens of "a red circle", with red's multiplier 1.5
      const r = encodePrompts(tiny.textEncoder, tiny.tokenizer, [caption], { clipSkip: tiny.clipSkip });
      const n = tiny.tokenizer.tokenize("a red circle").length + 2; // BOS … EOS
      const plainIds = tiny.tokenizer.encode(["a red circle"]).ids[0]!;
      expect(r.chunks[0]![0]!.tokens.slice(0, n)).toEqual(plainIds.slice(0, n));
      const mult = r.chunks[0]![0]!.multipliers;
      const red = 1 + tiny.tokenizer.tokenize("a").length;
      expect(mult[red]).toBeCloseTo(1.5, 12);
      expect(mult.filter((m) => m !== 1).length).toBe(tiny.tokenizer.tokenize("red").length);
      r.context.dispose();
      // the encoder output, by hand (EmphasisOriginal): z of the plain text, red's vector × 1.5,
      // then everything × mean(z)/mean(z'), the means in float64 here
      const got = await expectNoLeak(async () => {
        const c = captionEncoder(tiny, "a1111")([caption]);
        const v = await c.data();
        c.dispose();
        return v;
      });
      const z = tiny.encodeText(["a red circle"]);
      const C = z.shape[2];
      const zv = Float64Array.from(await z.data());
      z.dispose();
      const scaled = Float64Array.from(zv);
      for (let c = 0; c < C; c++) scaled[red * C + c]! *= 1.5;
      const mean = (a: Float64Array) => a.reduce((s, x) => s + x, 0) / a.length;
      expect(Math.abs(mean(zv))).toBeGreaterThan(1e-3);
      const k = mean(zv) / mean(scaled);
      expect(k).toBeLessThan(0.999);
      expectClose(
        got,
        Array.from(scaled, (x) => x * k),
        1e-4,
        1e-4,
      );
    } finally {
      tiny.dispose();
    }
  });

  it('"literal" encodes the characters (brackets and all); a plain caption is the same either way, bit for bit', async () => {
    const caption = "a photo of (red:1.5)";
    const lit = captionEncoder(base, "literal")([caption]);
    const a = captionEncoder(base, "a1111")([caption]);
    const direct = base.encodeText([caption]);
    expect(Array.from(await lit.data())).toEqual(Array.from(await direct.data()));
    // the brackets, colon and digits are tokens of their own here: 10 tokens, two 6-token windows
    expect(base.tokenizer.tokenize(caption).length).toBe(10);
    expect(lit.shape).toEqual([1, 16, 16]);
    expect(a.shape).toEqual([1, 8, 16]);
    const p1 = captionEncoder(base, "a1111")(["art by toy , blue"]);
    const p2 = captionEncoder(base, "literal")(["art by toy , blue"]);
    expect(Array.from(await p1.data())).toEqual(Array.from(await p2.data()));
    tf.dispose([lit, a, direct, p1, p2]);
  });
});

describe("the trainer's feed hands the UNet the context of the chosen caption syntax", () => {
  it("a1111 with tag shuffling: each micro-batch's captions go to the text encoder in one call, without brackets", async () => {
    const dir = path.join(tmp, "data-shuffle");
    await makeToyDataset(dir);
    for (const c of ["red", "blue", "green", "yellow"]) fs.writeFileSync(path.join(dir, `${c}.txt`), `(${c}:1.5), art, toy`);
    const net = makeToyNet();
    const opts = toyTrainOptions(dir, path.join(tmp, "log-shuffle"), { template: ["[filewords]"], shuffleTags: true });
    const cfg = resolveRunConfig(base, net, opts, () => {});
    const feed = await TrainingFeed.open(base, cfg, opts, { log: () => {}, warn: () => {} });
    const cap = captureModel(base);
    try {
      const indices = feed.batchesOfStep(0)[0]!;
      const mb = feed.microBatch(0, 0, indices);
      // one encoder call for the batch (A1111's cond_stage_model(batch.cond_text)), one row per caption
      expect(cap.ids).toHaveLength(1);
      expect(cap.ids[0]).toHaveLength(indices.length);
      // the words only: no <unk> for "(", ":1.5" or ")" — read literally they would be
      for (const row of cap.ids[0]!) {
        expect(row).not.toContain(3);
        expect(row.filter((id) => id > 3)).toHaveLength(5); // colour , art , toy
      }
      tf.dispose([mb.batch.x0, mb.batch.noise, mb.batch.cond, ...(mb.batch.weight ? [mb.batch.weight] : [])]);
    } finally {
      cap.restore();
      feed.dispose();
      net.dispose();
    }
  });

  it.each(["a1111", "literal"] as const)("%s", async (syntax) => {
    const dir = path.join(tmp, `data-${syntax}`);
    await makeToyDataset(dir);
    fs.writeFileSync(path.join(dir, "red.txt"), "(red:1.5)");
    fs.writeFileSync(path.join(dir, "blue.txt"), "[blue]");
    const net = makeToyNet();
    const opts = toyTrainOptions(dir, path.join(tmp, `log-${syntax}`), { template: ["a photo of [filewords]"], captionSyntax: syntax });
    const cfg = resolveRunConfig(base, net, opts, () => {});
    expect(cfg.captionSyntax).toBe(syntax);
    const feed = await TrainingFeed.open(base, cfg, opts, { log: () => {}, warn: () => {} });
    try {
      const indices = feed.batchesOfStep(0)[0]!;
      const mb = feed.microBatch(0, 0, indices);
      const prompts = indices.map((i) => feed.dataset.get(i).prompt);
      // fixed captions: each encoded on its own, as A1111's dataset does, then stacked (stack_conds)
      const rows = prompts.map((p) => captionEncoder(base, syntax)([p]));
      const want = stackConds(rows);
      expect(Array.from(await mb.batch.cond.data())).toEqual(Array.from(await want.data()));
      tf.dispose([...rows, want, mb.batch.x0, mb.batch.noise, mb.batch.cond, ...(mb.batch.weight ? [mb.batch.weight] : [])]);
    } finally {
      feed.dispose();
      net.dispose();
    }
  });
});
