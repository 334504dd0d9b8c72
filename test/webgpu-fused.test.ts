/**
 * The fused WebGPU kernels of src/backend/webgpu-fused.ts against the plain tfjs composites they
 * replace, on the same backend (Dawn on the private lavapipe): GroupNorm with and without SiLU,
 * LayerNorm and GEGLU, forward and every gradient, to 1e-4. Also: the nn layers route to the
 * kernels only while they are installed and the backend is webgpu, one dispatch per forward,
 * and nothing leaks. Skips (saying why) where the driver or the `webgpu` package is absent.
 */
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { useBackend } from "../src/backend/backend";
import { fusedGeglu, fusedGroupNorm, fusedKernelsActive, useFusedKernels } from "../src/backend/webgpu-fused";
import { Conv2d, GroupNorm, LayerNorm, Linear, gelu, silu } from "../src/nn/layers";
import { GEGLU } from "../src/unet/attention";
import { expectClose, expectNoLeak } from "./helpers/tf";
import { webgpuSetup } from "./helpers/webgpu";

const { skipReason } = webgpuSetup("webgpu-fused.test.ts");

/** Deterministic, non-trivial values (not symmetric around zero, different per tensor). */
function values(shape: number[], seed: number): tf.Tensor {
  const n = shape.reduce((p, v) => p * v, 1);
  return tf.tensor(
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.731 + seed) * 1.7 + Math.cos(i * 0.19 * seed) * 0.4 + 0.1 * seed),
    shape,
  );
}

/** The composite GroupNorm (+SiLU) over `[B, S, C]`, written out independently of src/nn. */
function compositeNorm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, groups: number, eps: number, act: boolean): tf.Tensor {
  const [b, s, c] = x.shape as [number, number, number];
  const g = x.reshape([b, s, groups, c / groups]);
  const { mean, variance } = tf.moments(g, [1, 3], true);
  const y = tf.add(tf.mul(tf.div(tf.sub(g, mean), tf.sqrt(tf.add(variance, eps))).reshape([b, s, c]), gamma), beta);
  return act ? silu(y) : y;
}

async function read(ts: tf.Tensor[]): Promise<Float32Array[]> {
  return Promise.all(ts.map(async (t) => (await t.data()) as Float32Array));
}

/** Value and gradients (w.r.t. every input) of Σ w·f(inputs) for a fixed weighting w. */
async function valueAndGrads(f: (...xs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[], seed: number): Promise<Float32Array[]> {
  const out = tf.tidy(() => f(...inputs));
  const w = values(out.shape, seed);
  const gs = tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(f(...xs), w)))(inputs);
  const r = await read([out, ...gs]);
  tf.dispose([out, w, ...gs]);
  return r;
}

describe.runIf(skipReason === null)("fused WebGPU kernels (lavapipe)", () => {
  beforeAll(async () => {
    await useBackend("webgpu", { quiet: true });
    useFusedKernels();
  }, 120_000);

  const normCases: [string, number[], number, number, boolean][] = [
    ["GroupNorm, 4 groups", [2, 12, 8], 4, 1e-5, false],
    ["GroupNorm + SiLU, 2 groups", [2, 9, 6], 2, 1e-6, true],
    ["LayerNorm (one group, S = 1)", [7, 1, 20], 1, 1e-5, false],
    ["GroupNorm as in the UNet (32 groups of 2 channels, 256 positions)", [1, 256, 64], 32, 1e-5, true],
    ["GroupNorm with groups larger than a workgroup (3 groups of 4 × 100)", [2, 100, 12], 3, 1e-6, false],
  ];
  for (const [name, shape, groups, eps, act] of normCases) {
    it(`${name}: forward and ∂x, ∂γ, ∂β match the composite to 1e-4`, async () => {
      const c = shape[2]!;
      const x = values(shape, 1);
      const gamma = values([c], 2);
      const beta = values([c], 3);
      const fused = await expectNoLeak(() =>
        valueAndGrads((a, g, b) => fusedGroupNorm(a as tf.Tensor3D, g!, b!, groups, eps, act), [x, gamma, beta], 4),
      );
      const ref = await valueAndGrads((a, g, b) => compositeNorm(a, g!, b!, groups, eps, act), [x, gamma, beta], 4);
      expect(fused.length).toBe(4);
      fused.forEach((f, i) => expectClose(f, ref[i]!, 1e-4));
      // Not trivially zero: the x-gradient of a normalisation under a non-constant weighting.
      expect(Math.max(...fused[1]!.map(Math.abs))).toBeGreaterThan(1e-2);
      tf.dispose([x, gamma, beta]);
    }, 60_000);
  }

  it("GEGLU: forward and ∂h match value · GELU(gate) to 1e-4", async () => {
    const h = values([5, 12], 5);
    const composite = (a: tf.Tensor): tf.Tensor => {
      const [v, g] = tf.split(a, 2, 1);
      return tf.mul(v!, gelu(g!));
    };
    const fused = await expectNoLeak(() => valueAndGrads((a) => fusedGeglu(a as tf.Tensor2D), [h], 6));
    const ref = await valueAndGrads(composite, [h], 6);
    fused.forEach((f, i) => expectClose(f, ref[i]!, 1e-4));
    // Hand check of one entry: value 1, gate 1 → GELU(1) = 0.8413447.
    const one = fusedGeglu(tf.tensor2d([[1, 1]]));
    expectClose(await one.data(), [0.8413447], 1e-5);
    tf.dispose([h, one]);
  }, 60_000);

  it("the nn layers take the fused path on webgpu (one dispatch each) and give the composite's result", async () => {
    expect(fusedKernelsActive()).toBe(true);
    const gn = new GroupNorm(2, 8);
    const ln = new LayerNorm(8);
    const geglu = new GEGLU(8, 4);
    const x = values([1, 3, 3, 8], 7);
    const seq = values([2, 3, 8], 8);
    const viaLayers = await read(tf.tidy(() => [gn.apply(x), gn.applySilu(x), ln.apply(seq), geglu.apply(seq)]));
    const proj = tf.tidy(() => geglu.proj.apply(seq).reshape([-1, 8]));
    const ref = await read(
      tf.tidy(() => [
        compositeNorm(x.reshape([1, 9, 8]), gn.weight.value, gn.bias.value, 2, 1e-5, false),
        compositeNorm(x.reshape([1, 9, 8]), gn.weight.value, gn.bias.value, 2, 1e-5, true),
        compositeNorm(seq.reshape([6, 1, 8]), ln.weight.value, ln.bias.value, 1, 1e-5, false),
        tf.mul(proj.slice([0, 0], [-1, 4]), gelu(proj.slice([0, 4], [-1, 4]))),
      ]),
    );
    viaLayers.forEach((v, i) => expectClose(v, ref[i]!, 1e-4));
    const prof = await tf.profile(() => gn.applySilu(x));
    expect(prof.kernelNames.filter((k) => k !== "Reshape")).toEqual(["HnFusedNorm"]); // reshapes are views, not dispatches
    tf.dispose([x, seq, proj, prof.result as tf.Tensor]);
    gn.dispose();
    ln.dispose();
    geglu.dispose();
  }, 60_000);

  it("Linear and Conv2d fold their bias into the matmul/conv outside a gradient tape, with the same result", async () => {
    const lin = new Linear(8, 5);
    const conv = new Conv2d(3, 4, 3, 1, 1);
    tf.tidy(() => {
      lin.bias!.value.assign(values([5], 11) as tf.Tensor1D);
      conv.bias!.value.assign(values([4], 12) as tf.Tensor1D);
    });
    const seq = values([6, 8], 13);
    const img = values([1, 5, 5, 3], 14);
    const fusedOut = await read(tf.tidy(() => [lin.apply(seq), conv.apply(img as tf.Tensor4D)]));
    const ref = await read(
      tf.tidy(() => [
        tf.add(tf.matMul(seq, lin.weight.value as tf.Tensor2D), lin.bias!.value),
        tf.add(tf.conv2d(img as tf.Tensor4D, conv.weight.value as tf.Tensor4D, 1, "same"), conv.bias!.value),
      ]),
    );
    fusedOut.forEach((v, i) => expectClose(v, ref[i]!, 1e-4));
    const prof = await tf.profile(() => lin.apply(seq));
    expect(prof.kernelNames).toContain("_FusedMatMul");
    expect(prof.kernelNames).not.toContain("Add");
    // Under a tape the plain ops run (tfjs's fused ops would also differentiate the frozen weights).
    const gx = tf.grad((a: tf.Tensor) => tf.sum(lin.apply(a)))(seq);
    const gRef = tf.tidy(() => tf.matMul(tf.ones([6, 5]), lin.weight.value as tf.Tensor2D, false, true));
    expectClose(await gx.data(), await gRef.data(), 1e-4);
    tf.dispose([seq, img, prof.result as tf.Tensor, gx, gRef]);
    lin.dispose();
    conv.dispose();
  }, 60_000);

  it("off webgpu the layers keep the composite path", async () => {
    await useBackend("cpu", { quiet: true });
    expect(fusedKernelsActive()).toBe(false);
    const gn = new GroupNorm(2, 4);
    const x = values([1, 2, 2, 4], 9);
    const prof = await tf.profile(() => gn.applySilu(x));
    expect(prof.kernelNames).not.toContain("HnFusedNorm");
    tf.dispose([x, prof.result as tf.Tensor]);
    gn.dispose();
    await useBackend("webgpu", { quiet: true });
  }, 60_000);

  it("a channel count that does not split into the groups is refused with the numbers", () => {
    const x = tf.zeros([1, 2, 6]) as tf.Tensor3D;
    expect(() => tf.tidy(() => fusedGroupNorm(x, tf.ones([6]), tf.zeros([6]), 4, 1e-5, false))).toThrow(
      /6 channels do not split into 4 groups/,
    );
    x.dispose();
  });
});
