/**
 * AdamW on webgpu with the fused update of src/backend/webgpu-adamw.ts (Dawn on the private
 * lavapipe) against AdamW's formula evaluated in float64 here (independent of both the kernel and
 * the composite), over three steps with a changing learning rate and a parameter that skips a
 * step (so one step updates parameters at different step counts); and against the composite path
 * of src/train/adamw.ts on the cpu backend. Also: three kernel launches per parameter, no leak.
 * Skips (saying why) where the driver or the `webgpu` package is absent.
 */
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { useBackend } from "../src/backend/backend";
import { adamwScalars, fusedAdamW, fusedAdamWActive } from "../src/backend/webgpu-adamw";
import { useFusedKernels } from "../src/backend/webgpu-fused";
import { Param } from "../src/nn/module";
import { AdamW } from "../src/train/adamw";
import { expectClose, expectNoLeak } from "./helpers/tf";
import { webgpuSetup } from "./helpers/webgpu";

const { skipReason } = webgpuSetup("webgpu-adamw.test.ts");

const shapes = [[4, 3], [3], [70]];
const wave = (n: number, seed: number, amp: number): number[] =>
  Array.from({ length: n }, (_, i) => amp * (Math.sin(i * 0.9 + seed) + 0.3 * Math.cos(i * 0.37 * seed)));
const sizeOf = (s: number[]): number => s.reduce((a, b) => a * b, 1);
const initial = shapes.map((s, i) => wave(sizeOf(s), i + 1, 1));
/** Gradients per step; null = the parameter gets no gradient that step (AdamW skips it). */
const gradients: (number[] | null)[][] = [1, 2, 3].map((step) =>
  shapes.map((s, i) => (step === 2 && i === 1 ? null : wave(sizeOf(s), 10 * step + i, 0.5 * step))),
);
const lrs = [1e-2, 5e-3, 1e-1];

/** PyTorch's AdamW for one parameter, in float64: returns p, m, v after the given steps. */
function reference(i: number): { p: number[]; m: number[]; v: number[] } {
  const [b1, b2, eps, wd] = [0.9, 0.999, 1e-8, 0.01];
  const p = [...initial[i]!];
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  let k = 0;
  gradients.forEach((gs, step) => {
    const g = gs[i];
    if (!g) return;
    k++;
    const lr = lrs[step]!;
    const bc2Sqrt = Math.sqrt(1 - b2 ** k);
    for (let j = 0; j < p.length; j++) {
      p[j] = p[j]! * (1 - lr * wd);
      m[j] = b1 * m[j]! + (1 - b1) * g[j]!;
      v[j] = b2 * v[j]! + (1 - b2) * g[j]! * g[j]!;
      p[j] = p[j]! - (lr / (1 - b1 ** k)) * (m[j]! / (Math.sqrt(v[j]!) / bc2Sqrt + eps));
    }
  });
  return { p, m, v };
}

/** Run the three steps with AdamW on the current backend; returns parameters and exported moments. */
async function runAdamW(): Promise<{ p: Float32Array[]; m: Float32Array[]; v: Float32Array[] }> {
  const params = shapes.map((s, i) => new Param(s, "plain", tf.tensor(initial[i]!, s), true));
  const opt = new AdamW(params, { lr: 1 });
  for (let step = 0; step < 3; step++) {
    const gs = gradients[step]!.map((g, i) => (g ? tf.tensor(g, shapes[i]) : null));
    await expectNoLeak(() => opt.step(gs, lrs[step]));
    tf.dispose(gs.filter((g): g is tf.Tensor => g !== null));
  }
  const p = await Promise.all(params.map(async (q) => (await q.value.data()) as Float32Array));
  const state = await opt.exportState();
  opt.dispose();
  for (const q of params) q.value.dispose();
  return {
    p,
    m: state.params.map((s) => s.expAvg.data as Float32Array),
    v: state.params.map((s) => s.expAvgSq.data as Float32Array),
  };
}

describe.runIf(skipReason === null)("fused AdamW on WebGPU (lavapipe)", () => {
  beforeAll(async () => {
    await useBackend("webgpu", { quiet: true });
    useFusedKernels();
  }, 120_000);

  it("three steps match AdamW's formula in float64 and the composite on the cpu backend (1e-6)", async () => {
    expect(fusedAdamWActive()).toBe(true);
    const fused = await runAdamW();
    await useBackend("cpu", { quiet: true });
    expect(fusedAdamWActive()).toBe(false);
    const composite = await runAdamW();
    await useBackend("webgpu", { quiet: true });
    shapes.forEach((_, i) => {
      const ref = reference(i);
      expectClose(fused.p[i]!, ref.p, 1e-6);
      expectClose(fused.m[i]!, ref.m, 1e-6);
      expectClose(fused.v[i]!, ref.v, 1e-6);
      expectClose(fused.p[i]!, composite.p[i]!, 1e-6);
      expectClose(fused.v[i]!, composite.v[i]!, 1e-7);
      // the update moved every parameter: a kernel that wrote nothing would fail above, but say so
      expect(Math.max(...fused.p[i]!.map((x, j) => Math.abs(x - initial[i]![j]!)))).toBeGreaterThan(1e-4);
    });
  }, 120_000);

  it("one parameter's update is three fused launches and no tfjs elementwise kernels", async () => {
    const p = new Param([5], "plain", tf.tensor([1, 2, 3, 4, 5]), true);
    const opt = new AdamW([p], { lr: 1e-2 });
    const g = tf.tensor([0.5, -1, 2, 0, 1]);
    const prof = await tf.profile(() => opt.step([g]));
    expect(prof.kernels.map((k) => k.name)).toEqual(["HnFusedAdamW", "HnFusedAdamW", "HnFusedAdamW"]);
    // hand check of the first step: m̂ = g, v̂ = g², so p ← p·(1 − lr·λ) − lr·g/(|g| + ε)
    const want = [1, 2, 3, 4, 5].map((x, j) => {
      const gj = [0.5, -1, 2, 0, 1][j]!;
      return x * (1 - 1e-4) - (1e-2 * gj) / (Math.abs(gj) + 1e-8);
    });
    expectClose(await p.value.data(), want, 1e-6);
    opt.dispose();
    tf.dispose([g, p.value]);
  }, 60_000);

  it("mismatched shapes and a wrong scalars tensor are refused with the shapes named", () => {
    const [a, b, c] = [tf.zeros([2, 3]), tf.zeros([3, 2]), tf.zeros([3]) as tf.Tensor1D];
    const s = adamwScalars({ lr: 1, weightDecay: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, bc2Sqrt: 1, stepSize: 1 });
    expect(() => fusedAdamW(a, a, b, a, s)).toThrow(/v is \[3,2\] but the parameter is \[2,3\]/);
    expect(() => fusedAdamW(a, a, a, a, c)).toThrow(/3 entries, not 8/);
    tf.dispose([a, b, c, s]);
  });
});
