/**
 * The fused attention kernel of src/backend/webgpu-attention.ts against the plain tfjs composite
 * (head split, QKᵀ·scale, softmax, ·V, head merge) on the same backend (Dawn on the private
 * lavapipe): forward and the gradients of q, k and v, at shapes that cross the kernel's tile and
 * workgroup edges, with large scores (the online softmax's rescaling), self- and cross-attention.
 * Also: `attend` routes to it on webgpu with one dispatch per forward, and nothing leaks.
 * Skips (saying why) where the driver or the `webgpu` package is absent.
 */
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { useBackend } from "../src/backend/backend";
import { attentionTileRows, fusedAttention, fusedAttentionActive } from "../src/backend/webgpu-attention";
import { useFusedKernels } from "../src/backend/webgpu-fused";
import { CrossAttention } from "../src/unet/attention";
import { expectClose, expectNoLeak } from "./helpers/tf";
import { webgpuSetup } from "./helpers/webgpu";

const { skipReason } = webgpuSetup("webgpu-attention.test.ts");

/** Deterministic, non-trivial values with amplitude `amp` (different per seed). */
function values(shape: number[], seed: number, amp = 1): tf.Tensor {
  const n = shape.reduce((p, v) => p * v, 1);
  return tf.tensor(
    Float32Array.from({ length: n }, (_, i) => amp * (Math.sin(i * 0.731 + seed) * 0.9 + Math.cos(i * 0.173 * seed) * 0.3)),
    shape,
  );
}

/** Multi-head attention written out with plain tfjs ops, independently of src/unet. */
function composite(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, heads: number, scale: number): tf.Tensor {
  const [b, n, inner] = q.shape as [number, number, number];
  const t = k.shape[1]!;
  const d = inner / heads;
  const split = (x: tf.Tensor, len: number): tf.Tensor => x.reshape([b, len, heads, d]).transpose([0, 2, 1, 3]);
  const scores = tf.mul(tf.matMul(split(q, n), split(k, t), false, true), scale);
  const o = tf.matMul(tf.softmax(scores), split(v, t));
  return o.transpose([0, 2, 1, 3]).reshape([b, n, inner]);
}

/** Output and ∂q, ∂k, ∂v of Σ w·f(q, k, v) for a fixed weighting w. */
async function valueAndGrads(f: (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor, ins: tf.Tensor[]): Promise<Float32Array[]> {
  const out = tf.tidy(() => f(ins[0]!, ins[1]!, ins[2]!));
  const w = values(out.shape, 9);
  const gs = tf.grads((q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.sum(tf.mul(f(q, k, v), w)))(ins);
  const r = await Promise.all([out, ...gs].map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([out, w, ...gs]);
  return r;
}

describe.runIf(skipReason === null)("fused WebGPU attention (lavapipe)", () => {
  beforeAll(async () => {
    await useBackend("webgpu", { quiet: true });
    useFusedKernels();
  }, 120_000);

  // [name, B, N, T, heads, head width, amplitude of q and k]
  const cases: [string, number, number, number, number, number, number][] = [
    ["tiny cross-attention (B 2, N 5, T 7, 2 heads of 3)", 2, 5, 7, 2, 3, 1],
    ["self-attention over 66 tokens (past one workgroup of 64 rows), 2 heads of 8", 1, 66, 66, 2, 8, 1],
    ["cross-attention to 77 tokens, head width 40 (two key tiles of 49)", 1, 9, 77, 1, 40, 1],
    ["large scores (|S| up to ~40: the running maximum rescales)", 1, 6, 67, 2, 8, 4],
  ];
  for (const [name, b, n, t, heads, d, amp] of cases) {
    it(`${name}: forward and ∂q, ∂k, ∂v match the composite`, async () => {
      const q = values([b, n, heads * d], 1, amp);
      const k = values([b, t, heads * d], 2, amp);
      const v = values([b, t, heads * d], 3);
      const scale = 1 / Math.sqrt(d);
      const fused = await expectNoLeak(() =>
        valueAndGrads((a, c, e) => fusedAttention(a as tf.Tensor3D, c as tf.Tensor3D, e as tf.Tensor3D, heads, scale), [q, k, v]),
      );
      const ref = await valueAndGrads((a, c, e) => composite(a, c, e, heads, scale), [q, k, v]);
      expect(fused.length).toBe(4);
      // 1e-4 relative to the largest entry (sums over up to 77 keys of products of order amp²).
      fused.forEach((f, i) => {
        const big = Math.max(1, ...ref[i]!.map(Math.abs));
        expectClose(f, ref[i]!, 1e-4 * big);
        expect(Math.max(...f.map(Math.abs))).toBeGreaterThan(1e-3); // every gradient is exercised
      });
      tf.dispose([q, k, v]);
    }, 120_000);
  }

  it("hand check: one query against two keys gives the softmax-weighted mean of the values", async () => {
    // scores 0 and ln 3 → weights 1/4 and 3/4; values 4 and 8 → 7
    const q = tf.tensor3d([[[1]]]);
    const k = tf.tensor3d([[[0], [Math.log(3)]]]);
    const v = tf.tensor3d([[[4], [8]]]);
    const o = fusedAttention(q, k, v, 1, 1);
    expectClose(await o.data(), [7], 1e-5);
    tf.dispose([q, k, v, o]);
  });

  it("attend takes the fused path on webgpu (one attention dispatch) with the composite's result", async () => {
    expect(fusedAttentionActive()).toBe(true);
    const layer = new CrossAttention(8, 6, 2, 4, false);
    const x = values([2, 10, 8], 4);
    const ctx = values([2, 7, 6], 5);
    const viaLayer = tf.tidy(() => layer.apply(x, ctx));
    const ref = tf.tidy(() => {
      const o = composite(layer.to_q.apply(x), layer.to_k.apply(ctx), layer.to_v.apply(ctx), 2, layer.scale);
      return layer.to_out.at(0).apply(o);
    });
    expectClose(await viaLayer.data(), await ref.data(), 1e-4);
    const prof = await tf.profile(() => layer.apply(x, ctx));
    const names = prof.kernels.map((k) => k.name).filter((n) => n !== "Reshape");
    expect(names.filter((n) => n === "HnFusedAttention").length).toBe(1);
    expect(names).not.toContain("Softmax");
    expect(names).not.toContain("Transpose");
    tf.dispose([x, ctx, viaLayer, ref, prof.result as tf.Tensor]);
    layer.dispose();
  }, 60_000);

  it("shapes that cannot work are refused with the shapes named", () => {
    const q = tf.zeros([1, 2, 6]) as tf.Tensor3D;
    const k = tf.zeros([1, 3, 6]) as tf.Tensor3D;
    const v = tf.zeros([1, 4, 6]) as tf.Tensor3D;
    expect(() => fusedAttention(q, k, k, 4, 1)).toThrow(/width 6 does not split into 4 heads/);
    expect(() => fusedAttention(q, k, v, 2, 1)).toThrow(/k and v must be \[1, T, 6\] with the same T/);
    tf.dispose([q, k, v]);
  });

  it("tiles fit 16 KiB of workgroup memory for SD's head widths", () => {
    for (const d of [16, 40, 64, 80, 160]) {
      const tile = attentionTileRows(d);
      expect(tile).toBeGreaterThanOrEqual(1);
      expect(tile * (2 * d + 2) * 4).toBeLessThanOrEqual(16384);
    }
    expect(attentionTileRows(40)).toBe(49);
  });
});
