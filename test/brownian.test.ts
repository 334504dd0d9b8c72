/**
 * The Brownian-tree noise of DPM++ SDE / DPM++ 2M SDE against the real code: test/fixtures/brownian.json
 * holds numpy SeedSequence words, answers of k-diffusion's BrownianTreeNoiseSampler over torchsde's
 * BrownianTree seeded as A1111 seeds it (CPU, float32), and whole float32 sampling runs on a toy
 * ε-model, made by test/scripts/make_brownian_fixtures.py.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { type Denoiser, a1111ImageNoise, brownianTreeNoiseSampler, pyRound6, samplerByName, sdeQueryTimes } from "../src/diffusion";
import { seedSequenceState } from "../src/diffusion/seed-sequence";
import { torchExpF32, torchLogF32 } from "../src/diffusion/torch-f32-math";
import { expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

interface NoiseCase {
  seeds: number[];
  shapeCHW: [number, number, number];
  sigmaMin: number;
  sigmaMax: number;
  queries: [number, number][];
  noise: number[][];
}
interface RunCase {
  sampler: "DPM++ SDE" | "DPM++ 2M SDE";
  schedule: "karras" | "exponential";
  steps: number;
  seeds: number[];
  shapeCHW: [number, number, number];
  sigmas: number[];
  initialNoise: number[];
  requests: [number, number][];
  x: number[];
}
interface Fixture {
  cfgScale: number;
  A: number[];
  seedSequence: { entropy: string; spawnKey: [number, number] | null; state: number[] }[];
  noise: NoiseCase[];
  runs: RunCase[];
  karras20: number[];
  f32math: { x: number[]; log: number[]; t: number[]; exp: number[] };
}
const FX = JSON.parse(fs.readFileSync(fixture("brownian.json"), "utf8")) as Fixture;

/** NHWC batch values → the fixture's NCHW order. */
function toNchw(v: ArrayLike<number>, n: number, [c, h, w]: [number, number, number]): number[] {
  const out: number[] = [];
  for (let b = 0; b < n; b++)
    for (let ch = 0; ch < c; ch++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out.push(v[((b * h + y) * w + x) * c + ch]!);
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe("torch's float32 log / exp on the CPU (SLEEF, not correctly rounded)", () => {
  it("match torch bit for bit on 3000 values each, where correct rounding misses some", () => {
    const m = FX.f32math;
    const miss = (got: (v: number) => number, xs: number[], want: number[]) => xs.filter((v, i) => got(v) !== want[i]).length;
    expect(miss(torchLogF32, m.x, m.log)).toBe(0);
    expect(miss(torchExpF32, m.t, m.exp)).toBe(0);
    // the correctly rounded values differ from torch's for some inputs (measured 16 log, 312 exp)
    expect(miss((v) => Math.fround(Math.log(v)), m.x, m.log)).toBeGreaterThan(0);
    expect(miss((v) => Math.fround(Math.exp(v)), m.t, m.exp)).toBeGreaterThan(0);
  });
});

describe("numpy SeedSequence (torchsde's node seeds)", () => {
  it.each(FX.seedSequence.map((c) => [`${c.entropy} ${JSON.stringify(c.spawnKey)}`, c] as const))("%s", (_, c) => {
    expect(Array.from(seedSequenceState(BigInt(c.entropy), c.spawnKey ?? undefined, 24, 4))).toEqual(c.state);
  });
});

describe("Python's round(x, 6)", () => {
  it("rounds the exact binary value, exact ties to even", () => {
    // exact ties: 1/128 = 0.0078125 → 0.007812, 3/128 = 0.0234375 → 0.023438 (even last digit)
    expect(pyRound6(1 / 128)).toBe(0.007812);
    expect(pyRound6(3 / 128)).toBe(0.023438);
    expect(pyRound6(5 / 128)).toBe(0.039062);
    // 0.0000005 is stored as 4.99999999999999977e-7: below the tie, so down (Python gives 0.0)
    expect(pyRound6(0.0000005)).toBe(0);
    // 2.6750005 is stored as 2.67500049999999990…: down to 2.675 (Python gives 2.675)
    expect(pyRound6(2.6750005)).toBe(2.675);
    expect(pyRound6(14.614643096923828)).toBe(14.614643);
    expect(pyRound6(0.02916753850877285)).toBe(0.029168);
  });
});

describe("Brownian tree noise equals torchsde's under k-diffusion, seeded as A1111 (fixture from the real code)", () => {
  it.each(FX.noise.map((c) => [`seeds ${c.seeds.join(",")} [${c.shapeCHW}]`, c] as const))("%s: bit for bit", (_, c) => {
    const [ch, h, w] = c.shapeCHW;
    const n = c.seeds.length;
    const ns = brownianTreeNoiseSampler(
      [n, h, w, ch],
      c.sigmaMin,
      c.sigmaMax,
      c.seeds.map((s) => BigInt(s)),
    );
    c.queries.forEach(([a, b], q) => {
      expect(maxAbsDiff(toNchw(ns(a, b), n, c.shapeCHW), c.noise[q]!), `query ${q} (${a}, ${b})`).toBe(0);
    });
  });

  it("gives each image the noise of its own single-image run (A1111's batch determinism)", () => {
    const c = FX.noise[0]!;
    const [ch, h, w] = c.shapeCHW;
    const [a, b] = c.queries[1]!;
    const batch = brownianTreeNoiseSampler([2, h, w, ch], c.sigmaMin, c.sigmaMax, c.seeds)(a, b);
    const second = brownianTreeNoiseSampler([1, h, w, ch], c.sigmaMin, c.sigmaMax, [c.seeds[1]!])(a, b);
    expect(Array.from(batch.subarray(ch * h * w))).toEqual(Array.from(second));
  });

  it("rejects bad arguments clearly", () => {
    expect(() => brownianTreeNoiseSampler([1, 2, 2, 4], 0, 14.6, [1])).toThrow(/0 < sigmaMin < sigmaMax/);
    expect(() => brownianTreeNoiseSampler([2, 2, 2, 4], 0.03, 14.6, [1])).toThrow(/one non-negative integer seed per image \(2\)/);
    expect(() => brownianTreeNoiseSampler([1, 2, 2, 4], 0.03, 14.6, [-1])).toThrow(/non-negative integer seed/);
  });
});

/** The fixture's toy ε-model, reading each image's latent in NCHW order as the Python side does. */
function toyDenoiser(A: tf.Tensor2D): Denoiser {
  return (x, t, cond) =>
    tf.tidy(() => {
      const n = x.shape[0];
      const v = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [n, 16]);
      const tt = tf.tensor2d(t as number[], [n, 1]);
      const c = tf.reshape(cond, [n, 1]);
      const eps = tf.add(
        tf.add(tf.mul(tf.tanh(tf.matMul(v, A, false, true)), 0.5), tf.mul(tf.mul(tf.cos(tf.div(tt, 300)), 0.1), v)),
        tf.add(tf.mul(tf.sin(tf.div(tt, 200)), 0.05), tf.mul(c, 0.03)),
      );
      const [, hh, ww, cc] = x.shape;
      return tf.transpose(tf.reshape(eps, [n, cc, hh, ww]), [0, 2, 3, 1]) as tf.Tensor4D;
    });
}

/**
 * Whole runs from this project's own σ lists: float32 k-diffusion in Python against float32 tfjs
 * here (the σ lists and the noise are identical; the step arithmetic uses float64 scalars here and
 * float32 tensors there, and the model's tanh/cos/sin are tfjs's). Measured worst |Δx| / max|x|
 * over the four runs: 6.7e-7 – 1.0e-6 (|Δx| 2.5e-5 – 5.3e-5 on latents up to 31 – 62), i.e. a few
 * float32 ulps of the largest value.
 */
const RUN_RTOL = 2e-6;

describe("DPM++ SDE / DPM++ 2M SDE runs match k-diffusion + torchsde as A1111 drives them", () => {
  it.each(FX.runs.map((r) => [`${r.sampler} ${r.schedule} ${r.steps} steps, seeds ${r.seeds.join(",")}`, r] as const))(
    "%s",
    async (_, r) => {
      const [ch, h, w] = r.shapeCHW;
      const n = r.seeds.length;
      const shape: [number, number, number, number] = [n, h, w, ch];
      const A = tf.tensor2d(FX.A, [16, 16]);
      const cond = tf.ones([n, 1]);
      const uncond = tf.fill([n, 1], -1);
      const requests: [number, number][] = [];
      // this project's own σ list: A1111's float32 one, bit for bit, so the whole run starts from it
      const sampler = samplerByName(r.sampler, { steps: r.steps, sigmas: r.schedule });
      const own = Array.from(sampler.sigmas()!);
      expect(own).toEqual(r.sigmas);
      const inner = brownianTreeNoiseSampler(shape, Math.min(...own.filter((s) => s > 0)), Math.max(...own), r.seeds);
      const rng = a1111ImageNoise({ shape, seeds: r.seeds });
      const run = async () => {
        const t = await sampler.sample({
          denoiser: toyDenoiser(A),
          shape,
          cond,
          uncond,
          guidanceScale: FX.cfgScale,
          rng,
          noiseSampler: (s: number, sn: number) => {
            requests.push([s, sn]);
            return inner(s, sn);
          },
        });
        const v = Array.from(t.dataSync());
        t.dispose();
        return v;
      };
      const out = await expectNoLeak(run);
      // the noise sampler is asked about exactly the float32 σ values k-diffusion asks about
      expect(requests).toEqual(r.requests);
      const x = toNchw(out, n, r.shapeCHW);
      const d = maxAbsDiff(x, r.x);
      console.log(
        `${r.sampler} ${r.schedule} ${r.steps}: max |Δx| = ${d.toExponential(2)} (max |x| ${Math.max(...r.x.map(Math.abs)).toFixed(3)})`,
      );
      expect(d).toBeLessThan(RUN_RTOL * Math.max(...r.x.map(Math.abs)));
      // and without a noise sampler the run builds the same one from the images' seeds
      const again = await sampler.sample({
        denoiser: toyDenoiser(A),
        shape,
        cond,
        uncond,
        guidanceScale: FX.cfgScale,
        rng: a1111ImageNoise({ shape, seeds: r.seeds }),
      });
      expect(Array.from(again.dataSync())).toEqual(out);
      tf.dispose([A, cond, uncond, again]);
    },
    120_000,
  );

  it("sdeQueryTimes rounds like k-diffusion's float32 t = −log σ round trip", () => {
    const r = FX.runs.find((c) => c.sampler === "DPM++ SDE")!;
    const got: number[][] = [];
    for (let i = 0; i + 1 < r.sigmas.length && r.sigmas[i + 1]! > 0; i++) {
      const q = sdeQueryTimes(r.sigmas[i]!, r.sigmas[i + 1]!, 0.5);
      got.push([q.sigma, q.sigmaMid], [q.sigma, q.sigmaNext]);
    }
    expect(got).toEqual(r.requests);
  });
});

describe("σ lists and the Brownian tree", () => {
  it("this project's 20-step Karras list is A1111's float32 one, bit for bit (more lists: sigma-lists.test.ts)", () => {
    const mine = samplerByName("DPM++ SDE", { steps: 20, sigmas: "karras" }).sigmas()!;
    expect(Array.from(mine)).toEqual(FX.karras20);
  });
});
