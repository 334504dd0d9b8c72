/**
 * A1111's samplers against the real code: test/fixtures/ksamplers.json holds runs of k-diffusion's
 * sampling functions (the commit A1111 pins) and of A1111's DDIM / PLMS / UniPC on a toy ε-model,
 * in float64, made by test/scripts/make_ksampler_fixtures.py. Here the same toy model runs in tfjs
 * (float32) through `samplerByName`, fed the same pre-drawn noise, and every final latent, every
 * step's x̂₀, every model timestep and every noise request is compared.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import {
  type Denoiser,
  type NoiseSampler,
  Rng,
  a1111Sigmas,
  a1111Timesteps,
  brownianTreeNoiseSampler,
  eulerAncestral,
  karrasSigmas,
  lmsCoefficient,
  resolveSamplerName,
  samplerByName,
  sd15Schedule,
} from "../src/diffusion";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

interface Case {
  sampler: string;
  schedule: "discrete" | "karras" | "exponential" | "timesteps";
  steps: number;
  sigmas?: number[];
  timesteps?: number[];
  calls: number[];
  noiseUsed: number;
  noiseRequests: [number, number][];
  denoised: (number[] | null)[];
  x: number[];
  eta?: number;
}
interface Fixture {
  shapeNHWC: [number, number, number, number];
  cfgScale: number;
  A: number[];
  noise: number[][];
  sigmaMin: number;
  sigmaMax: number;
  sigmaToT: { sigma: number[]; t: number[] };
  cases: Case[];
}
const FX = JSON.parse(fs.readFileSync(fixture("ksamplers.json"), "utf8")) as Fixture;
const SHAPE = FX.shapeNHWC;

/**
 * Latents and x̂₀: |got − want| ≤ ATOL + RTOL·|want| (float32 tfjs here, float64 in the fixture).
 * Measured over the 42 runs (final latents, values up to ~68): worst absolute error 3.1e-5 (DPM++ 2M
 * exponential, on a value of ~48: 6e-7 of the largest value), worst elementwise relative error
 * 1.1e-5 (DPM++ 2S a, on an element of ~1.3).
 */
const RTOL = 1e-5;
const ATOL = 1e-5;

/** The fixture's toy ε-model in tfjs: per image, on v = the 16 latent values, c = ±1 from cond. */
function toyDenoiser(calls: number[], A: tf.Tensor2D): Denoiser {
  return (x, t, cond) =>
    tf.tidy(() => {
      calls.push(t[0]!);
      const n = x.shape[0];
      const v = tf.reshape(x, [n, 16]);
      const tt = tf.tensor2d(t as number[], [n, 1]);
      const c = tf.reshape(cond, [n, 1]);
      const eps = tf.add(
        tf.add(tf.mul(tf.tanh(tf.matMul(v, A, false, true)), 0.5), tf.mul(tf.mul(tf.cos(tf.div(tt, 300)), 0.1), v)),
        tf.add(tf.mul(tf.sin(tf.div(tt, 200)), 0.05), tf.mul(c, 0.03)),
      );
      return tf.reshape(eps, x.shape) as tf.Tensor4D;
    });
}

/** The fixture's noise, handed out in order to both the rng and the SDE noise sampler. */
class NoiseFeed {
  used = 0;
  requests: [number, number][] = [];
  next(n: number): Float32Array {
    const d = FX.noise[this.used++];
    if (!d || d.length !== n) throw new Error(`noise feed: draw ${this.used - 1} of ${n} values is not in the fixture`);
    return Float32Array.from(d);
  }
  /** Stands in for an `Rng` (samplers only call `normal`). */
  rng(): Rng {
    return { normal: (n: number) => this.next(n) } as unknown as Rng;
  }
  sampler(): NoiseSampler {
    return (s, sn) => {
      this.requests.push([s, sn]);
      return this.next(SHAPE.reduce((a, b) => a * b, 1));
    };
  }
}

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (ATOL + RTOL * Math.abs(want[i]!)));
  return worst;
}

async function runCase(c: Case) {
  const calls: number[] = [];
  const feed = new NoiseFeed();
  const sampler = samplerByName(c.sampler, {
    steps: c.steps,
    ...(c.schedule !== "timesteps" ? { sigmas: c.schedule } : {}),
    ...(c.eta !== undefined ? { eta: c.eta } : {}),
  });
  const cond = tf.ones([1, 1]);
  const uncond = tf.fill([1, 1], -1);
  const x0s: (number[] | null)[] = [];
  const A = tf.tensor2d(FX.A, [16, 16]);
  const out = await sampler.sample({
    denoiser: toyDenoiser(calls, A),
    shape: SHAPE,
    cond,
    uncond,
    guidanceScale: FX.cfgScale,
    rng: feed.rng(),
    noiseSampler: feed.sampler(),
    callback: (info) => void x0s.push(Array.from(info.x0.dataSync())),
  });
  const x = Array.from(out.dataSync());
  tf.dispose([out, cond, uncond, A]);
  return { sampler, x, calls, feed, x0s };
}

describe("samplerByName reproduces k-diffusion and A1111 on a toy model (fixture from the real code)", () => {
  const label = (c: Case) => `${c.sampler} ${c.schedule} ${c.steps} steps${c.eta !== undefined ? ` eta ${c.eta}` : ""}`;
  it.each(FX.cases.map((c) => [label(c), c] as const))("%s", async (_, c) => {
    const { sampler, x, calls, feed, x0s } = await runCase(c);
    // the σ list (or timesteps) A1111 would use: its float32 list, bit for bit
    if (c.sigmas) expect(Array.from(sampler.sigmas()!)).toEqual(c.sigmas);
    else expect(a1111Timesteps(c.steps)).toEqual(c.timesteps);
    // one model call per fixture call, at the same (fractional) timesteps (k-diffusion computes them
    // in float32 as this project does, 570.857117 for 570.857143; the fixture in float64: hence 1e-4)
    expect(calls.length).toBe(c.calls.length);
    expectClose(calls, c.calls, 1e-4, 1e-9);
    // the same noise consumed, SDE noise asked for the same intervals
    expect(feed.used).toBe(c.noiseUsed);
    expect(feed.requests.length).toBe(c.noiseRequests.length);
    expectClose(feed.requests.flat(), c.noiseRequests.flat(), 0, 1e-6);
    // every step's x̂₀ and the result
    expect(x0s.length).toBe(c.denoised.length);
    c.denoised.forEach((d, i) => {
      if (d) expect(relErr(x0s[i]!, d), `x̂₀ of step ${i}`).toBeLessThanOrEqual(1);
    });
    expect(relErr(x, c.x), "final latents").toBeLessThanOrEqual(1);
  });
});

describe("A1111's σ schedule choice by name", () => {
  it("resolves current names to A1111 1.10's default schedule, and DPM2 / DPM2 a discard the next-to-last σ", () => {
    const table: [string, string | null, boolean][] = [
      ["Euler a", "discrete", false],
      ["Euler", "discrete", false],
      ["LMS", "discrete", false],
      ["Heun", "discrete", false],
      ["DPM2", "karras", true],
      ["DPM2 a", "karras", true],
      ["DPM++ 2S a", "karras", false],
      ["DPM++ 2M", "karras", false],
      ["DPM++ SDE", "karras", false],
      ["DPM++ 2M SDE", "exponential", false],
      ["DDIM", null, false],
      ["PLMS", null, false],
      ["UniPC", null, false],
    ];
    for (const [name, spacing, discard] of table) {
      expect(resolveSamplerName(name), name).toEqual({ name, sigmaSpacing: spacing, discardPenultimateSigma: discard });
    }
  });

  it("reads legacy combined names and aliases the way A1111 1.10 does", () => {
    const legacy: [string, string, string | null][] = [
      ["DPM++ 2M Karras", "DPM++ 2M", "karras"],
      ["LMS Karras", "LMS", "karras"],
      ["DPM2 a Karras", "DPM2 a", "karras"],
      ["DPM++ SDE Karras", "DPM++ SDE", "karras"],
      ["DPM++ 2M SDE Karras", "DPM++ 2M SDE", "karras"],
      ["DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "exponential"],
      ["Euler Karras", "Euler", "karras"],
      ["DPM++ 2M Uniform", "DPM++ 2M", "discrete"],
      ["DPM++ 2M Automatic", "DPM++ 2M", "karras"],
      ["dpm++ 2m karras", "DPM++ 2M", "karras"],
      ["  Euler   a ", "Euler a", "discrete"],
      ["k_dpmpp_2m_ka", "DPM++ 2M", "karras"],
      ["k_lms", "LMS", "discrete"],
      ["k_euler_a", "Euler a", "discrete"],
      ["DDIM Karras", "DDIM", null],
    ];
    for (const [input, name, spacing] of legacy) expect(resolveSamplerName(input), input).toMatchObject({ name, sigmaSpacing: spacing });
    // an explicit choice beats the default, but may not contradict a label in the name
    expect(resolveSamplerName("DPM++ 2M", "discrete").sigmaSpacing).toBe("discrete");
    expect(resolveSamplerName("Euler a", "Karras").sigmaSpacing).toBe("karras");
    expect(resolveSamplerName("DPM++ 2M Karras", "karras").sigmaSpacing).toBe("karras");
    expect(() => resolveSamplerName("DPM++ 2M Karras", "exponential")).toThrow(/names the karras schedule but sigmas is "exponential"/);
  });

  it("names what it cannot do", () => {
    expect(() => samplerByName("DPM fast", { steps: 5 })).toThrow(
      /"DPM fast" is an A1111 sampler this project does not implement; choose one of "DDIM", "Euler a", "Euler"/,
    );
    expect(() => samplerByName("DPM++ 2M Polyexponential", { steps: 5 })).toThrow(
      /"Polyexponential" is an A1111 schedule type this project does not implement/,
    );
    expect(() => samplerByName("Eulr", { steps: 5 })).toThrow(/unknown sampler "Eulr"/);
    expect(() => samplerByName("Euler", { steps: 0 })).toThrow(/steps must be a positive integer/);
    expect(() => samplerByName("Euler", { steps: 5, sigmas: "cosine" as "karras" })).toThrow(/unknown sigmas "cosine"/);
    expect(() => samplerByName("UniPC", { steps: 2 })).toThrow(/UniPC: A1111 needs at least 3 timesteps/);
    expect(() => samplerByName("DDIM", { steps: 1 })).toThrow(/use at least 2 steps/);
  });

  it("gives DPM2 one Karras step more with its next-to-last σ dropped, and A1111's timesteps to DDIM", () => {
    const s = samplerByName("DPM2", { steps: 6 });
    const full = karrasSigmas(7, sd15Schedule());
    expect(Array.from(s.sigmas()!)).toEqual([...Array.from(full.subarray(0, 6)), 0]);
    expect(Array.from(a1111Sigmas("karras", 6, true))).toEqual(Array.from(s.sigmas()!));
    expect(samplerByName("DDIM", { steps: 20 }).sigmas()).toBeNull();
    expect(a1111Timesteps(20)).toEqual(Array.from({ length: 20 }, (_, i) => 1 + 50 * i));
    expect(a1111Timesteps(30)).toHaveLength(31); // ⌊1000/30⌋ = 33: A1111 runs 30 steps over 31 timesteps
    expect(a1111Timesteps(1000).at(-1)).toBe(999);
  });

  it("the schedule's σ range and σ→t map match k-diffusion's CompVisDenoiser", () => {
    // σ_min/σ_max of the float32 table exactly; sigma_to_t here in float32, the fixture's in float64
    const s = sd15Schedule();
    expect([s.sigmaMin, s.sigmaMax]).toEqual([FX.sigmaMin, FX.sigmaMax]);
    expectClose(
      FX.sigmaToT.sigma.map((v) => s.sigmaToT(v)),
      FX.sigmaToT.t,
      1e-4,
      1e-9,
    );
  });

  it("LMS weights integrate the Lagrange basis exactly", () => {
    // order 2 at σ = 3, 2 → 1, by hand: ∫ from 2 to 1 of (τ−3)/(2−3) dτ = −1.5 and of (τ−2)/(3−2) dτ = 0.5
    expect(lmsCoefficient(2, [3, 2, 1], 1, 0)).toBeCloseTo(-1.5, 12);
    expect(lmsCoefficient(2, [3, 2, 1], 1, 1)).toBeCloseTo(0.5, 12);
    // the weights of any order sum to the interval length (they integrate 1)
    const sig = [14.6, 7.1, 3.2, 1.4, 0.6, 0];
    for (let order = 1; order <= 4; order++) {
      let sum = 0;
      for (let j = 0; j < order; j++) sum += lmsCoefficient(order, sig, 4, j);
      expect(sum).toBeCloseTo(sig[5]! - sig[4]!, 12);
    }
  });
});

describe("samplers from samplerByName", () => {
  const gauss: Denoiser = (x) => tf.tidy(() => tf.mul(x, 0.5) as tf.Tensor4D);
  const shape: [number, number, number, number] = [2, 3, 3, 2];

  it("Euler and Euler a are the existing samplers, bit for bit", async () => {
    const cond = tf.ones([1, 1]);
    const a = await samplerByName("Euler a", { steps: 6 }).sample({ denoiser: gauss, shape, cond, seed: 5 });
    const b = await eulerAncestral({ steps: 6 }).sample({ denoiser: gauss, shape, cond, seed: 5 });
    expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
    tf.dispose([a, b, cond]);
  });

  it.each([
    "Euler a",
    "Euler",
    "Heun",
    "DPM2",
    "DPM2 a",
    "LMS",
    "DPM++ 2M",
    "DPM++ 2S a",
    "DPM++ SDE",
    "DPM++ 2M SDE Karras",
    "DDIM",
    "PLMS",
    "UniPC",
  ])("%s leaves no tensors behind, with or without CFG, and reproduces from its seed", async (name) => {
    const cond = tf.ones([1, 1]);
    const uncond = tf.zeros([1, 1]);
    const run = async (guided: boolean) => {
      const steps: number[] = [];
      const out = await samplerByName(name, { steps: 5 }).sample({
        denoiser: gauss,
        shape,
        cond,
        ...(guided ? { uncond } : {}),
        seed: 11,
        callback: (i) => void steps.push(i.step),
      });
      const v = Array.from(out.dataSync());
      out.dispose();
      expect(v.every(Number.isFinite)).toBe(true);
      return { v, steps };
    };
    const a = await expectNoLeak(() => run(true));
    await expectNoLeak(() => run(false));
    const b = await run(true);
    expect(a.v).toEqual(b.v);
    expect(a.steps).toEqual(Array.from({ length: a.steps.length }, (_, i) => i));
    tf.dispose([cond, uncond]);
  });

  it("frees everything when the callback throws mid-run", async () => {
    const cond = tf.ones([1, 1]);
    for (const name of ["DPM++ 2M", "LMS", "PLMS", "UniPC", "DPM++ 2M SDE"]) {
      await expectNoLeak(async () => {
        await expect(
          samplerByName(name, { steps: 6 }).sample({
            denoiser: gauss,
            shape,
            cond,
            seed: 1,
            callback: (i) => {
              if (i.step === 3) throw new Error("stop");
            },
          }),
        ).rejects.toThrow("stop");
      });
    }
    cond.dispose();
  });

  it("SDE samplers default to a Brownian tree over the run's σ range seeded with seed + i", async () => {
    const cond = tf.ones([1, 1]);
    const s = samplerByName("DPM++ 2M SDE", { steps: 6 });
    const sig = s.sigmas()!;
    const a = await s.sample({ denoiser: gauss, shape, cond, seed: 40 });
    const b = await s.sample({
      denoiser: gauss,
      shape,
      cond,
      seed: 40,
      noiseSampler: brownianTreeNoiseSampler(shape, sig[sig.length - 2]!, sig[0]!, [40, 41]),
    });
    const c = await s.sample({ denoiser: gauss, shape, cond, rng: new Rng(40), brownianSeeds: [7, 8] });
    expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
    expect(Array.from(a.dataSync())).not.toEqual(Array.from(c.dataSync()));
    tf.dispose([a, b, c, cond]);
  });
});

describe("Brownian tree noise (k-diffusion BrownianTreeNoiseSampler semantics)", () => {
  const N = 4096;
  const shape = [2, N, 1, 1];
  const stats = (v: Float32Array) => {
    const m = v.reduce((a, b) => a + b, 0) / v.length;
    return { mean: m, std: Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / v.length) };
  };
  const corr = (a: Float32Array, b: Float32Array) => {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
    return s / a.length;
  };

  it("is a fixed path per seed: same requests, same noise; image i depends only on seed i", () => {
    const ns = brownianTreeNoiseSampler(shape, 0.03, 14.6, [3, 4]);
    const again = brownianTreeNoiseSampler(shape, 0.03, 14.6, [3, 4]);
    const single = brownianTreeNoiseSampler([1, N, 1, 1], 0.03, 14.6, [4]);
    const a = ns(5.2, 2.1);
    expect(Array.from(again(5.2, 2.1))).toEqual(Array.from(a));
    expect(Array.from(single(5.2, 2.1))).toEqual(Array.from(a.subarray(N)));
    expect(Array.from(a.subarray(0, N))).not.toEqual(Array.from(a.subarray(N)));
  });

  it("gives unit-variance increments that add up along the path, correlated as overlapping pieces of it", () => {
    const ns = brownianTreeNoiseSampler(shape, 0.03, 14.6, [9, 10]);
    const [a, b, c] = [9.0, 4.0, 1.0];
    const ab = ns(a, b);
    const bc = ns(b, c);
    const ac = ns(a, c);
    for (const v of [ab, bc, ac]) {
      const s = stats(v);
      expect(Math.abs(s.mean)).toBeLessThan(0.05);
      expect(Math.abs(s.std - 1)).toBeLessThan(0.05);
    }
    // W(c) − W(a) = (W(b) − W(a)) + (W(c) − W(b))
    const sum = ab.map((v, i) => v * Math.sqrt(a - b) + bc[i]! * Math.sqrt(b - c));
    expectClose(
      ac.map((v) => v * Math.sqrt(a - c)),
      sum,
      1e-4,
    );
    // disjoint pieces are independent; a piece and the whole correlate as √(piece/whole)
    expect(Math.abs(corr(ab, bc))).toBeLessThan(0.05);
    expect(Math.abs(corr(ab, ac) - Math.sqrt((a - b) / (a - c)))).toBeLessThan(0.05);
    // asking for the interval the other way round flips the sign, as k-diffusion's does
    expectClose(
      ns(b, a),
      ab.map((v) => -v),
      1e-6,
    );
  });

  it("rejects bad arguments clearly", () => {
    expect(() => brownianTreeNoiseSampler(shape, 0, 14.6, [1, 2])).toThrow(/0 < sigmaMin < sigmaMax/);
    expect(() => brownianTreeNoiseSampler(shape, 0.03, 14.6, [1])).toThrow(/one non-negative integer seed per image \(2\)/);
  });
});
