/**
 * Attention chunking (src/unet/attention.ts): the default score budget keeps every chunk under
 * WebGPU's default 128 MiB storage-buffer binding for SD 1.5 at 64×64, and chunked attention —
 * by query rows and by batch·head — computes the same values and gradients as the unchunked one.
 */
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CrossAttention, DEFAULT_SCORE_BUDGET, attentionChunks } from "../src/unet/attention";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";

const WEBGPU_MAX_BINDING_BYTES = 128 * 1024 * 1024;

describe("chunk sizes", () => {
  it("SD 1.5 at 64×64 (8 heads, 4096 tokens; batch 1 and CFG batch 2): every chunk < 128 MiB", () => {
    for (const b of [1, 2, 4]) {
      const { bhPerChunk, rowsPerChunk } = attentionChunks(b * 8, 4096, 4096, DEFAULT_SCORE_BUDGET);
      const bytes = bhPerChunk * rowsPerChunk * 4096 * 4;
      expect(bytes).toBeLessThan(WEBGPU_MAX_BINDING_BYTES);
      expect(bytes).toBeGreaterThan(WEBGPU_MAX_BINDING_BYTES / 4); // not needlessly small
    }
  });

  it("keeps all batch·heads while whole rows fit; splits them only when one row each does not", () => {
    expect(attentionChunks(16, 4096, 4096, 2 ** 24)).toEqual({ bhPerChunk: 16, rowsPerChunk: 256 });
    expect(attentionChunks(16, 100, 77, 1e9)).toEqual({ bhPerChunk: 16, rowsPerChunk: 100 });
    expect(attentionChunks(16, 4096, 4096, 3 * 4096)).toEqual({ bhPerChunk: 3, rowsPerChunk: 1 });
    expect(attentionChunks(4, 10, 1000, 10)).toEqual({ bhPerChunk: 1, rowsPerChunk: 1 });
  });
});

describe("chunked attention equals unchunked", () => {
  let layer: CrossAttention;
  let x: tf.Tensor3D;
  let ctx: tf.Tensor3D;
  beforeAll(async () => {
    await setupBackend();
    layer = new CrossAttention(32, 24, 4, 8, false);
    x = tf.randomNormal([3, 13, 32], 0, 1, "float32", 1) as tf.Tensor3D;
    ctx = tf.randomNormal([3, 7, 24], 0, 1, "float32", 2) as tf.Tensor3D;
  });
  afterAll(() => {
    layer.dispose();
    tf.dispose([x, ctx]);
  });

  const run = (budget: number): { out: Float32Array; dx: Float32Array } => {
    layer.scoreBudget = budget;
    const out = tf.tidy(() => layer.apply(x, ctx).dataSync() as Float32Array);
    const dx = tf.tidy(
      () =>
        tf
          .grad((xx: tf.Tensor) => tf.sum(tf.square(layer.apply(xx, ctx))))(x)
          .dataSync() as Float32Array,
    );
    return { out, dx };
  };

  it("by rows (budget = 2 rows of every batch·head) and by batch·heads (budget < one row each)", async () => {
    const ref = run(Infinity);
    for (const budget of [12 * 7 * 2, 7 * 5, 1]) {
      const got = await expectNoLeak(() => run(budget));
      expectClose(got.out, ref.out, 1e-5);
      expectClose(got.dx, ref.dx, 1e-4);
    }
    layer.scoreBudget = DEFAULT_SCORE_BUDGET;
  });
});
