/**
 * Loss against timestep: how well the network denoises at each noise level, and how that changes
 * over a run. The samples come from the validation batch (`validation.ts`), where every image is
 * measured at fixed timesteps with fixed noise, so a bin's value changes only because the network
 * did — the training loss, one t per image per step, could only give a noisy average of this.
 *
 *     bin b of B over [lo, hi):  [lo + b·(hi − lo)/B, lo + (b + 1)·(hi − lo)/B)
 *     loss of bin b = mean of the losses of the samples whose t falls in it (NaN when none does)
 */
import type { ValidationEvent, ValidationSample } from "./events";

/** One timestep bin: its range `[lo, hi)`, the mean loss of its samples and how many there were. */
export interface TimestepBin {
  lo: number;
  hi: number;
  loss: number;
  count: number;
}

/** Bin samples `{t, loss}` into `bins` equal bins of `[lo, hi)` (default the schedule's [0, 1000)); see the module comment. */
export function timestepLossBins(
  samples: ReadonlyArray<Pick<ValidationSample, "t" | "loss">>,
  bins = 10,
  range: readonly [number, number] = [0, 1000],
): TimestepBin[] {
  const [lo, hi] = range;
  if (!Number.isSafeInteger(bins) || bins < 1) throw new Error(`timestepLossBins: bins must be a positive integer, got ${bins}`);
  if (!(Number.isFinite(lo) && Number.isFinite(hi) && lo < hi))
    throw new Error(`timestepLossBins: range must be [lo, hi) with lo < hi, got [${lo}, ${hi}]`);
  const sums = new Array<number>(bins).fill(0);
  const counts = new Array<number>(bins).fill(0);
  for (const s of samples) {
    if (s.t < lo || s.t >= hi) continue;
    const b = Math.min(bins - 1, Math.floor(((s.t - lo) * bins) / (hi - lo)));
    sums[b]! += s.loss;
    counts[b]! += 1;
  }
  return sums.map((sum, b) => ({
    lo: lo + (b * (hi - lo)) / bins,
    hi: lo + ((b + 1) * (hi - lo)) / bins,
    loss: counts[b]! > 0 ? sum / counts[b]! : NaN,
    count: counts[b]!,
  }));
}

/** Timesteps per image of a validation event: the natural number of bins (one stratum each). */
export function timestepsPerImage(e: ValidationEvent): number {
  return e.samples.filter((s) => s.image === e.samples[0]?.image).length;
}

/**
 * Loss against timestep at every validation of a run: one row of bins per event, in step order.
 * `bins` defaults to the batch's timesteps per image, so each bin holds one stratum.
 */
export function timestepLossOverRun(
  events: readonly ValidationEvent[],
  bins?: number,
  range: readonly [number, number] = [0, 1000],
): { steps: number[]; bins: TimestepBin[][] } {
  if (events.length === 0) return { steps: [], bins: [] };
  const b = bins ?? timestepsPerImage(events[0]!);
  return { steps: events.map((e) => e.step), bins: events.map((e) => timestepLossBins(e.samples, b, range)) };
}
