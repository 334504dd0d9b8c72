/**
 * Noise exactly as AUTOMATIC1111 draws it (modules/rng.py), so that a seed from an A1111
 * infotext gives the same starting latents here.
 *
 * Two sources, A1111's "Random number generator source" setting:
 * - `"CPU"`: `torch.Generator("cpu").manual_seed(seed)` + `torch.randn` — MT19937 and torch's CPU
 *   normal kernel (`TorchCpuGenerator`; x86/AVX2 arithmetic by default, `cpuKernel: "default"`
 *   for the portable kernel that ARM machines such as Macs run).
 * - `"NV"`: A1111's NumPy imitation of CUDA's `torch.randn` (Philox 4×32-10, `PhiloxNormal`).
 *   A1111's default, "GPU", draws on the graphics card; on NVIDIA cards that is the stream "NV"
 *   imitates, so an infotext without an `RNG:` field is closest to `"NV"`.
 *
 * What A1111 does with them, per generated image (its `ImageRNG`), and what `a1111ImageNoise`
 * reproduces:
 * - image i of a batch uses its own generator seeded with `seeds[i]`; A1111 sets
 *   seeds[i] = seed + i, except that with a variation strength > 0 every image keeps `seed` and the
 *   variation seeds count up instead (`a1111BatchSeeds`);
 * - each draw is one `[C, H, W]` tensor per image (NCHW, row-major), stacked over the batch;
 * - the first draw is the initial latent noise; with a variation seed it is
 *   `slerp(strength, noise(seed), noise(subseed))` (`a1111Slerp`), and "resize seed from W×H"
 *   draws the noise at that size and pastes its centre into the real-size draw;
 * - every later draw (ancestral samplers' per-step noise) continues the same generators, or, with
 *   "Eta noise seed delta" (ENSD) ≠ 0, fresh generators seeded with seeds[i] + ENSD.
 *
 * The samplers consume all of this through `NoiseRng.normal(n)`: they ask for the batch's noise
 * as one NHWC block, and `A1111ImageNoise` answers with A1111's per-image NCHW draws laid out as
 * NHWC. A plain `a1111Rng` is one generator whose `normal(n)` is `torch.randn(n)`.
 */
import * as tf from "@tensorflow/tfjs";
import type { Mt19937State } from "./mt19937";
import { PhiloxNormal } from "./philox";
import { TorchCpuGenerator, type TorchCpuKernel } from "./torch-cpu-randn";

/**
 * What a sampler needs from a noise generator: `normal(n)` returns the next n standard normals
 * (float32), in the order they fill a row-major tensor. `Rng` (the project's own generator)
 * satisfies this interface too, so a sampler typed with `NoiseRng` accepts either.
 */
export interface NoiseRng {
  normal(n: number): Float32Array;
  /** An independent copy in the same state (drawing from one leaves the other untouched). */
  clone(): NoiseRng;
}

/** A1111's "Random number generator source" (`randn_source`), as written in infotexts (`RNG: NV`). */
export type A1111RngSource = "CPU" | "NV";

/** A seed as A1111 stores it: a non-negative integer below 2⁶⁴ (number or bigint). */
export type A1111Seed = number | bigint;

/** Options for `a1111Rng`. */
export interface A1111RngOptions {
  /** Which torch CPU kernel to imitate for the "CPU" source (default `"avx2"`, x86 PCs). */
  cpuKernel?: TorchCpuKernel;
}

/** Saved state of an `A1111Rng`, plain JSON. */
export type A1111RngState =
  | { source: "CPU"; seed: string; kernel: TorchCpuKernel; engine: Mt19937State; cachedNormal: number | null }
  | { source: "NV"; seed: string; offset: number };

/** Check and convert a seed; `what` names it in the error. */
export function toSeed(seed: A1111Seed, what = "seed"): bigint {
  if (typeof seed === "number" && !Number.isSafeInteger(seed)) {
    throw new Error(`${what} must be an integer (a number up to 2^53 or a bigint up to 2^64), got ${seed}`);
  }
  const s = BigInt(seed);
  if (s < 0n || s >= 1n << 64n) {
    throw new Error(
      `${what} must be in [0, 2^64), got ${s}; A1111 replaces −1 with a random seed before drawing — pass the seed it reports`,
    );
  }
  return s;
}

function checkSource(source: string): asserts source is A1111RngSource {
  if (source !== "CPU" && source !== "NV") {
    throw new Error(
      `A1111 noise source must be "CPU" or "NV", got ${JSON.stringify(source)}; A1111's "GPU" draws on the graphics card — use "NV", its CPU imitation of NVIDIA's stream`,
    );
  }
}

/** One A1111 generator: `normal(n)` is `torch.randn(n)` from that seed and source. */
export class A1111Rng implements NoiseRng {
  private constructor(
    readonly source: A1111RngSource,
    readonly seed: bigint,
    private readonly cpu: TorchCpuGenerator | undefined,
    private readonly nv: PhiloxNormal | undefined,
  ) {}

  /** A fresh generator (see `a1111Rng`). */
  static create(seed: A1111Seed, source: A1111RngSource, opts: A1111RngOptions = {}): A1111Rng {
    checkSource(source);
    const s = toSeed(seed);
    const kernel = opts.cpuKernel ?? "avx2";
    if (kernel !== "avx2" && kernel !== "default")
      throw new Error(`a1111Rng: cpuKernel must be "avx2" or "default", got ${JSON.stringify(kernel)}`);
    return source === "CPU"
      ? new A1111Rng(source, s, TorchCpuGenerator.seeded(s, kernel), undefined)
      : new A1111Rng(source, s, undefined, new PhiloxNormal(s));
  }

  /** A generator resumed from `getState()`. */
  static fromState(state: A1111RngState): A1111Rng {
    const bad = (): never => {
      throw new Error(
        `A1111Rng.fromState: not a saved A1111 generator state (${JSON.stringify(state)?.slice(0, 120)}); pass what getState() returned`,
      );
    };
    if (typeof state !== "object" || state === null || typeof state.seed !== "string" || !/^\d+$/.test(state.seed)) return bad();
    if (state.source === "NV") {
      const rng = A1111Rng.create(BigInt(state.seed), "NV");
      rng.nv!.setOffset(state.offset);
      return rng;
    }
    if (state.source !== "CPU" || (state.cachedNormal !== null && typeof state.cachedNormal !== "number")) return bad();
    const rng = A1111Rng.create(BigInt(state.seed), "CPU", { cpuKernel: state.kernel });
    rng.cpu!.engine.setState(state.engine);
    rng.cpu!.cachedNormal = state.cachedNormal ?? undefined;
    return rng;
  }

  /** The state as plain JSON (save it beside a checkpoint, or around a preview). */
  getState(): A1111RngState {
    if (this.cpu) {
      return {
        source: "CPU",
        seed: this.seed.toString(),
        kernel: this.cpu.kernel,
        engine: this.cpu.engine.getState(),
        cachedNormal: this.cpu.cachedNormal ?? null,
      };
    }
    return { source: "NV", seed: this.seed.toString(), offset: this.nv!.drawOffset };
  }

  clone(): A1111Rng {
    return A1111Rng.fromState(this.getState());
  }

  /**
   * The next `n` normals: one `torch.randn(n)` call ("CPU"; a tensor of any shape with n
   * elements draws the same values in row-major order) or one `Generator.randn` call ("NV",
   * which advances the offset by one however large n is).
   */
  normal(n: number): Float32Array {
    return this.cpu ? this.cpu.normal(n) : this.nv!.normal(n);
  }
}

/**
 * AUTOMATIC1111's generator for `seed` and `source` ("CPU" = torch's CPU generator, "NV" = its
 * Philox imitation of CUDA). Successive `normal`/`randn` calls continue the stream as successive
 * `torch.randn(..., generator=g)` calls do.
 */
export function a1111Rng(seed: A1111Seed, source: A1111RngSource = "CPU", opts: A1111RngOptions = {}): A1111Rng {
  return A1111Rng.create(seed, source, opts);
}

/**
 * A float32 tensor of standard normals with `shape`, filled in row-major order from `rng` — with an
 * `a1111Rng` exactly `torch.randn(shape, generator=g)`. Accepts the project's `Rng` as well.
 * The caller owns the tensor.
 */
export function randn(shape: readonly number[], rng: NoiseRng): tf.Tensor {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`randn: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  const size = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(rng.normal(size), [...shape], "float32");
}

/** `[C, H, W]` (one image, row-major) → `[H, W, C]`. */
export function chwToHwc(data: Float32Array, c: number, h: number, w: number): Float32Array {
  if (data.length !== c * h * w) throw new Error(`chwToHwc: ${data.length} values do not make [${c}, ${h}, ${w}]`);
  const out = new Float32Array(data.length);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < h; y++) {
      const src = (ch * h + y) * w;
      const dst = y * w * c + ch;
      for (let x = 0; x < w; x++) out[dst + x * c] = data[src + x]!;
    }
  }
  return out;
}

/** `[H, W, C]` → `[C, H, W]` (the inverse of `chwToHwc`). */
export function hwcToChw(data: Float32Array, c: number, h: number, w: number): Float32Array {
  if (data.length !== c * h * w) throw new Error(`hwcToChw: ${data.length} values do not make [${h}, ${w}, ${c}]`);
  const out = new Float32Array(data.length);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) out[(ch * h + y) * w + x] = data[(y * w + x) * c + ch]!;
    }
  }
  return out;
}

/**
 * A1111's `slerp(val, low, high)` applied to one image's `[C, H, W]` noise, as A1111 calls it.
 * Its norms and dot products run over dim 1 — the height axis — so the interpolation angle is
 * computed separately for every (channel, column); when the mean cosine exceeds 0.9995 it falls
 * back to `low·val + high·(1 − val)` (weights the other way round from the slerp branch; A1111's
 * behaviour, kept). Every step is rounded to float32 as torch computes it (sums in order along the
 * height), so the result is within a few float32 ulps of torch's — not bit-exact, because torch's
 * vectorised acos/sin are not correctly rounded.
 */
export function a1111Slerp(val: number, low: Float32Array, high: Float32Array, c: number, h: number, w: number): Float32Array {
  if (low.length !== c * h * w || high.length !== c * h * w)
    throw new Error(`a1111Slerp: low and high must both hold [${c}, ${h}, ${w}] values`);
  if (!Number.isFinite(val)) throw new Error(`a1111Slerp: strength must be a finite number, got ${val}`);
  const f = Math.fround;
  const dots = new Float32Array(c * w);
  for (let ch = 0; ch < c; ch++) {
    for (let x = 0; x < w; x++) {
      let sl = 0;
      let sh = 0;
      for (let y = 0; y < h; y++) {
        const i = (ch * h + y) * w + x;
        sl = f(sl + f(low[i]! * low[i]!));
        sh = f(sh + f(high[i]! * high[i]!));
      }
      const nl = f(Math.sqrt(sl));
      const nh = f(Math.sqrt(sh));
      let d = 0;
      for (let y = 0; y < h; y++) {
        const i = (ch * h + y) * w + x;
        d = f(d + f(f(low[i]! / nl) * f(high[i]! / nh)));
      }
      dots[ch * w + x] = d;
    }
  }
  const out = new Float32Array(low.length);
  const v = f(val);
  const v1 = f(1 - val);
  const mean = dots.reduce((a, b) => a + b, 0) / dots.length;
  if (mean > 0.9995) {
    for (let i = 0; i < out.length; i++) out[i] = f(f(low[i]! * v) + f(high[i]! * v1));
    return out;
  }
  for (let ch = 0; ch < c; ch++) {
    for (let x = 0; x < w; x++) {
      const omega = f(Math.acos(dots[ch * w + x]!));
      const so = f(Math.sin(omega));
      const a = f(f(Math.sin(f(v1 * omega))) / so);
      const b = f(f(Math.sin(f(v * omega))) / so);
      for (let y = 0; y < h; y++) {
        const i = (ch * h + y) * w + x;
        out[i] = f(a * low[i]!) + f(b * high[i]!);
      }
    }
  }
  return out;
}
