/**
 * Per-image noise for a batch, as AUTOMATIC1111's `ImageRNG` (modules/rng.py) draws it: one
 * generator per image, variation seeds, "resize seed from", and "Eta noise seed delta".
 *
 * How a sampler uses it: pass it as the sampler's `rng`. The sampler's first request — the initial
 * latents, `randn([B, H, W, C], rng)` — gets A1111's first draw (with the variation and resize
 * applied); each later request of the same size — an ancestral step's noise — gets the next draw
 * from every image's generator (or, with ENSD ≠ 0, from generators re-seeded with seed + ENSD). A1111
 * draws each image as `[C, H, W]`; the values are handed over in this project's NHWC layout. A
 * request of any other size is refused: it would mean the sampler draws noise A1111 does not.
 */
import { A1111Rng, type A1111RngSource, type A1111Seed, type NoiseRng, a1111Slerp, chwToHwc, toSeed } from "./a1111-rng";
import type { TorchCpuKernel } from "./torch-cpu-randn";

/** Options for `a1111ImageNoise`. */
export interface A1111NoiseOptions {
  /** Latent shape `[batch, height, width, channels]` (NHWC, as the samplers use it). */
  shape: [number, number, number, number];
  /** The batch's seed: image i uses `a1111BatchSeeds` (seed + i, or seed for all with a variation). */
  seed?: A1111Seed;
  /** Or one seed per image (A1111's `p.seeds`), overriding `seed`. */
  seeds?: A1111Seed[];
  /** Variation seed: image i uses subseed + i. */
  subseed?: A1111Seed;
  /** Or one variation seed per image; images past the end of the list use 0, as in A1111. */
  subseeds?: A1111Seed[];
  /** Variation strength in [0, 1] (0 = off, the default). */
  subseedStrength?: number;
  /** "Resize seed from width/height", in pixels (both > 0 to take effect; A1111 divides by 8). */
  seedResizeFrom?: { width: number; height: number };
  /** "Eta noise seed delta" (A1111 setting `eta_noise_seed_delta`, infotext `ENSD`), default 0. */
  etaNoiseSeedDelta?: number;
  /** Noise source (default "CPU"); see `a1111Rng`. */
  source?: A1111RngSource;
  /** Which torch CPU kernel to imitate for the "CPU" source (default "avx2"). */
  cpuKernel?: TorchCpuKernel;
}

/**
 * The seeds A1111 gives images `start … start + count − 1` of a run (`p.all_seeds`,
 * `p.all_subseeds` in processing.py): seed + i, except that with a variation strength ≠ 0 every
 * image keeps `seed` and only the variation seeds count up (subseed + i). For the k-th batch of
 * size b (A1111's "Batch count"), use `start = k·b`.
 */
export function a1111BatchSeeds(
  seed: A1111Seed,
  count: number,
  opts: { subseed?: A1111Seed; subseedStrength?: number; start?: number } = {},
): { seeds: bigint[]; subseeds: bigint[] } {
  const start = opts.start ?? 0;
  if (!Number.isSafeInteger(count) || count < 0 || !Number.isSafeInteger(start) || start < 0) {
    throw new Error(`a1111BatchSeeds: count and start must be non-negative integers, got ${count} and ${start}`);
  }
  const s = toSeed(seed);
  const sub = toSeed(opts.subseed ?? 0, "subseed");
  const varying = (opts.subseedStrength ?? 0) !== 0;
  const seeds: bigint[] = [];
  const subseeds: bigint[] = [];
  for (let i = start; i < start + count; i++) {
    seeds.push(toSeed(varying ? s : s + BigInt(i), `seed of image ${i}`));
    subseeds.push(toSeed(sub + BigInt(i), `variation seed of image ${i}`));
  }
  return { seeds, subseeds };
}

/** A batch's noise, drawn per image as A1111's `ImageRNG` does; see the module comment. */
export class A1111ImageNoise implements NoiseRng {
  private generators: A1111Rng[];
  private isFirst = true;

  private constructor(
    private readonly opts: Required<Omit<A1111NoiseOptions, "seed" | "subseed" | "seeds" | "subseeds">>,
    readonly seeds: bigint[],
    readonly subseeds: bigint[] | undefined,
  ) {
    this.generators = seeds.map((s) => this.create(s));
  }

  /** Validate the options and build the generators (see `a1111ImageNoise`). */
  static create(o: A1111NoiseOptions): A1111ImageNoise {
    const shape = o.shape;
    if (!Array.isArray(shape) || shape.length !== 4 || !shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
      throw new Error(`a1111ImageNoise: shape must be [batch, height, width, channels] of positive integers, got ${JSON.stringify(shape)}`);
    }
    const batch = shape[0];
    const strength = o.subseedStrength ?? 0;
    if (!Number.isFinite(strength)) throw new Error(`a1111ImageNoise: subseedStrength must be a number (0 = off), got ${strength}`);
    const ensd = o.etaNoiseSeedDelta ?? 0;
    if (!Number.isSafeInteger(ensd))
      throw new Error(`a1111ImageNoise: etaNoiseSeedDelta must be an integer (A1111's ENSD, e.g. 31337), got ${ensd}`);
    const resize = o.seedResizeFrom ?? { width: 0, height: 0 };
    if (!Number.isSafeInteger(resize.width) || !Number.isSafeInteger(resize.height)) {
      throw new Error(`a1111ImageNoise: seedResizeFrom must be {width, height} in pixels, got ${JSON.stringify(o.seedResizeFrom)}`);
    }
    let seeds: bigint[];
    let subseeds: bigint[] | undefined;
    if (o.seeds !== undefined) {
      if (o.seeds.length !== batch)
        throw new Error(`a1111ImageNoise: ${o.seeds.length} seeds for a batch of ${batch}; give one per image, or a single seed`);
      seeds = o.seeds.map((s, i) => toSeed(s, `seeds[${i}]`));
      subseeds =
        o.subseeds?.map((s, i) => toSeed(s, `subseeds[${i}]`)) ??
        (o.subseed !== undefined ? a1111BatchSeeds(0, batch, { subseed: o.subseed }).subseeds : undefined);
    } else {
      if (o.seed === undefined) throw new Error("a1111ImageNoise: give a seed (e.g. seed: 1234, as in the infotext) or one seed per image");
      const b = a1111BatchSeeds(o.seed, batch, { subseed: o.subseed ?? 0, subseedStrength: strength });
      seeds = b.seeds;
      subseeds = o.subseeds?.map((s, i) => toSeed(s, `subseeds[${i}]`)) ?? (o.subseed !== undefined ? b.subseeds : undefined);
    }
    const source = o.source ?? "CPU";
    const full = {
      shape,
      subseedStrength: strength,
      seedResizeFrom: resize,
      etaNoiseSeedDelta: ensd,
      source,
      cpuKernel: o.cpuKernel ?? "avx2",
    };
    return new A1111ImageNoise(full, seeds, subseeds);
  }

  private create(seed: bigint): A1111Rng {
    return A1111Rng.create(seed, this.opts.source, { cpuKernel: this.opts.cpuKernel });
  }

  /** An independent copy in the same state. */
  clone(): A1111ImageNoise {
    const copy = new A1111ImageNoise(this.opts, this.seeds, this.subseeds);
    copy.generators = this.generators.map((g) => g.clone());
    copy.isFirst = this.isFirst;
    return copy;
  }

  /** Values per draw: batch · height · width · channels. */
  get size(): number {
    return this.opts.shape.reduce((a, b) => a * b, 1);
  }

  /** The next draw of the whole batch (see `next`); `n` must be the batch's size. */
  normal(n: number): Float32Array {
    if (n !== this.size) {
      throw new Error(
        `A1111 image noise draws whole batches of ${JSON.stringify(this.opts.shape)} (${this.size} values), but ${n} were requested; create it with the sampler's latent shape`,
      );
    }
    return this.next();
  }

  /** A1111's `ImageRNG.next()`: the first call gives the initial noise, later calls the step noise. NHWC. */
  next(): Float32Array {
    const [, h, w, c] = this.opts.shape;
    const out = new Float32Array(this.size);
    const per = c * h * w;
    const chw = this.isFirst ? this.first() : this.generators.map((g) => g.normal(per));
    chw.forEach((img, i) => out.set(chwToHwc(img, c, h, w), i * per));
    if (this.isFirst) {
      this.isFirst = false;
      const delta = BigInt(this.opts.etaNoiseSeedDelta);
      if (delta !== 0n)
        this.generators = this.seeds.map((s, i) => this.create(toSeed(s + delta, `seed + eta noise seed delta of image ${i}`)));
    }
    return out;
  }

  /** The initial noise of each image, `[C, H, W]`, as `ImageRNG.first()` makes it. */
  private first(): Float32Array[] {
    const [, h, w, c] = this.opts.shape;
    const { width: rw, height: rh } = this.opts.seedResizeFrom;
    const resized = rw > 0 && rh > 0;
    const nh = resized ? Math.floor(rh / 8) : h;
    const nw = resized ? Math.floor(rw / 8) : w;
    const sameShape = nh === h && nw === w;
    const strength = this.opts.subseedStrength;
    return this.seeds.map((seed, i) => {
      let subnoise: Float32Array | undefined;
      if (this.subseeds !== undefined && strength !== 0) {
        subnoise = this.create(this.subseeds[i] ?? 0n).normal(c * nh * nw);
      }
      let noise = sameShape ? this.generators[i]!.normal(c * h * w) : this.create(seed).normal(c * nh * nw);
      if (subnoise) noise = a1111Slerp(strength, noise, subnoise, c, nh, nw);
      if (sameShape) return noise;
      const x = this.generators[i]!.normal(c * h * w);
      pasteCentre(x, [c, h, w], noise, [nh, nw]);
      return x;
    });
  }
}

/** A1111's "resize seed from" paste: the centre of `noise` [c, nh, nw] over the centre of `x` [c, h, w]. */
function pasteCentre(x: Float32Array, [c, h, w]: [number, number, number], noise: Float32Array, [nh, nw]: [number, number]): void {
  let dx = Math.floor((w - nw) / 2);
  let dy = Math.floor((h - nh) / 2);
  const cw = dx >= 0 ? nw : nw + 2 * dx;
  const ch = dy >= 0 ? nh : nh + 2 * dy;
  const tx = Math.max(dx, 0);
  const ty = Math.max(dy, 0);
  dx = Math.max(-dx, 0);
  dy = Math.max(-dy, 0);
  for (let k = 0; k < c; k++) {
    for (let y = 0; y < ch; y++) {
      for (let xx = 0; xx < cw; xx++) x[(k * h + ty + y) * w + tx + xx] = noise[(k * nh + dy + y) * nw + dx + xx]!;
    }
  }
}

/**
 * A batch's noise drawn as A1111 draws it, ready to pass as a sampler's `rng` (see the module
 * comment). Example: the infotext "Seed: 1234, RNG: NV, ENSD: 31337" with batch size 2 at 512×512 is
 * `a1111ImageNoise({ shape: [2, 64, 64, 4], seed: 1234, source: "NV", etaNoiseSeedDelta: 31337 })`.
 */
export function a1111ImageNoise(opts: A1111NoiseOptions): A1111ImageNoise {
  return A1111ImageNoise.create(opts);
}
