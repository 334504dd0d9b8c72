/**
 * Brownian-tree noise for the SDE samplers (DPM++ SDE, DPM++ 2M SDE), with the semantics of
 * k-diffusion's `BrownianTreeNoiseSampler` as A1111 uses it.
 *
 * The sampler asks for the noise of an interval (σ, σ_next). k-diffusion answers with the
 * increment of one fixed Brownian path W over σ, normalised to unit variance:
 *
 *   noise(σ, σ_next) = (W(σ_next) − W(σ)) / √|σ_next − σ|
 *
 * so overlapping requests are correlated exactly as the pieces of one path are (DPM++ SDE asks for
 * (σ_i, σ_mid) and then (σ_i, σ_{i+1}) in the same step), and the path is fixed by the seed, so a
 * run is reproducible. A1111 (`Sampler.create_noise_sampler`) builds one path per image, over
 * [smallest σ > 0, largest σ] of the run, seeded with that image's seed — which is what makes a
 * batch give the same images as single runs.
 *
 * How W is drawn here: W(σ_lo) = 0 and W(σ_hi) = √(σ_hi − σ_lo)·z₀; every interval [l, r] of the
 * binary tree over [σ_lo, σ_hi] gets its midpoint from the Brownian bridge,
 * W(m) = (W(l) + W(r))/2 + √((r − l)/4)·z_node, with z_node drawn from this project's `Rng` seeded
 * by (image seed, node). A query walks down to an interval narrower than 2⁻²⁰ of the range and
 * interpolates linearly inside it (a bridge error of under 2⁻¹¹·√range in standard deviation).
 *
 * The gap to A1111: torchsde's BrownianTree builds its path from torch's own generators (CPU or
 * CUDA, seeded through numpy's SeedSequence), which this project does not reproduce, so the noise
 * values — and therefore DPM++ SDE / DPM++ 2M SDE images — differ from A1111's, while having the
 * same distribution, per-image seeding and interval correlations.
 */
import { Rng } from "./random";

/** Noise for the interval (σ, σ_next): NHWC values for the whole batch, unit variance. */
export type NoiseSampler = (sigma: number, sigmaNext: number) => Float32Array;

const DEPTH = 20;

function mix32(x: number): number {
  let z = x | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** The Rng seed of tree node (depth, index) of the path seeded with `seed` (below 2⁵³). */
function nodeSeed(seed: number, depth: number, index: number): number {
  const key = depth * 2 ** 21 + index;
  const lo = mix32((seed >>> 0) ^ mix32(key ^ 0x5bd1e995));
  const hi = mix32(Math.floor(seed / 2 ** 32) ^ mix32(key + 0x68e31da4)) & 0x1fffff;
  return hi * 2 ** 32 + lo;
}

/** One image's Brownian path over [lo, hi], `size` values per time point. */
class BrownianPath {
  private readonly cache = new Map<number, Float64Array>();

  constructor(
    private readonly seed: number,
    private readonly lo: number,
    private readonly hi: number,
    private readonly size: number,
  ) {}

  private normals(depth: number, index: number): Float32Array {
    return new Rng(nodeSeed(this.seed, depth, index)).normal(this.size);
  }

  /** W(t), t clamped to [lo, hi]. The last few answers are cached (a step reuses its endpoints). */
  at(t: number): Float64Array {
    const tc = Math.min(this.hi, Math.max(this.lo, t));
    const hit = this.cache.get(tc);
    if (hit) return hit;
    const n = this.size;
    let l = this.lo;
    let r = this.hi;
    let wl = new Float64Array(n);
    let wr = new Float64Array(n);
    const z0 = this.normals(0, 0);
    const s0 = Math.sqrt(r - l);
    for (let k = 0; k < n; k++) wr[k] = s0 * z0[k]!;
    let index = 0;
    for (let depth = 1; depth <= DEPTH && tc !== l && tc !== r; depth++) {
      const m = (l + r) / 2;
      const z = this.normals(depth, index);
      const sd = Math.sqrt((r - l) / 4);
      const wm = new Float64Array(n);
      for (let k = 0; k < n; k++) wm[k] = (wl[k]! + wr[k]!) / 2 + sd * z[k]!;
      if (tc < m) {
        r = m;
        wr = wm;
        index = 2 * index;
      } else {
        l = m;
        wl = wm;
        index = 2 * index + 1;
      }
    }
    let out: Float64Array;
    if (tc === l) out = wl;
    else if (tc === r) out = wr;
    else {
      const w = (tc - l) / (r - l);
      out = new Float64Array(n);
      for (let k = 0; k < n; k++) out[k] = wl[k]! + w * (wr[k]! - wl[k]!);
    }
    if (this.cache.size >= 4) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(tc, out);
    return out;
  }
}

/**
 * A k-diffusion `BrownianTreeNoiseSampler` for a batch of `shape[0]` images (NHWC `shape`): one
 * path per image over [sigmaMin, sigmaMax], seeded with `seeds[i]` (see the module comment).
 */
export function brownianTreeNoiseSampler(
  shape: readonly number[],
  sigmaMin: number,
  sigmaMax: number,
  seeds: readonly number[],
): NoiseSampler {
  const batch = shape[0]!;
  const per = shape.slice(1).reduce((a, b) => a * b, 1);
  if (!(sigmaMin > 0 && sigmaMax > sigmaMin && Number.isFinite(sigmaMax))) {
    throw new Error(`brownianTreeNoiseSampler: need 0 < sigmaMin < sigmaMax, got [${sigmaMin}, ${sigmaMax}]`);
  }
  if (seeds.length !== batch || !seeds.every((s) => Number.isSafeInteger(s) && s >= 0)) {
    throw new Error(`brownianTreeNoiseSampler: need one non-negative integer seed per image (${batch}), got ${JSON.stringify(seeds)}`);
  }
  const paths = seeds.map((s) => new BrownianPath(s, sigmaMin, sigmaMax, per));
  return (sigma, sigmaNext) => {
    const out = new Float32Array(batch * per);
    const scale = 1 / Math.sqrt(Math.abs(sigmaNext - sigma));
    paths.forEach((path, b) => {
      const w0 = path.at(sigma);
      const w1 = path.at(sigmaNext);
      for (let k = 0; k < per; k++) out[b * per + k] = (w1[k]! - w0[k]!) * scale;
    });
    return out;
  };
}

/**
 * The Brownian seeds of a batch, as A1111 picks them (the images' seeds, `p.all_seeds`): the
 * generator's own per-image seeds when it has them (A1111's per-image noise does), else seed + i.
 * Without either (a run given only the project's `Rng`) one base seed is drawn from the rng's
 * normals, so the run stays a function of the rng's state.
 */
export function brownianSeedsFor(batch: number, seed: number | undefined, rng: { normal(n: number): Float32Array }): number[] {
  const own = (rng as { seeds?: unknown }).seeds;
  if (Array.isArray(own) && own.length === batch) {
    return own.map((s, i) => {
      const v = Number(s);
      if (!Number.isSafeInteger(v) || v < 0)
        throw new Error(`Brownian noise: image ${i}'s seed ${String(s)} is not a non-negative integer below 2^53`);
      return v;
    });
  }
  let base = seed;
  if (base === undefined) {
    const bits = new Uint32Array(rng.normal(2).buffer);
    base = mix32(bits[0]! ^ mix32(bits[1]!));
  }
  return Array.from({ length: batch }, (_, i) => base! + i);
}
