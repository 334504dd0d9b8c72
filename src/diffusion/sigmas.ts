/**
 * The σ schedules A1111 offers its k-diffusion samplers, and the choice A1111 makes among them.
 *
 * A1111 (1.6–1.10, `KDiffusionSampler.get_sigmas`) builds the descending noise levels a sampler
 * visits from three spacings, each ending in a final 0:
 *
 * - "discrete" (A1111's "Uniform"; what "Automatic" means for Euler, Euler a, LMS, Heun): the
 *   denoiser's own `get_sigmas(n)`, n timesteps evenly spaced from T−1 down to 0 (`discreteSigmas`);
 * - "karras": Karras et al. (2022) with ρ = 7 between the model's own σ_min and σ_max (`karrasSigmas`);
 * - "exponential": ln σ evenly spaced from ln σ_max down to ln σ_min (`exponentialSigmas`).
 *
 * For DPM2 and DPM2 a A1111 asks for one step more and then drops the next-to-last σ
 * (`discard_next_to_last_sigma`), so the run keeps `steps` steps but never stops at the smallest σ.
 */
import { type NoiseSchedule, discreteSigmas, karrasSigmas, sd15Schedule } from "./schedule";
import { torchExpF32 } from "./torch-f32-math";
import { torchLinspaceF32 } from "./torch-ops";

/** A σ spacing by the name this project uses ("discrete" is A1111's "Uniform"). */
export type SigmaSpacing = "discrete" | "karras" | "exponential";

/** The spacings, in the order messages list them. */
export const SIGMA_SPACINGS: readonly SigmaSpacing[] = ["discrete", "karras", "exponential"];

/**
 * Exponential σ spacing (k-diffusion `get_sigmas_exponential`, A1111's "Exponential" scheduler):
 * σ = exp(linspace(ln σ_max, ln σ_min, n)), σ_min/σ_max from the schedule, then a final 0; the
 * linspace and exp in float32 as torch does them. Descending, length n+1.
 */
export function exponentialSigmas(steps: number, schedule: NoiseSchedule = sd15Schedule()): Float64Array {
  if (!Number.isSafeInteger(steps) || steps < 1 || steps > 100000)
    throw new Error(`exponentialSigmas: steps must be an integer in [1, 100000], got ${steps}`);
  const ln = torchLinspaceF32(Math.log(schedule.sigmaMax), Math.log(schedule.sigmaMin), steps);
  const out = new Float64Array(steps + 1);
  for (let i = 0; i < steps; i++) out[i] = torchExpF32(ln[i]!);
  out[steps] = 0;
  return out;
}

/** The σ list of one spacing: `steps` noise levels from the schedule's top down, then 0. */
export function sigmasFor(spacing: SigmaSpacing, steps: number, schedule: NoiseSchedule = sd15Schedule()): Float64Array {
  switch (spacing) {
    case "discrete":
      return discreteSigmas(steps, schedule);
    case "karras":
      return karrasSigmas(steps, schedule);
    case "exponential":
      return exponentialSigmas(steps, schedule);
    default:
      throw new Error(`unknown σ spacing ${JSON.stringify(spacing)}; use one of ${SIGMA_SPACINGS.map((s) => `"${s}"`).join(", ")}`);
  }
}

/**
 * The σ list A1111 hands a k-diffusion sampler for `steps` steps: `sigmasFor(spacing, steps)`, or
 * with `discardPenultimate` (DPM2, DPM2 a) `sigmasFor(spacing, steps + 1)` without its
 * next-to-last entry. Either way `steps + 1` values, the last one 0.
 */
export function a1111Sigmas(
  spacing: SigmaSpacing,
  steps: number,
  discardPenultimate: boolean,
  schedule: NoiseSchedule = sd15Schedule(),
): Float64Array {
  if (!discardPenultimate) return sigmasFor(spacing, steps, schedule);
  const full = sigmasFor(spacing, steps + 1, schedule);
  const out = new Float64Array(steps + 1);
  out.set(full.subarray(0, steps), 0);
  out[steps] = full[steps + 1]!;
  return out;
}
