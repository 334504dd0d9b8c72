/**
 * The σ lists against torch: test/fixtures/sigma-lists.json holds what CompVis LDM's float32
 * alphas_cumprod and k-diffusion's CompVisDenoiser / get_sigmas_karras / get_sigmas_exponential
 * give as A1111 1.6–1.10 calls them (torch 1.13, CPU, float32), and the torch operations they are
 * built from; made by test/scripts/make_sigma_fixtures.py. Everything is compared bit for bit.
 */
import * as fs from "node:fs";
import { describe, expect, it } from "vitest";
import { type SigmaSpacing, a1111Sigmas } from "../src/diffusion/sigmas";
import { sd15Schedule } from "../src/diffusion/schedule";
import { torchPowF32 } from "../src/diffusion/torch-f32-math";
import { fma64, torchLinspaceF32, torchLinspaceF64, torchPowTensorScalarF32 } from "../src/diffusion/torch-ops";
import { samplerByName } from "../src/diffusion/sampler-names";
import { fixture } from "./helpers/tf";

interface Fixture {
  alphasCumprod: number[];
  sigmas: number[];
  logSigmas: number[];
  lists: { schedule: SigmaSpacing; steps: number; discard: boolean; sigmas: number[] }[];
  linspace32: { start: number; end: number; n: number; values: number[] }[];
  linspace64: number[];
  pow7: { x: number[]; y: number[] };
  sigmaToT: { sigma: number[]; t: number[] };
}
const FX = JSON.parse(fs.readFileSync(fixture("sigma-lists.json"), "utf8")) as Fixture;

/** Indexes where two lists differ (as numbers), or a length mismatch. */
function differences(got: ArrayLike<number>, want: readonly number[]): string[] {
  if (got.length !== want.length) return [`length ${got.length} ≠ ${want.length}`];
  const out: string[] = [];
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) out.push(`[${i}] ${got[i]} ≠ ${want[i]}`);
  return out;
}

describe("torch's building blocks", () => {
  it(`linspace in float32 (${FX.linspace32.length} cases: fused multiply-adds, vector blocks, the two halves) and float64`, () => {
    for (const c of FX.linspace32) {
      expect(differences(torchLinspaceF32(c.start, c.end, c.n), c.values), `linspace(${c.start}, ${c.end}, ${c.n})`).toEqual([]);
    }
    expect(differences(torchLinspaceF64(0.00085 ** 0.5, 0.012 ** 0.5, 1000), FX.linspace64)).toEqual([]);
    // the simple a + i·step misses some of them: the fused forms matter
    const step = (0.012 ** 0.5 - 0.00085 ** 0.5) / 999;
    expect(FX.linspace64.filter((v, i) => v !== 0.00085 ** 0.5 + i * step).length).toBeGreaterThan(0);
  });

  it("float32 t ** 7 (SLEEF powf on whole 16-blocks, std::pow on the rest), where correct rounding misses some", () => {
    expect(differences(torchPowTensorScalarF32(FX.pow7.x, 7), FX.pow7.y)).toEqual([]);
    const rounded = FX.pow7.x.filter((x, i) => Math.fround(x ** 7) !== FX.pow7.y[i]).length;
    expect(rounded).toBeGreaterThan(0);
    expect(torchPowF32(2, 7)).toBe(128);
    expect(() => torchPowF32(-1, 7)).toThrow(/positive finite/);
  });

  it("fma64 rounds a·b + c once", () => {
    // 1 + 2^-53 is a tie that a separate multiply-then-add loses; the fused form keeps the low part
    expect(fma64(1 + 2 ** -52, 1 - 2 ** -52, -1)).toBe(-(2 ** -104));
    expect(fma64(0.1, 10, -1)).toBe(5.551115123125783e-17);
    expect(fma64(3, 5, 7)).toBe(22);
    expect(fma64(-2.5, 4, 10)).toBe(0);
  });
});

describe("the SD 1.x schedule as k-diffusion sees it", () => {
  const s = sd15Schedule();
  it("LDM's float32 alphas_cumprod, CompVisDenoiser's float32 sigmas and log_sigmas, bit for bit", () => {
    expect(differences(Float32Array.from(s.alphasCumprod), FX.alphasCumprod)).toEqual([]);
    expect(differences(s.kSigmas, FX.sigmas)).toEqual([]);
    expect(differences(s.kLogSigmas, FX.logSigmas)).toEqual([]);
    expect(s.sigmaMin).toBe(FX.sigmas[0]);
    expect(s.sigmaMax).toBe(FX.sigmas[999]);
  });

  it(`sigma_to_t in float32 for ${FX.sigmaToT.sigma.length} σ (the UNet's timestep per model call)`, () => {
    const got = FX.sigmaToT.sigma.map((v) => s.sigmaToT(v));
    expect(differences(got, FX.sigmaToT.t)).toEqual([]);
  });
});

describe("A1111's σ lists equal torch's bit for bit", () => {
  it.each(FX.lists.map((c) => [`${c.schedule} ${c.steps} steps${c.discard ? ", next-to-last discarded" : ""}`, c] as const))(
    "%s",
    (_, c) => {
      expect(differences(a1111Sigmas(c.schedule, c.steps, c.discard), c.sigmas)).toEqual([]);
    },
  );

  it("samplerByName hands its sampler those lists (DPM++ 2M Karras, DPM2 a, Euler a, DPM++ 2M SDE)", () => {
    const find = (schedule: SigmaSpacing, steps: number, discard: boolean) =>
      FX.lists.find((c) => c.schedule === schedule && c.steps === steps && c.discard === discard)!.sigmas;
    expect(Array.from(samplerByName("DPM++ 2M Karras", { steps: 20 }).sigmas()!)).toEqual(find("karras", 20, false));
    expect(Array.from(samplerByName("DPM2 a", { steps: 20, sigmas: "discrete" }).sigmas()!)).toEqual(find("discrete", 20, true));
    expect(Array.from(samplerByName("Euler a", { steps: 30 }).sigmas()!)).toEqual(find("discrete", 30, false));
    expect(Array.from(samplerByName("DPM++ 2M SDE", { steps: 10, sigmas: "exponential" }).sigmas()!)).toEqual(
      find("exponential", 10, false),
    );
  });
});
