/** The global gradient norm that clipping and the training logs use. */
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { globalNorm } from "../src/train/grad-norm";
import { expectNoLeak, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

describe("globalNorm", () => {
  it("is √(Σ g²) over every element of every tensor (hand-computed)", async () => {
    // [3, 4] and [[12]]: √(9 + 16 + 144) = 13.
    const a = tf.tensor1d([3, 4]);
    const b = tf.tensor2d([[12]]);
    const n = await expectNoLeak(async () => {
      const s = globalNorm([a, b]);
      const v = (await s.data())[0]!;
      s.dispose();
      return v;
    });
    expect(n).toBeCloseTo(13, 5);
    tf.dispose([a, b]);
  });

  it("adds hundreds of tensors (a whole model's gradients) and is 0 for none", async () => {
    const ts = Array.from({ length: 400 }, () => tf.ones([3]));
    const s = globalNorm(ts);
    expect((await s.data())[0]).toBeCloseTo(Math.sqrt(1200), 3);
    const z = globalNorm([]);
    expect((await z.data())[0]).toBe(0);
    tf.dispose([...ts, s, z]);
  });
});
