/**
 * Custom preview settings seen from a real training run: the preview's prompt and negative prompt
 * reach the text encoder and the UNet, its sampler runs the asked number of steps, the image equals
 * txt2img's with the same settings and the network as trained attached (A1111's previews are a
 * txt2img run: A1111's noise for the seed, A1111's prompt syntax), and the PNG saved in the run
 * folder carries that infotext ("parameters"), as A1111's previews do (spec §4.10). Without
 * settings, the defaults (the batch's first prompt, Euler a, 20 steps, CFG 7, seed 0, the training
 * size) are what the infotext says.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import sharp from "sharp";
import { attachHypernetworks } from "../src/hypernet/attach";
import { unitToBytes } from "../src/io/png";
import { readPngText } from "../src/io/png-text";
import type { BaseModel } from "../src/pipeline/base-model";
import { txt2img } from "../src/pipeline/txt2img";
import { type PreviewEvent, type PreviewOptions, train } from "../src/train";
import { expectClose, expectNoLeak } from "./helpers/tf";
import { type ToyBench, closeToyBench, openToyBench } from "./helpers/toy-bench";
import { captureModel } from "./helpers/train-capture";
import { makeToyNet, toyTrainOptions } from "./helpers/train-setup";

let base: BaseModel;
let tmp: string;
let dataDir: string;
let bench: ToyBench | undefined;
beforeAll(async () => ({ base, tmp, dataDir } = bench = await openToyBench("hn-train-previews-")));
afterAll(() => closeToyBench(bench));

/** txt2img with `opts` and `net` as it is attached; RGB bytes of image 0. */
async function sampleWith(net: ReturnType<typeof makeToyNet>, opts: Required<Omit<PreviewOptions, "save">>): Promise<Uint8Array> {
  const att = attachHypernetworks(base.unet, [{ network: net, multiplier: 1 }]);
  try {
    const { pixels } = await expectNoLeak(() =>
      txt2img(base, {
        prompt: opts.prompt,
        negativePrompt: opts.negativePrompt,
        sampler: opts.sampler,
        steps: opts.steps,
        cfgScale: opts.cfgScale,
        seed: opts.seed,
        width: opts.width,
        height: opts.height,
      }),
    );
    return unitToBytes(pixels, 0, opts.width, opts.height);
  } finally {
    att.detach();
  }
}

describe("preview settings", () => {
  it("prompt, negative prompt, sampler, steps, CFG, seed and size reach sampling and the saved PNG's infotext", async () => {
    const preview = {
      prompt: "a photo of toy",
      negativePrompt: "blue , green",
      sampler: "Euler",
      steps: 3,
      cfgScale: 5,
      seed: 42,
      width: 16,
      height: 8,
    };
    const net = makeToyNet();
    const cap = captureModel(base);
    const events: PreviewEvent[] = [];
    let trainingCalls = 0;
    try {
      await expectNoLeak(
        () =>
          train(
            base,
            net,
            toyTrainOptions(dataDir, path.join(tmp, "custom"), {
              maxSteps: 2,
              previewEvery: 2,
              preview,
              onStep: () => void (trainingCalls = cap.unet.length),
              onPreview: (e) => void events.push(e),
            }),
          ).done,
      );
    } finally {
      cap.restore();
    }
    try {
      expect(events).toHaveLength(1);
      const e = events[0]!;
      expect(e.step).toBe(2);
      expect(e.prompts).toEqual([preview.prompt]);

      // The text encoder got the preview's prompt and negative prompt together (cond and uncond) …
      expect(cap.ids).toContainEqual(base.tokenizer.encode([preview.prompt, preview.negativePrompt]).ids);
      // … and the UNet ran the sampler's 3 steps on their contexts, at the preview's size.
      const calls = cap.unet.slice(trainingCalls);
      expect(new Set(calls.map((c) => c.t[0])).size).toBe(3);
      const want = base.encodeText([preview.prompt, preview.negativePrompt]);
      const [cond, uncond] = [want.slice([0, 0, 0], [1, -1, -1]), want.slice([1, 0, 0], [1, -1, -1])];
      const rows = new Set<string>();
      for (const c of calls) {
        expect(c.xShape.slice(1)).toEqual([8, 16, 3]);
        const per = c.contextShape[1]! * c.contextShape[2]!;
        for (let i = 0; i < c.contextShape[0]!; i++) {
          const ctx = c.context.subarray(i * per, (i + 1) * per);
          const which = [cond, uncond].findIndex((x) => x.shape[1] === c.contextShape[1] && x.dataSync().every((v, k) => v === ctx[k]));
          expect(which, "a preview UNet call's context is neither the prompt's nor the negative prompt's").toBeGreaterThanOrEqual(0);
          rows.add(String(which));
        }
      }
      expect(rows).toEqual(new Set(["0", "1"]));
      for (const t of [want, cond, uncond]) t.dispose();

      // The preview is the image these settings give with the network as trained (it has not changed since).
      const bytes = await sampleWith(net, preview);
      expect(e.images[0]!.width).toBe(16);
      expect(e.images[0]!.height).toBe(8);
      expect(Buffer.from(e.images[0]!.data).equals(Buffer.from(bytes))).toBe(true);
      // and the comparison can tell: another seed gives another image
      const other = await sampleWith(net, { ...preview, seed: 43 });
      expect(Buffer.from(other).equals(Buffer.from(bytes))).toBe(false);

      // The saved PNG holds that image and A1111's infotext for these settings.
      expect(e.file).toBe(path.join(tmp, "custom", "images", "toy-2.png"));
      const png = fs.readFileSync(e.file!);
      const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
      expect([info.width, info.height, info.channels]).toEqual([16, 8, 3]);
      expectClose(data, bytes, 0);
      expect(readPngText(png).get("parameters")).toBe(
        "a photo of toy\nNegative prompt: blue , green\nSteps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 5, Seed: 42, Size: 16x8, Model: toy, RNG: NV",
      );
      expect(readPngText(e.png[0]!).get("parameters")).toBe(readPngText(png).get("parameters"));
    } finally {
      net.dispose();
    }
  }, 180_000);

  it("without settings: the batch's first prompt, Euler a, 20 steps, CFG 7, seed 0, the training size — and the infotext says so", async () => {
    const net = makeToyNet();
    const events: PreviewEvent[] = [];
    const prompts: string[] = [];
    try {
      await train(
        base,
        net,
        toyTrainOptions(dataDir, path.join(tmp, "default"), {
          maxSteps: 1,
          previewEvery: 1,
          template: ["art by [filewords]"],
          onStep: (s) => void prompts.push(s.prompt),
          onPreview: (e) => void events.push(e),
        }),
      ).done;
      expect(events).toHaveLength(1);
      const e = events[0]!;
      expect(prompts[0]).toMatch(/^art by (red|blue|green|yellow)$/);
      expect(e.prompts).toEqual([prompts[0]]);
      const text = readPngText(fs.readFileSync(e.file!)).get("parameters");
      expect(text).toBe(
        `${prompts[0]}\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 0, Size: 8x8, Model: toy, RNG: NV`,
      );
      const bytes = await sampleWith(net, {
        prompt: prompts[0]!,
        negativePrompt: "",
        sampler: "Euler a",
        steps: 20,
        cfgScale: 7,
        seed: 0,
        width: 8,
        height: 8,
      });
      expect(Buffer.from(e.images[0]!.data).equals(Buffer.from(bytes))).toBe(true);
    } finally {
      net.dispose();
    }
  }, 180_000);
});
