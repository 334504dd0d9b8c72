/**
 * Growing the tiny model (src/tiny/grow.ts): a model given attention at one more level computes
 * exactly what it did before — the invariant the shipped model's continued training rests on.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addAttentionLevel } from "../src/tiny/grow";
import { buildTinyModel, defaultTinyConfig, loadTinyModel, readTinyConfig, saveTinyModel } from "../src/tiny/model";
import { expectNoLeak, setupBackend } from "./helpers/tf";

let tmp: string;
const src = (): string => path.join(tmp, "src");

beforeAll(async () => {
  await setupBackend();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-grow-"));
  const cfg = defaultTinyConfig();
  const parts = buildTinyModel({ ...cfg, unet: { ...cfg.unet, attention_resolutions: [4, 8] } });
  saveTinyModel(parts, src());
  parts.unet.dispose();
  parts.textEncoder.dispose();
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function epsOf(dir: string): Float32Array {
  const m = loadTinyModel(dir);
  try {
    return tf.tidy(() => {
      const x = tf.randomNormal([2, 32, 32, 3], 0, 1, "float32", 7) as tf.Tensor4D;
      const c = m.encodeText(["a large red ring on the left, black background", ""]);
      return m.unet.forward(x, [30, 700], c).dataSync() as Float32Array;
    });
  } finally {
    m.dispose();
  }
}

describe("addAttentionLevel", () => {
  it("adds SpatialTransformers at 16×16, moves the upsample conv, and the grown model's output is bit-identical", async () => {
    const dst = path.join(tmp, "grown");
    const r = await expectNoLeak(() => addAttentionLevel(src(), dst, 2));
    expect(r.attentionResolutions).toEqual([2, 4, 8]);
    expect(readTinyConfig(dst).unet.attention_resolutions).toEqual([2, 4, 8]);
    // Output blocks 4–5 and input block 3 are the 16×16 level (1 ResBlock per level, 4 levels);
    // output block 5 ends with the upsample conv, which moves from index 1 to 2.
    const blocks = [...new Set(r.added.map((k) => /^unet\.((input|output)_blocks\.\d+\.1)\./.exec(k)?.[1]))].sort();
    expect(blocks).toEqual(["input_blocks.3.1", "output_blocks.4.1", "output_blocks.5.1"]);
    expect(r.moved.map(([a, b]) => `${a} → ${b}`).sort()).toEqual([
      "unet.output_blocks.5.1.conv.bias → unet.output_blocks.5.2.conv.bias",
      "unet.output_blocks.5.1.conv.weight → unet.output_blocks.5.2.conv.weight",
    ]);
    const before = epsOf(src());
    const after = epsOf(dst);
    expect(after.length).toBe(before.length);
    let maxDiff = 0;
    for (let i = 0; i < before.length; i++) maxDiff = Math.max(maxDiff, Math.abs(after[i]! - before[i]!));
    expect(maxDiff).toBe(0);
  }, 60_000);

  it("refuses a level that already has attention, one the UNet does not have, and an existing destination", () => {
    expect(() => addAttentionLevel(src(), path.join(tmp, "x"), 4)).toThrow(/already has attention at level 4/);
    expect(() => addAttentionLevel(src(), path.join(tmp, "x"), 16)).toThrow(/level 16 is not a UNet level .*1, 2, 4, 8/);
    expect(() => addAttentionLevel(src(), src(), 2)).toThrow(/exists; pass overwrite/);
  });
});
