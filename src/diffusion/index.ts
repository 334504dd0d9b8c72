/** Diffusion: seeded noise, the SD 1.x schedule, σ spacings, and A1111's samplers by name (`samplerByName`). */
export * from "./random";
export * from "./schedule";
export * from "./samplers";
export * from "./sigmas";
export * from "./k-samplers";
export * from "./brownian";
export * from "./timestep-samplers";
export * from "./unipc";
export * from "./sampler-names";

// A1111's noise: torch's CPU generator and A1111's "NV" Philox (a1111Rng), per-image batch noise
// (a1111ImageNoise). This randn takes any NoiseRng, the project's Rng included, and replaces
// random.ts's (an explicit export wins over `export *`).
export {
  randn,
  a1111Rng,
  A1111Rng,
  a1111Slerp,
  chwToHwc,
  hwcToChw,
  type NoiseRng,
  type A1111RngSource,
  type A1111Seed,
  type A1111RngOptions,
  type A1111RngState,
} from "./a1111-rng";
export { a1111ImageNoise, A1111ImageNoise, a1111BatchSeeds, type A1111NoiseOptions } from "./a1111-image-noise";
export type { TorchCpuKernel } from "./torch-cpu-randn";
