import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import {
  NoiseSchedule,
  Rng,
  ancestralStep,
  ddimTimesteps,
  discreteSigmas,
  karrasSigmas,
  qSample,
  randint,
  randn,
  scaledLinearBetas,
  sd15Schedule,
  vTarget,
  withRestoredRng,
} from "../src/diffusion";
import { expectClose, expectNoLeak, expectTensorClose, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

/** ᾱ for SD 1.x straight from the formula, in plain float64 (independent of the module). */
function referenceAlphasCumprod(): number[] {
  const a = Math.sqrt(0.00085);
  const b = Math.sqrt(0.012);
  const out: number[] = [];
  let prod = 1;
  for (let i = 0; i < 1000; i++) {
    const r = a + (i * (b - a)) / 999;
    prod *= 1 - r * r;
    out.push(prod);
  }
  return out;
}

describe("scaled-linear schedule", () => {
  const s = sd15Schedule();
  const ref = referenceAlphasCumprod();

  it("betas: first, last and a middle entry from the formula", () => {
    expect(s.betas.length).toBe(1000);
    expect(s.betas[0]).toBeCloseTo(0.00085, 15);
    expect(s.betas[999]).toBeCloseTo(0.012, 15);
    const mid = (Math.sqrt(0.00085) + (500 * (Math.sqrt(0.012) - Math.sqrt(0.00085))) / 999) ** 2;
    expect(Math.abs(s.betas[500]! - mid)).toBeLessThan(1e-16);
    for (let i = 1; i < 1000; i++) expect(s.betas[i]!).toBeGreaterThan(s.betas[i - 1]!);
  });

  it("ᾱ matches a plain float64 cumulative product and the known SD values", () => {
    expectClose(s.alphasCumprod, ref, 1e-14);
    // Published anchors (LDM / keras-cv _ALPHAS_CUMPROD), to the digits given.
    expect(Math.abs(s.alphasCumprod[0]! - 0.99915)).toBeLessThan(1e-12);
    expect(Math.abs(s.alphasCumprod[1]! - 0.998296)).toBeLessThan(5e-7);
    expect(Math.abs(s.alphasCumprod[499]! - 0.27767)).toBeLessThan(5e-6);
    expect(Math.abs(s.alphasCumprod[999]! - 0.0046601)).toBeLessThan(5e-8);
  });

  it("σ = √((1−ᾱ)/ᾱ): k-diffusion's SD range 0.0292 … 14.6146", () => {
    expect(s.sigmas[0]).toBeCloseTo(Math.sqrt(0.00085 / 0.99915), 12);
    // k-diffusion's σ_min comes from LDM's float32 ᾱ buffer: 1 − ᾱ₀ loses digits in float32
    expect(s.sigmaMin).toBe(Math.fround(Math.sqrt(Math.fround(Math.fround(1 - Math.fround(0.99915)) / Math.fround(0.99915)))));
    expect(Math.abs(s.sigmaMin / s.sigmas[0]! - 1)).toBeLessThan(2e-5);
    expect(Math.abs(s.sigmaMax - 14.6146)).toBeLessThan(1e-4);
    expect(s.sqrtAlphasCumprod[300]! ** 2 + s.sqrtOneMinusAlphasCumprod[300]! ** 2).toBeCloseTo(1, 14);
  });

  it("t ↔ σ: integer t hits the table, fractional t interpolates ln σ, and sigmaToT inverts tToSigma", () => {
    expect(s.tToSigma(250)).toBeCloseTo(s.sigmas[250]!, 14);
    const expected = Math.exp(0.25 * Math.log(s.sigmas[100]!) + 0.75 * Math.log(s.sigmas[101]!));
    expect(s.tToSigma(100.75)).toBeCloseTo(expected, 14);
    // sigmaToT is k-diffusion's float32 sigma_to_t over the float32 table: t to float32 precision,
    // plus the float32 table's own offset near t = 0
    for (const t of [0.5, 1, 17.3, 499.5, 998.25]) expect(Math.abs(s.sigmaToT(s.tToSigma(t)) - t)).toBeLessThan(1e-4);
    for (let t = 0; t < 1000; t += 37) expect(s.sigmaToT(s.kSigmas[t]!)).toBe(t);
    expect(s.sigmaToT(s.sigmaMin / 2)).toBe(0); // below the table: clamped
    expect(s.sigmaToT(s.sigmaMax * 2)).toBe(999); // above: clamped
    expect(s.alphaCumprodAt(400)).toBe(s.alphasCumprod[400]);
    const sg = s.tToSigma(400.5);
    expect(s.alphaCumprodAt(400.5)).toBeCloseTo(1 / (1 + sg * sg), 14);
    expect(() => s.tToSigma(1000)).toThrow(/\[0, 999\]/);
  });

  it("a custom config builds its own table", () => {
    const small = new NoiseSchedule({ numTimesteps: 10 });
    expect(small.betas.length).toBe(10);
    expect(small.betas[9]).toBeCloseTo(0.012, 15);
    expect(() => scaledLinearBetas(0.1, 0.01, 10)).toThrow(/betaStart/);
  });
});

describe("qSample and vTarget", () => {
  const ref = referenceAlphasCumprod();
  it("x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with a timestep per batch element", async () => {
    const x0v = Float32Array.from({ length: 3 * 2 * 2 * 2 }, (_, i) => Math.sin(i) * 0.8);
    const nv = Float32Array.from({ length: 24 }, (_, i) => Math.cos(3 * i));
    const x0 = tf.tensor4d(x0v, [3, 2, 2, 2]);
    const noise = tf.tensor4d(nv, [3, 2, 2, 2]);
    const ts = [0, 499, 999];
    const expected = Array.from(x0v, (v, i) => {
      const a = ref[ts[Math.floor(i / 8)]!]!;
      return Math.sqrt(a) * v + Math.sqrt(1 - a) * nv[i]!;
    });
    const expectedV = Array.from(x0v, (v, i) => {
      const a = ref[ts[Math.floor(i / 8)]!]!;
      return Math.sqrt(a) * nv[i]! - Math.sqrt(1 - a) * v;
    });
    await expectNoLeak(() => {
      const xt = qSample(x0, noise, ts);
      expectTensorClose(xt, expected, 1e-6, [3, 2, 2, 2]);
      const v = vTarget(x0, noise, Int32Array.from(ts));
      expectTensorClose(v, expectedV, 1e-6, [3, 2, 2, 2]);
      tf.dispose([xt, v]);
    });
    tf.dispose([x0, noise]);
  });

  it("rejects a wrong timestep count or an out-of-range timestep with a clear message", () => {
    const x = tf.zeros([2, 1, 1, 1]);
    expect(() => qSample(x, x, [1])).toThrow(/one timestep per batch element/);
    expect(() => qSample(x, x, [1, 1000])).toThrow(/integers in \[0, 1000\)/);
    expect(() => qSample(x, x, [1, 2.5])).toThrow(/integers/);
    x.dispose();
  });
});

describe("step spacings", () => {
  const s = sd15Schedule();
  it("DDIM: CompVis uniform spacing with +1 offset", () => {
    const t50 = ddimTimesteps(50);
    expect(t50.length).toBe(50);
    expect(t50.slice(0, 3)).toEqual([1, 21, 41]);
    expect(t50[49]).toBe(981);
    const t30 = ddimTimesteps(30); // c = 33: CompVis gives 31 timesteps
    expect(t30.length).toBe(31);
    expect(t30[30]).toBe(991);
    expect(ddimTimesteps(1)).toEqual([1]);
    const t1000 = ddimTimesteps(1000);
    expect(t1000[t1000.length - 1]).toBe(999);
    expect(new Set(t1000).size).toBe(t1000.length);
    expect(() => ddimTimesteps(0)).toThrow(/steps/);
  });

  // (bit-for-bit against torch: sigma-lists.test.ts; here the shape of the lists, to float32 precision)
  it("k-diffusion discrete σs: linspace(999, 0, n) in t, then 0", () => {
    const sg = discreteSigmas(3);
    expect(sg.length).toBe(4);
    expect(sg[0]).toBeCloseTo(s.kSigmas[999]!, 5);
    expect(sg[1]).toBeCloseTo(Math.exp(0.5 * (Math.log(s.kSigmas[499]!) + Math.log(s.kSigmas[500]!))), 5);
    expect(sg[2]).toBeCloseTo(s.kSigmas[0]!, 6);
    expect(sg[3]).toBe(0);
  });

  it("Karras σs: ρ = 7 ramp between σ_max and σ_min, then 0", () => {
    const sg = karrasSigmas(3);
    const mid = ((s.sigmaMax ** (1 / 7) + s.sigmaMin ** (1 / 7)) / 2) ** 7;
    expect(sg[0]).toBeCloseTo(s.sigmaMax, 5);
    expect(sg[1]).toBeCloseTo(mid, 5);
    expect(sg[2]).toBeCloseTo(s.sigmaMin, 6);
    expect(sg[3]).toBe(0);
  });

  it("ancestral step keeps the total variance: σ_down² + σ_up² = σ_to²", () => {
    const { sigmaDown, sigmaUp } = ancestralStep(10, 4);
    expect(sigmaDown ** 2 + sigmaUp ** 2).toBeCloseTo(16, 12);
    expect(sigmaUp).toBeCloseTo(Math.sqrt((16 * (100 - 16)) / 100), 12);
    expect(ancestralStep(10, 4, 0)).toEqual({ sigmaDown: 4, sigmaUp: 0 });
    expect(ancestralStep(10, 0)).toEqual({ sigmaDown: 0, sigmaUp: 0 });
  });
});

/** xoshiro128** written independently with BigInt arithmetic, for checking the 32-bit version. */
function bigXoshiro(words: number[], n: number): number[] {
  const M = (1n << 32n) - 1n;
  let [s0, s1, s2, s3] = words.map(BigInt) as [bigint, bigint, bigint, bigint];
  const rotl = (x: bigint, k: bigint) => ((x << k) | (x >> (32n - k))) & M;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    out.push(Number((rotl((s1 * 5n) & M, 7n) * 9n) & M));
    const t = (s1 << 9n) & M;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11n);
  }
  return out;
}

describe("Rng", () => {
  it("its stream is xoshiro128** (checked against a BigInt implementation)", () => {
    const r = new Rng(42);
    const words = r.getState().words;
    const got = Array.from({ length: 50 }, () => r.nextUint32());
    expect(got).toEqual(bigXoshiro(words, 50));
  });

  it("same seed → same numbers; different seeds differ; seeds above 2^32 are distinct", () => {
    expect(new Rng(7).normal(33)).toEqual(new Rng(7).normal(33));
    expect(new Rng(7).uniform(8)).not.toEqual(new Rng(8).uniform(8));
    expect(new Rng(5).uniform(8)).not.toEqual(new Rng(5 + 2 ** 32).uniform(8));
    expect(() => new Rng(-1)).toThrow(/non-negative/);
    expect(() => new Rng(1.5)).toThrow(/seed/);
  });

  it("state survives a JSON round trip, and clones are independent", () => {
    const r = new Rng(123);
    r.normal(11);
    const saved = JSON.parse(JSON.stringify(r.getState()));
    const a = r.normal(20);
    r.setState(saved);
    expect(r.normal(20)).toEqual(a);
    expect(Rng.fromState(saved).normal(20)).toEqual(a);
    const c = r.clone();
    c.uniform(5);
    expect(r.getState()).not.toEqual(c.getState());
    expect(() => r.setState({ algorithm: "xoshiro128**", words: [0, 0, 0, 0] })).toThrow(/rng.getState/);
  });

  it("an odd normal request consumes a whole pair", () => {
    const a = new Rng(3);
    a.normal(3);
    const b = new Rng(3);
    b.normal(4);
    expect(a.getState()).toEqual(b.getState());
  });

  it("normals have mean 0, variance 1 and normal tails; uniforms lie in [0, 1) with mean ½", () => {
    const n = 200000;
    const z = new Rng(2024).normal(n);
    let m = 0;
    for (const v of z) m += v;
    m /= n;
    let v2 = 0;
    let v4 = 0;
    let beyond2 = 0;
    for (const v of z) {
      v2 += (v - m) ** 2;
      v4 += (v - m) ** 4;
      if (Math.abs(v) > 2) beyond2++;
    }
    v2 /= n;
    v4 /= n;
    expect(Math.abs(m)).toBeLessThan(0.01); // SE 0.0022
    expect(Math.abs(v2 - 1)).toBeLessThan(0.015); // SE 0.0032
    expect(Math.abs(v4 / (v2 * v2) - 3)).toBeLessThan(0.06); // kurtosis of a normal
    expect(Math.abs(beyond2 / n - 0.0455)).toBeLessThan(0.003); // P(|z| > 2) = 4.55 %
    const u = new Rng(9).uniform(n);
    let um = 0;
    let lo = 1;
    let hi = 0;
    for (const x of u) {
      um += x;
      lo = Math.min(lo, x);
      hi = Math.max(hi, x);
    }
    expect(lo).toBeGreaterThanOrEqual(0);
    expect(hi).toBeLessThan(1);
    expect(Math.abs(um / n - 0.5)).toBeLessThan(0.003);
  });

  it("randint covers [low, high) evenly", () => {
    const r = new Rng(11);
    const t = randint(30000, 0, 3, r);
    const counts = [0, 0, 0];
    for (const v of t) counts[v]!++;
    for (const c of counts) expect(Math.abs(c / 30000 - 1 / 3)).toBeLessThan(0.015);
    const big = randint(1000, -5, 1000, r);
    expect(Math.min(...big)).toBeGreaterThanOrEqual(-5);
    expect(Math.max(...big)).toBeLessThan(1000);
    expect(() => randint(1, 3, 3, r)).toThrow(/low < high/);
  });

  it("randn gives the same numbers as rng.normal, in a float32 tensor, without leaks", async () => {
    const r = new Rng(77);
    const expected = r.clone().normal(2 * 3 * 4);
    const t = await expectNoLeak(() => {
      const x = randn([2, 3, 4], r);
      expect(x.shape).toEqual([2, 3, 4]);
      expect(x.dtype).toBe("float32");
      expectTensorClose(x, expected, 0);
      x.dispose();
      return true;
    });
    expect(t).toBe(true);
  });

  it("withRestoredRng puts the stream back after a preview", async () => {
    const r = new Rng(5);
    const before = r.getState();
    const drawn = await withRestoredRng(r, () => r.normal(10));
    expect(drawn.length).toBe(10);
    expect(r.getState()).toEqual(before);
    await expect(
      withRestoredRng(r, () => {
        r.normal(3);
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(r.getState()).toEqual(before);
  });
});
