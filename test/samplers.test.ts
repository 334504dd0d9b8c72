import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { type Denoiser, type StepInfo, Rng, ddim, eulerAncestral, eulerSampler, samplerByName, withRestoredRng } from "../src/diffusion";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

// The test's own SD 1.x tables, from the formula in plain float64 (independent of src/diffusion).
const AC: number[] = [];
{
  const a = Math.sqrt(0.00085);
  const b = Math.sqrt(0.012);
  let prod = 1;
  for (let i = 0; i < 1000; i++) {
    const r = a + (i * (b - a)) / 999;
    prod *= 1 - r * r;
    AC.push(prod);
  }
}
const LOG_SIGMA = AC.map((a) => 0.5 * Math.log((1 - a) / a));

/** ᾱ at a possibly fractional t: ln σ interpolated linearly, ᾱ = 1/(1+σ²). */
function alphaBar(t: number): number {
  const lo = Math.floor(t);
  const hi = Math.ceil(t);
  const w = t - lo;
  const s2 = Math.exp(2 * ((1 - w) * LOG_SIGMA[lo]! + w * LOG_SIGMA[hi]!));
  return 1 / (1 + s2);
}

/**
 * Optimal ε-predictor when the data is Gaussian N(μ, s²) per element:
 * E[ε | x_t] = √(1−ᾱ)·(x_t − √ᾱ·μ)/(ᾱ·s² + 1 − ᾱ). With s = 0 the data is the single point μ and
 * this is the exact ε = (x_t − √ᾱ·μ)/√(1−ᾱ).
 */
function gaussianDenoiser(mu: number, s: number): Denoiser {
  return (x, t) =>
    tf.tidy(() => {
      const a = t.map(alphaBar);
      const shift = tf.tensor(
        a.map((ai) => Math.sqrt(ai) * mu),
        [t.length, 1, 1, 1],
      );
      const gain = tf.tensor(
        a.map((ai) => Math.sqrt(1 - ai) / (ai * s * s + 1 - ai)),
        [t.length, 1, 1, 1],
      );
      return tf.mul(gain, tf.sub(x, shift)) as tf.Tensor4D;
    });
}

const SHAPE: [number, number, number, number] = [2, 3, 3, 2];
const SIZE = 36;
const COND = () => tf.ones([1, 1]);

function stats(v: Float32Array): { mean: number; std: number } {
  let m = 0;
  for (const x of v) m += x;
  m /= v.length;
  let s = 0;
  for (const x of v) s += (x - m) ** 2;
  return { mean: m, std: Math.sqrt(s / v.length) };
}

describe("samplers recover a known x0 from pure noise (exact ε-predictor)", () => {
  const x0 = 0.7;
  it("DDIM η=0: every x̂₀ is x0, and the result is x at ᾱ₀ along the initial ε", async () => {
    const cond = COND();
    const x0s: Float32Array[] = [];
    const ts: number[] = [];
    const out = await ddim({ steps: 20 }).sample({
      denoiser: gaussianDenoiser(x0, 0),
      shape: SHAPE,
      cond,
      seed: 1,
      callback: (info) => {
        x0s.push(info.x0.dataSync() as Float32Array);
        ts.push(info.t);
      },
    });
    expect(ts).toEqual(Array.from({ length: 20 }, (_, i) => 951 - 50 * i));
    expectClose(x0s[x0s.length - 1]!, new Array(SIZE).fill(x0), 1e-3);
    // DDIM with η=0 keeps ε fixed for a point mass: x_final = √ᾱ₀·x0 + √(1−ᾱ₀)·ε_T, where
    // ε_T = (z − √ᾱ_T·x0)/√(1−ᾱ_T) from the initial noise z = Rng(seed).normal.
    const z = new Rng(1).normal(SIZE);
    const aT = AC[951]!;
    const expected = Array.from(
      z,
      (zi) => Math.sqrt(AC[0]!) * x0 + Math.sqrt(1 - AC[0]!) * ((zi - Math.sqrt(aT) * x0) / Math.sqrt(1 - aT)),
    );
    expectClose(out.dataSync() as Float32Array, expected, 1e-4);
    tf.dispose([out, cond]);
  });

  for (const make of [
    () => eulerSampler({ steps: 20 }),
    () => eulerAncestral({ steps: 20 }),
    () => eulerSampler({ steps: 10, sigmas: "karras" }),
  ]) {
    const s = make();
    it(`${s.name} (${s.steps} steps) ends at x0`, async () => {
      const cond = COND();
      const out = await s.sample({ denoiser: gaussianDenoiser(x0, 0), shape: SHAPE, cond, seed: 2 });
      expectClose(out.dataSync() as Float32Array, new Array(SIZE).fill(x0), 1e-3);
      tf.dispose([out, cond]);
    });
  }
});

/**
 * The update equations written out in float64 for one element, for the Gaussian denoiser (linear
 * in x, so each element evolves on its own): DDIM (CompVis, uniform +1 spacing) or Euler/Euler a in
 * σ space (k-diffusion discrete spacing). `draw()` returns the next normal for this element in the
 * order the sampler draws them (initial noise, then one per noisy step).
 */
function referenceRun(kind: "ddim" | "euler", steps: number, eta: number, mu: number, s: number, draw: () => number): number {
  const g = (a: number) => Math.sqrt(1 - a) / (a * s * s + 1 - a); // ε̂ = g·(x_t − √ᾱ·μ)
  if (kind === "ddim") {
    const c = Math.floor(1000 / steps);
    const ts: number[] = [];
    for (let t = 0; t < 1000; t += c) ts.push(t + 1);
    let x = draw();
    for (let k = ts.length - 1; k >= 0; k--) {
      const a = AC[ts[k]!]!;
      const ap = k > 0 ? AC[ts[k - 1]!]! : AC[0]!;
      const e = g(a) * (x - Math.sqrt(a) * mu);
      const x0 = (x - Math.sqrt(1 - a) * e) / Math.sqrt(a);
      const sig = eta * Math.sqrt((1 - ap) / (1 - a)) * Math.sqrt(1 - a / ap);
      x = Math.sqrt(ap) * x0 + Math.sqrt(1 - ap - sig * sig) * e + (sig > 0 ? sig * draw() : 0);
    }
    return x;
  }
  const sig: number[] = [];
  for (let i = 0; i < steps; i++) {
    const a = alphaBar(steps === 1 ? 999 : 999 - (999 * i) / (steps - 1));
    sig.push(Math.sqrt((1 - a) / a));
  }
  sig.push(0);
  let x = sig[0]! * draw();
  for (let i = 0; i < steps; i++) {
    const S = sig[i]!;
    const N = sig[i + 1]!;
    const a = 1 / (1 + S * S);
    const e = g(a) * (x / Math.sqrt(S * S + 1) - Math.sqrt(a) * mu);
    const up = N > 0 ? Math.min(N, eta * Math.sqrt((N * N * (S * S - N * N)) / (S * S))) : 0;
    const down = Math.sqrt(N * N - up * up);
    x = x + e * (down - S) + (up > 0 ? up * draw() : 0);
  }
  return x;
}

describe("samplers follow their update equations (Gaussian data N(μ, s²), optimal denoiser)", () => {
  const mu = 0.5;
  const sd = 0.8;
  const cases = [
    { s: ddim({ steps: 8 }), kind: "ddim", eta: 0 },
    { s: ddim({ steps: 8, eta: 0.8 }), kind: "ddim", eta: 0.8 },
    { s: eulerSampler({ steps: 8 }), kind: "euler", eta: 0 },
    { s: eulerAncestral({ steps: 8 }), kind: "euler", eta: 1 },
  ] as const;
  for (const { s, kind, eta } of cases) {
    it(`${s.name} η=${eta}: every element matches the float64 equations`, async () => {
      const cond = COND();
      const out = await s.sample({ denoiser: gaussianDenoiser(mu, sd), shape: SHAPE, cond, seed: 3 });
      // Replay the sampler's draws: each draw is one normal per element, in element order.
      const rng = new Rng(3);
      const draws: Float32Array[] = [];
      const expected = Array.from({ length: SIZE }, (_, j) => {
        let n = 0;
        return referenceRun(kind, 8, eta, mu, sd, () => {
          if (j === 0) draws.push(rng.normal(SIZE));
          return draws[n++]![j]!;
        });
      });
      expectClose(out.dataSync() as Float32Array, expected, 2e-4, 1e-4);
      tf.dispose([out, cond]);
    });
  }

  for (const s of [ddim({ steps: 100 }), eulerAncestral({ steps: 100 })]) {
    it(`${s.name}, 100 steps: samples have the data's mean and std (first-order error ≈ 1–3 %)`, async () => {
      const cond = COND();
      const out = await s.sample({ denoiser: gaussianDenoiser(mu, 1), shape: [1, 32, 32, 4], cond, seed: 3 });
      const { mean, std } = stats(out.dataSync() as Float32Array);
      // 4096 samples: SE(mean) ≈ 0.016, SE(std) ≈ 0.011. Deterministic samplers also keep the
      // −μ·s/σ_max offset of the zero-mean start (≈ −0.035 here): terminal SNR is not zero.
      expect(Math.abs(mean - mu)).toBeLessThan(0.08);
      expect(Math.abs(std - 1)).toBeLessThan(0.05);
      tf.dispose([out, cond]);
    });
  }
});

describe("classifier-free guidance", () => {
  /** ε = a where cond is 1 and b where cond is 0, whatever x; records each call. */
  function constantDenoiser(a: number, b: number, calls: { batch: number; t: readonly number[] }[]): Denoiser {
    return (x, t, cond) => {
      calls.push({ batch: x.shape[0], t });
      const c = tf.reshape(cond, [x.shape[0], 1, 1, 1]);
      return tf.add(tf.zerosLike(x), tf.add(b, tf.mul(c, a - b))) as tf.Tensor4D;
    };
  }

  it("one batched call per step, ε = ε_u + s·(ε_c − ε_u)", async () => {
    const calls: { batch: number; t: readonly number[] }[] = [];
    const cond = tf.ones([1, 1]);
    const uncond = tf.zeros([1, 1]);
    let seen: Float32Array | undefined;
    let sigma = 0;
    const out = await eulerSampler({ steps: 1 }).sample({
      denoiser: constantDenoiser(0.3, -0.2, calls),
      shape: SHAPE,
      cond,
      uncond,
      guidanceScale: 7.5,
      seed: 4,
      callback: (info: StepInfo) => {
        seen = info.x0.dataSync() as Float32Array;
        sigma = info.sigma;
      },
    });
    expect(calls.length).toBe(1);
    expect(calls[0]!.batch).toBe(2 * SHAPE[0]);
    expect(calls[0]!.t.length).toBe(4);
    for (const t of calls[0]!.t) expect(t).toBeCloseTo(999, 6);
    // One Euler step from σ_max: x = σ·z, x̂₀ = x − σ·ε with ε = −0.2 + 7.5·(0.3 − (−0.2)) = 3.55.
    // (σ_max of the float32 σ list A1111 uses: within float32 precision of the float64 value)
    expect(Math.abs(sigma / Math.exp(LOG_SIGMA[999]!) - 1)).toBeLessThan(5e-7);
    const z = new Rng(4).normal(SIZE);
    expectClose(
      seen!,
      Array.from(z, (zi) => sigma * zi - sigma * 3.55),
      1e-3,
      1e-5,
    );
    expectClose(out.dataSync() as Float32Array, seen!, 1e-4); // σ₁ = 0: the result is x̂₀
    tf.dispose([out, cond, uncond]);
  });

  it("scale 1 or no uncond: a single unguided call with the cond batch", async () => {
    const calls: { batch: number; t: readonly number[] }[] = [];
    const cond = tf.ones([1, 1]);
    const uncond = tf.zeros([1, 1]);
    let x0: Float32Array | undefined;
    const out = await ddim({ steps: 1 }).sample({
      denoiser: constantDenoiser(0.3, -0.2, calls),
      shape: SHAPE,
      cond,
      uncond,
      guidanceScale: 1,
      seed: 5,
      callback: (info) => {
        x0 = info.x0.dataSync() as Float32Array;
      },
    });
    expect(calls.map((c) => c.batch)).toEqual([SHAPE[0]]);
    expect(calls[0]!.t).toEqual([1, 1]);
    const z = new Rng(5).normal(SIZE);
    expectClose(
      x0!,
      Array.from(z, (zi) => (zi - Math.sqrt(1 - AC[1]!) * 0.3) / Math.sqrt(AC[1]!)),
      1e-5,
    );
    tf.dispose([out, cond, uncond]);
  });

  it("mismatched cond/uncond shapes or batch are rejected clearly", async () => {
    const cond = tf.ones([1, 2]);
    const uncond = tf.zeros([1, 3]);
    const s = ddim({ steps: 1 });
    const d = gaussianDenoiser(0, 0);
    await expect(s.sample({ denoiser: d, shape: SHAPE, cond, uncond, seed: 1 })).rejects.toThrow(/match beyond the batch axis/);
    const cond3 = tf.ones([3, 2]);
    await expect(s.sample({ denoiser: d, shape: SHAPE, cond: cond3, seed: 1 })).rejects.toThrow(/batch 1 or 2/);
    await expect(s.sample({ denoiser: d, shape: SHAPE, cond })).rejects.toThrow(/seed/);
    tf.dispose([cond, uncond, cond3]);
  });
});

describe("reproducibility and RNG state", () => {
  const noisyDenoiser = gaussianDenoiser(0.2, 0.5);
  for (const s of [ddim({ steps: 6, eta: 0.7 }), eulerAncestral({ steps: 6 })]) {
    it(`${s.name}: same seed → bit-identical latents; another seed → different`, async () => {
      const cond = COND();
      const run = async (seed: number) => {
        const out = await s.sample({ denoiser: noisyDenoiser, shape: SHAPE, cond, seed });
        const v = out.dataSync() as Float32Array;
        out.dispose();
        return v;
      };
      const a = await run(10);
      expect(await run(10)).toEqual(a);
      expect(await run(11)).not.toEqual(a);
      cond.dispose();
    });
  }

  it("a passed rng is advanced (per-step noise drawn) and can be restored around a preview", async () => {
    const cond = COND();
    const rng = new Rng(99);
    const before = rng.getState();
    const out = await withRestoredRng(rng, () => eulerAncestral({ steps: 4 }).sample({ denoiser: noisyDenoiser, shape: SHAPE, cond, rng }));
    expect(rng.getState()).toEqual(before);
    const out2 = await eulerAncestral({ steps: 4 }).sample({ denoiser: noisyDenoiser, shape: SHAPE, cond, rng });
    expect(out2.dataSync()).toEqual(out.dataSync());
    // Initial noise + 3 noisy steps (the last step to σ = 0 adds none): 4 draws of 36 normals.
    const expected = new Rng(99);
    expected.normal(4 * SIZE);
    expect(rng.getState()).toEqual(expected.getState());
    tf.dispose([out, out2, cond]);
  });
});

describe("memory", () => {
  const d = gaussianDenoiser(0.1, 0.4);
  for (const make of [
    (n: number) => ddim({ steps: n, eta: 0.5 }),
    (n: number) => eulerAncestral({ steps: n }),
    (n: number) => samplerByName("Euler", { steps: n }),
  ]) {
    for (const steps of [1, 5]) {
      const s = make(steps);
      it(`${s.name}, ${steps} step(s) with CFG and a callback: no tensors leak`, async () => {
        const cond = tf.ones([1, 1]);
        const uncond = tf.zeros([1, 1]);
        let calls = 0;
        await expectNoLeak(async () => {
          const out = await s.sample({
            denoiser: d,
            shape: SHAPE,
            cond,
            uncond,
            seed: 1,
            callback: async (info) => {
              calls++;
              expect(info.x.isDisposed).toBe(false);
              expect(info.x0.shape).toEqual(SHAPE);
            },
          });
          out.dispose();
        });
        expect(calls).toBe(steps);
        expect(cond.isDisposed || uncond.isDisposed).toBe(false);
        tf.dispose([cond, uncond]);
      });
    }
  }

  it("a denoiser returning the wrong shape fails clearly and leaks nothing", async () => {
    const cond = COND();
    const bad: Denoiser = (_x) => tf.zeros([1, 1, 1, 1]) as tf.Tensor4D;
    await expectNoLeak(async () => {
      await expect(ddim({ steps: 3 }).sample({ denoiser: bad, shape: SHAPE, cond, seed: 1 })).rejects.toThrow(
        /must predict ε with the input's shape/,
      );
    });
    cond.dispose();
  });
});

describe("samplerByName", () => {
  it("knows A1111's names", () => {
    expect(samplerByName("DDIM", { steps: 5 }).name).toBe("DDIM");
    expect(samplerByName("Euler a", { steps: 5 }).name).toBe("Euler a");
    expect(samplerByName("euler", { steps: 5 }).name).toBe("Euler");
    // PLMS is an A1111 sampler now (test/ksamplers.test.ts); DPM fast is one this project lacks
    expect(() => samplerByName("DPM fast", { steps: 5 })).toThrow(/"DDIM", "Euler a", "Euler"/);
  });
});
