/**
 * The dataset options seen from a real training run (test/helpers/train-setup.ts's toy model):
 * what reaches the text encoder and the UNet when tags are shuffled or dropped, when images keep
 * their own sizes ("do not resize": size buckets), and when images repeat within an epoch. The
 * dataset's own tests (dataset.test.ts) check the dataset alone; these check that the trainer passes
 * the options on and uses what the dataset gives, step by step.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { BaseModel } from "../src/pipeline/base-model";
import { type StepEvent, type TrainOptions, train } from "../src/train";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { captureModel, row } from "./helpers/train-capture";
import { TOY_WORDS, makeToyBase, makeToyDataset, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

/** qSample's inputs (x₀, ε, t) for every loss the trainer computes: the batch as the loss sees it. */
const q = vi.hoisted(() => ({ on: false, calls: [] as Array<{ x0: Float32Array; shape: number[]; t: number[] }> }));
vi.mock(import("../src/diffusion/schedule"), async (importOriginal) => {
  const m = await importOriginal();
  return {
    ...m,
    qSample: (x0: tf.Tensor, noise: tf.Tensor, t: ArrayLike<number>, s?: InstanceType<typeof m.NoiseSchedule>) => {
      if (q.on) q.calls.push({ x0: Float32Array.from(x0.dataSync()), shape: [...x0.shape], t: Array.from(t) });
      return m.qSample(x0, noise, t, s);
    },
  };
});

let base: BaseModel;
let tmp: string;

const COLOURS: Array<[string, [number, number, number]]> = [
  ["red", [220, 30, 30]],
  ["blue", [30, 40, 220]],
  ["green", [40, 200, 50]],
  ["yellow", [230, 220, 40]],
];
/** The tags after the colour in every tagged caption. */
const REST = ["art", "toy", "photo", "by"];

beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-train-data-"));
});

afterAll(() => {
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Four 8×8 constant-colour images captioned "<colour>, art, toy, photo, by". */
async function taggedDataset(dir: string): Promise<void> {
  await makeToyDataset(dir);
  for (const [name] of COLOURS) fs.writeFileSync(path.join(dir, `${name}.txt`), [name, ...REST].join(", "));
}

/**
 * A run of the toy model with the prompt template "[filewords]", so each prompt is the caption as
 * processed. Captions are read literally (`captionSyntax: "literal"`), so they reach the text
 * encoder through `base.encodeText`, where the capture reads them; the default A1111 caption syntax
 * is tested in train-captions.test.ts.
 */
async function runTags(
  name: string,
  dataDir: string,
  extra: Partial<TrainOptions>,
): Promise<{ prompts: string[][]; ids: number[][][]; contexts: Array<{ data: Float32Array; shape: number[] }> }> {
  const net = makeToyNet();
  const cap = captureModel(base);
  try {
    await expectNoLeak(
      () =>
        train(
          base,
          net,
          toyTrainOptions(dataDir, path.join(tmp, name), { template: ["[filewords]"], maxSteps: 8, captionSyntax: "literal", ...extra }),
        ).done,
    );
    return {
      prompts: cap.prompts.map((p) => [...p]),
      ids: cap.ids.map((r) => r.map((x) => [...x])),
      contexts: cap.unet.map((c) => ({ data: c.context, shape: c.contextShape })),
    };
  } finally {
    cap.restore();
    net.dispose();
  }
}

describe("tag shuffle and tag dropout reach the text encoder", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = path.join(tmp, "tagged");
    await taggedDataset(dataDir);
  });

  it("without either, each distinct prompt is encoded once and is the caption itself", async () => {
    const r = await runTags("plain", dataDir, {});
    const captions = COLOURS.map(([c]) => [c, ...REST].join(", "));
    // one encoder call per distinct prompt (the cache), each a caption as written
    expect(r.prompts.every((p) => p.length === 1)).toBe(true);
    expect(r.prompts.map((p) => p[0]).sort()).toEqual([...captions].sort());
  }, 120_000);

  it("shuffle: every step's prompts are freshly shuffled, keepTokens leading tags stay, the UNet gets their encoding, and the seed fixes the sequence", async () => {
    const a = await runTags("shuffle-a", dataDir, { shuffleTags: true, keepTokens: 1 });
    // 8 steps × 1 micro-batch of 2: one encoder call of 2 prompts per step (no cache: prompts change)
    expect(a.prompts.map((p) => p.length)).toEqual(new Array(8).fill(2));
    const all = a.prompts.flat();
    for (const p of all) {
      const tags = p.split(", ");
      expect(COLOURS.map(([c]) => c)).toContain(tags[0]); // the kept tag, first
      expect(tags.slice(1).sort()).toEqual([...REST].sort()); // the others, all there
    }
    // shuffled: the 16 prompts show more than one order of the four free tags (all 16 alike: p = (1/24)^15)
    expect(new Set(all.map((p) => p.split(", ").slice(1).join(","))).size).toBeGreaterThan(1);

    // The token ids the encoder got are the prompts' words, in the prompts' order (tokenised by hand here).
    const want = (p: string): number[] =>
      p
        .split(/\s*(,)\s*|\s+/)
        .filter((w) => w)
        .map((w) => 4 + TOY_WORDS.indexOf(w));
    for (let k = 0; k < a.prompts.length; k++) {
      const got = a.ids[k]!.map((r) => r.filter((id) => id > 3)); // drop <pad>, <bos>, <eos>, <unk>
      expect(got.flat()).toEqual(a.prompts[k]!.flatMap(want));
    }

    // The UNet's context at each step is exactly the encoding of that step's prompts.
    expect(a.contexts).toHaveLength(8);
    for (let k = 0; k < 8; k++) {
      const c = base.encodeText(a.prompts[k]!);
      expect(a.contexts[k]!.shape).toEqual(c.shape);
      expectClose(a.contexts[k]!.data, c.dataSync(), 0);
      c.dispose();
    }

    const again = await runTags("shuffle-b", dataDir, { shuffleTags: true, keepTokens: 1 });
    expect(again.prompts).toEqual(a.prompts);
    const other = await runTags("shuffle-c", dataDir, { shuffleTags: true, keepTokens: 1, seed: 6 });
    expect(other.prompts).not.toEqual(a.prompts);
  }, 300_000);

  it("dropout: kept tags always stay, the others drop at about the asked rate and keep their order", async () => {
    const r = await runTags("dropout", dataDir, { tagDropout: 0.5, keepTokens: 2 });
    const all = r.prompts.flat();
    expect(all).toHaveLength(16);
    let dropped = 0;
    for (const p of all) {
      const tags = p.split(", ");
      expect(COLOURS.map(([c]) => c)).toContain(tags[0]);
      expect(tags[1]).toBe(REST[0]); // keepTokens 2: the colour and "art"
      // the rest is a subsequence of "toy, photo, by" in caption order (no shuffle asked)
      const rest = tags.slice(2);
      expect(rest).toEqual(REST.slice(1).filter((t) => rest.includes(t)));
      dropped += 3 - rest.length;
    }
    // 48 droppable tags at p = 0.5: 24 ± 3.5; outside [8, 40] has probability < 1e-5
    expect(dropped).toBeGreaterThanOrEqual(8);
    expect(dropped).toBeLessThanOrEqual(40);
  }, 120_000);
});

/** An 8-bit RGB test pattern of `w`×`h`, different for every `k`: a resize cannot leave it unchanged. */
function pattern(w: number, h: number, k: number): Uint8Array {
  const px = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) px[(y * w + x) * 3 + c] = (37 * x + 71 * y + 53 * c + 97 * k) % 256;
  return px;
}

/** The dataset's pixel values of a pattern: byte / 127.5 − 1, HWC. */
const unit = (px: Uint8Array): Float32Array => Float32Array.from(px, (v) => v / 127.5 - 1);

/** The batches the loss saw while training `maxSteps` steps. */
async function lossBatches(
  name: string,
  dataDir: string,
  extra: Partial<TrainOptions>,
): Promise<{ batches: typeof q.calls; steps: StepEvent[] }> {
  const net = makeToyNet();
  const steps: StepEvent[] = [];
  q.calls.length = 0;
  q.on = true;
  try {
    await expectNoLeak(
      () => train(base, net, toyTrainOptions(dataDir, path.join(tmp, name), { onStep: (e) => steps.push(e), ...extra })).done,
    );
    return { batches: [...q.calls], steps };
  } finally {
    q.on = false;
    net.dispose();
  }
}

describe('"do not resize": size buckets', () => {
  let dataDir: string;
  const natives: Array<{ w: number; h: number; px: Float32Array }> = [];
  beforeAll(async () => {
    dataDir = path.join(tmp, "mixed");
    fs.mkdirSync(dataDir);
    // three 8×8 and three 16×8 (width × height) images, named so the sizes interleave in file order
    for (let k = 0; k < 6; k++) {
      const [w, h] = k % 2 ? [16, 8] : [8, 8];
      const px = pattern(w, h, k);
      await sharp(px, { raw: { width: w, height: h, channels: 3 } })
        .png()
        .toFile(path.join(dataDir, `img${k}.png`));
      fs.writeFileSync(path.join(dataDir, `img${k}.txt`), "toy");
      natives.push({ w, h, px: unit(px) });
    }
  });

  /** Index of the native image a batch row equals exactly, or −1. */
  const match = (data: Float32Array): number =>
    natives.findIndex((n) => n.px.length === data.length && n.px.every((v, i) => v === data[i]));

  it("keeps every image's own size, batching only images of one size; without it everything is resized to 8×8", async () => {
    const { batches, steps } = await lossBatches("buckets", dataDir, { doNotResize: true, maxSteps: 6 });
    expect(steps[0]!.stepsPerEpoch).toBe(3); // ⌊6 / 2⌋ batches
    expect(batches).toHaveLength(6);
    const seen = new Set<number>();
    for (const b of batches) {
      expect([
        [2, 8, 8, 3],
        [2, 8, 16, 3],
      ]).toContainEqual(b.shape);
      const len = b.shape[1]! * b.shape[2]! * 3;
      for (let i = 0; i < 2; i++) {
        const k = match(row(b.x0, i, len));
        expect(k, "a batch row is not one of the images at its own size").toBeGreaterThanOrEqual(0);
        expect([natives[k]!.h, natives[k]!.w]).toEqual(b.shape.slice(1, 3));
        seen.add(k);
      }
    }
    expect(new Set(batches.map((b) => b.shape[2]))).toEqual(new Set([8, 16]));
    expect(seen.size).toBeGreaterThanOrEqual(4); // each epoch's two full batches hold four different images

    const resized = await lossBatches("resized", dataDir, { maxSteps: 3 });
    for (const b of resized.batches) expect(b.shape).toEqual([2, 8, 8, 3]);
    const rows = resized.batches.flatMap((b) => [0, 1].map((i) => match(row(b.x0, i, 8 * 8 * 3))));
    // the 16×8 images were stretched: their rows match no native image (the 8×8 ones are untouched)
    expect(rows.some((k) => k < 0)).toBe(true);
    for (const k of rows) if (k >= 0) expect(natives[k]!.w).toBe(8);
  }, 120_000);
});

describe("repeats", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = path.join(tmp, "colours");
    await makeToyDataset(dataDir);
  });

  /** Which colour (index into COLOURS) each row of a batch of constant-colour 8×8 images is. */
  const colours = (b: (typeof q.calls)[number]): number[] =>
    Array.from({ length: b.shape[0]! }, (_, i) => {
      const first = [...row(b.x0, i, 8 * 8 * 3).subarray(0, 3)];
      return COLOURS.findIndex(([, rgb]) => rgb.every((v, c) => Math.abs(v / 127.5 - 1 - first[c]!) < 1e-6));
    });

  it("an epoch holds every image `repeats` times: 4 images × 3 repeats in batches of 4 is 3 steps, each image 3 times", async () => {
    const r = await lossBatches("repeats-3", dataDir, { repeats: 3, batchSize: 4, maxSteps: 4 });
    expect(r.steps.map((e) => [e.epoch, e.epochStep, e.stepsPerEpoch])).toEqual([
      [0, 0, 3],
      [0, 1, 3],
      [0, 2, 3],
      [1, 0, 3],
    ]);
    const epoch0 = r.batches.slice(0, 3).flatMap(colours);
    expect(epoch0).toHaveLength(12);
    for (let c = 0; c < 4; c++) expect(epoch0.filter((x) => x === c)).toHaveLength(3);

    const once = await lossBatches("repeats-1", dataDir, { batchSize: 4, maxSteps: 2 });
    expect(once.steps.map((e) => [e.epoch, e.stepsPerEpoch])).toEqual([
      [0, 1],
      [1, 1],
    ]);
    for (const b of once.batches) expect(colours(b).sort()).toEqual([0, 1, 2, 3]);
  }, 120_000);
});
