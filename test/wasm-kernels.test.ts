/**
 * The wasm training-kernel overrides against the pure-JS cpu backend (an independent
 * implementation), a finite-difference gradient check on wasm, and leak checks.
 * tfjs backends are process-global; this file owns its process (vitest forks per file).
 */
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { beforeAll, describe, expect, it } from "vitest";
import { registerWasmKernelOverrides, wasmKernelOverridesInstalled } from "../src/backend/wasm-kernels";
import { expectClose } from "./helpers/tf";

/** Deterministic pseudo-random values in [-1, 1) (LCG), so both backends see identical inputs. */
function rand(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

const size = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

/** Evaluate fn on a backend and return its outputs as plain arrays. */
async function on(backend: string, fn: () => tf.Tensor[]): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  const outs = tf.tidy(fn);
  const data = outs.map((t) => t.dataSync() as Float32Array);
  tf.dispose(outs);
  return data;
}

type Pad = "same" | "valid" | number | [[number, number], [number, number], [number, number], [number, number]];
interface ConvCase {
  x: [number, number, number, number];
  f: [number, number, number, number];
  s: number | [number, number];
  pad: Pad;
}

const convCases: ConvCase[] = [
  { x: [1, 8, 8, 3], f: [3, 3, 3, 4], s: 1, pad: "same" },
  { x: [2, 8, 8, 3], f: [3, 3, 3, 4], s: 2, pad: "same" },
  { x: [2, 9, 9, 3], f: [3, 3, 3, 5], s: 2, pad: "same" },
  { x: [1, 8, 8, 4], f: [3, 3, 4, 2], s: 1, pad: "valid" },
  { x: [2, 9, 7, 2], f: [3, 3, 2, 3], s: 2, pad: "valid" },
  { x: [1, 6, 6, 3], f: [1, 1, 3, 4], s: 1, pad: "valid" },
  { x: [2, 8, 8, 3], f: [3, 3, 3, 4], s: 1, pad: 1 },
  {
    x: [1, 10, 10, 2],
    f: [3, 3, 2, 3],
    s: 2,
    pad: [
      [0, 0],
      [1, 1],
      [1, 1],
      [0, 0],
    ],
  },
  {
    x: [1, 8, 8, 2],
    f: [4, 4, 2, 3],
    s: 2,
    pad: [
      [0, 0],
      [1, 2],
      [0, 1],
      [0, 0],
    ],
  },
  { x: [1, 7, 8, 2], f: [3, 3, 2, 2], s: [1, 2], pad: "same" },
  {
    x: [1, 5, 5, 2],
    f: [1, 1, 2, 3],
    s: 1,
    pad: [
      [0, 0],
      [1, 1],
      [2, 0],
      [0, 0],
    ],
  }, // padding > kernel − 1
];

beforeAll(async () => {
  tf.enableProdMode();
  await tf.setBackend("wasm");
  // Stock wasm cannot train conv weights: this is what the overrides fix.
  const x = tf.ones([1, 4, 4, 1]) as tf.Tensor4D;
  const w = tf.ones([3, 3, 1, 1]) as tf.Tensor4D;
  expect(() => tf.grad((wv: tf.Tensor) => tf.conv2d(x, wv as tf.Tensor4D, 1, "same").sum())(w)).toThrow(/Conv2DBackpropFilter/);
  tf.dispose([x, w]);
  expect(registerWasmKernelOverrides()).toEqual(["Conv2DBackpropFilter", "Conv2DBackpropInput", "BatchMatMul"]);
  expect(registerWasmKernelOverrides()).toEqual([]); // idempotent
  expect(wasmKernelOverridesInstalled()).toBe(true);
});

describe("conv2d backprop overrides match the cpu backend", () => {
  for (const [i, c] of convCases.entries()) {
    it(`case ${i}: x ${c.x} f ${c.f} stride ${c.s} pad ${JSON.stringify(c.pad)}`, async () => {
      const xv = rand(size(c.x), 11 + i);
      const wv = rand(size(c.f), 101 + i);
      const graph = (): tf.Tensor[] => {
        const x = tf.tensor4d(xv, c.x);
        const w = tf.tensor4d(wv, c.f);
        const y = tf.conv2d(x, w, c.s, c.pad);
        const dyv = tf.tensor(rand(y.size, 1001 + i), y.shape);
        // L = Σ y·dy, so dL/dx and dL/dw are the two backprop kernels applied to dy.
        const grads = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          tf
            .conv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.s, c.pad)
            .mul(dyv)
            .sum(),
        )([x, w]);
        return [y, ...grads];
      };
      const ref = await on("cpu", graph);
      const got = await on("wasm", graph);
      for (let k = 0; k < 3; k++) expectClose(got[k]!, ref[k]!, 1e-4);
    });
  }

  it("conv2dTranspose (which runs Conv2DBackpropInput directly)", async () => {
    const graph = (): tf.Tensor[] => [
      tf.conv2dTranspose(
        tf.tensor4d(rand(2 * 4 * 4 * 3, 7), [2, 4, 4, 3]),
        tf.tensor4d(rand(3 * 3 * 5 * 3, 8), [3, 3, 5, 3]),
        [2, 8, 8, 5],
        2,
        "same",
      ),
    ];
    expectClose((await on("wasm", graph))[0]!, (await on("cpu", graph))[0]!, 1e-4);
  });
});

describe("BatchMatMul override matches the cpu backend", () => {
  const cases: Array<{ a: number[]; b: number[]; tA: boolean; tB: boolean; note: string }> = [
    { a: [33, 17], b: [17, 9], tA: false, tB: false, note: "2-D" },
    { a: [17, 33], b: [17, 9], tA: true, tB: false, note: "2-D transposeA" },
    { a: [33, 17], b: [9, 17], tA: false, tB: true, note: "2-D transposeB" },
    { a: [17, 33], b: [9, 17], tA: true, tB: true, note: "2-D both" },
    { a: [3, 20, 12], b: [12, 7], tA: false, tB: false, note: "rank-3 @ rank-2 (folded)" },
    { a: [2, 12, 20], b: [1, 7, 12], tA: true, tB: true, note: "broadcast batch 1, transposed" },
    { a: [4, 64, 64], b: [4, 64, 80], tA: false, tB: false, note: "split path" },
    { a: [3, 64, 64], b: [3, 80, 64], tA: false, tB: true, note: "split path, transposeB" },
    { a: [3, 128, 128], b: [3, 128, 16], tA: true, tB: false, note: "large Aᵀ, thin B: computed as (Bᵀ·A)ᵀ, split path (attention dV)" },
    { a: [2, 48, 48], b: [1, 6, 48], tA: false, tB: true, note: "broadcast B, transposeB" },
    { a: [2, 3, 10, 6], b: [2, 3, 5, 6], tA: false, tB: true, note: "rank-4 batched (stock path)" },
    { a: [2, 1, 5, 6], b: [1, 3, 6, 4], tA: false, tB: false, note: "broadcast both" },
    { a: [5, 6], b: [3, 6, 4], tA: false, tB: false, note: "rank-2 @ rank-3" },
  ];
  for (const [i, c] of cases.entries()) {
    it(`${c.note}: ${c.a} × ${c.b} tA=${c.tA} tB=${c.tB}`, async () => {
      const av = rand(size(c.a), 3 + i);
      const bv = rand(size(c.b), 300 + i);
      const graph = (): tf.Tensor[] => [tf.matMul(tf.tensor(av, c.a), tf.tensor(bv, c.b), c.tA, c.tB)];
      const ref = await on("cpu", graph);
      await tf.setBackend("wasm");
      const shape = tf.tidy(() => tf.matMul(tf.tensor(av, c.a), tf.tensor(bv, c.b), c.tA, c.tB).shape);
      await tf.setBackend("cpu");
      const refShape = tf.tidy(() => tf.matMul(tf.tensor(av, c.a), tf.tensor(bv, c.b), c.tA, c.tB).shape);
      expect(shape).toEqual(refShape);
      expectClose((await on("wasm", graph))[0]!, ref[0]!, 1e-4);
    });
  }

  it("keeps tfjs's message for mismatched inner dimensions", async () => {
    await tf.setBackend("wasm");
    expect(() => tf.tidy(() => tf.matMul(tf.ones([2, 3]), tf.ones([4, 2])))).toThrow(/inner shapes/);
  });
});

describe("training graph on wasm", () => {
  /**
   * f(x, W, V) = Σ (h·Vᵀ)² with h = conv2d(x, W, stride 2) flattened per image, V batched like h
   * (tfjs cannot take gradients through broadcast matMul batches, on any backend). The backward
   * pass runs all three overrides, with transposed operands.
   */
  const f = (x: tf.Tensor, w: tf.Tensor, v: tf.Tensor): tf.Scalar =>
    tf.tidy(() => {
      const h = tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 2, "same").reshape([2, -1, 6]);
      return tf.matMul(h, v, false, true).square().sum() as tf.Scalar;
    });

  it("analytic gradients agree with central finite differences", async () => {
    await tf.setBackend("wasm");
    const params = [
      tf.tensor(rand(2 * 6 * 6 * 3, 1), [2, 6, 6, 3]),
      tf.tensor(rand(3 * 3 * 3 * 6, 2), [3, 3, 3, 6]),
      tf.tensor(rand(2 * 4 * 6, 3), [2, 4, 6]),
    ];
    const grads = tf.grads(f)(params);
    for (let p = 0; p < 3; p++) {
      // Directional derivative along a random unit direction d: (f(θ+εd) − f(θ−εd)) / 2ε ≈ ⟨∇f, d⟩.
      const d = tf.tidy(() => {
        const r = tf.tensor(rand(params[p]!.size, 50 + p), params[p]!.shape);
        return r.div(r.norm());
      });
      const eps = 1e-2;
      const shifted = (sign: number): number =>
        tf.tidy(() => {
          const ps = params.map((t, j) => (j === p ? t.add(d.mul(sign * eps)) : t));
          return f(ps[0]!, ps[1]!, ps[2]!).dataSync()[0]!;
        });
      const fd = (shifted(1) - shifted(-1)) / (2 * eps);
      const analytic = tf.tidy(() => grads[p]!.mul(d).sum().dataSync()[0]!);
      expect(Math.abs(fd - analytic) / Math.max(Math.abs(analytic), 1e-3)).toBeLessThan(5e-3);
      d.dispose();
    }
    tf.dispose([...params, ...grads]);
  });

  it("leaks no tensors and no wasm buffers over many training steps", async () => {
    await tf.setBackend("wasm");
    const x = tf.tensor(rand(2 * 6 * 6 * 3, 1), [2, 6, 6, 3]);
    const w = tf.variable(tf.tensor(rand(3 * 3 * 3 * 6, 2), [3, 3, 3, 6]));
    const v = tf.variable(tf.tensor(rand(2 * 4 * 6, 3), [2, 4, 6]));
    const opt = tf.train.sgd(1e-3);
    const backend = tf.backend() as tf.KernelBackend & { wasm: { HEAPU8: Uint8Array } };
    const step = (): void => {
      const loss = opt.minimize(() => f(x, w, v), true);
      loss?.dispose();
      tf.tidy(() => tf.matMul(tf.ones([3, 64, 64]), tf.ones([3, 64, 64]), true, false)).dispose(); // split path
    };
    for (let i = 0; i < 3; i++) step(); // warm-up: optimizer state and heap growth
    const before = { tensors: tf.memory().numTensors, ids: backend.numDataIds(), heap: backend.wasm.HEAPU8.length };
    for (let i = 0; i < 30; i++) step();
    expect(tf.memory().numTensors).toBe(before.tensors);
    expect(backend.numDataIds()).toBe(before.ids);
    expect(backend.wasm.HEAPU8.length).toBe(before.heap);
    opt.dispose();
    tf.dispose([x, w, v]);
  });
});
