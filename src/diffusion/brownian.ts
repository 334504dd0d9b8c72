/**
 * Brownian-tree noise for the SDE samplers (DPM++ SDE, DPM++ 2M SDE), reproducing what A1111 gets
 * from k-diffusion's `BrownianTreeNoiseSampler` over torchsde's `BrownianTree` on the CPU, value
 * for value.
 *
 * The sampler asks for the noise of an interval (σ, σ_next); k-diffusion answers with the
 * increment of one fixed Brownian path W over σ, normalised to unit variance:
 *
 *   noise(σ, σ_next) = (W(σ_next) − W(σ)) / √|σ_next − σ|
 *
 * A1111 (`create_noise_sampler`) builds one path per image over [smallest σ > 0, largest σ] of the
 * run, with `entropy` = that image's seed, so a batch gives the images of single runs.
 *
 * torchsde's tree (`BrownianInterval` with `halfway_tree=True`, `tol=1e-6`, `pool_size=24`, no
 * Lévy area), restated:
 * - Times are rounded with Python's `round(t, 6)`; each tree node [s, e] splits at
 *   round((s + e)/2, 6), lazily, down to the query points.
 * - The root's increment is W = randn(seed₀)·√(t₁ − t₀); a child's increment comes from its
 *   parent's by the Brownian bridge: left = W·ℓ/h + √(ℓ·r/h)·randn(seed_parent), right = W − left
 *   (ℓ, r the parent's left/right lengths, h = ℓ + r).
 * - The seeds: numpy `SeedSequence(entropy, pool_size=24).generate_state(3)[0]` for the root, and
 *   `SeedSequence(entropy, spawn_key=(key, depth), pool_size=24).generate_state(4)[0]` for a node
 *   (key = 2·parent key + 0/1 for left/right; the root is (0, 0)); randn(seed) is
 *   `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` (torch-cpu-randn.ts)
 *   in the latent's own NCHW shape for one image ([4, h, w] for SD).
 * - A query (t_a, t_b) is the sum of the increments of the nodes that tile it, left to right.
 * All tensor arithmetic is float32 as torch does it (Python floats become float32 operands), and
 * the σ values are float32, as A1111's σ tensors are; see `brownianTreeNoiseSampler`.
 *
 * Where this can still differ from a given A1111 install: the σ values the sampler asks about. DPM++
 * SDE asks at exp(−t) of float32 log-σ times computed with torch's float32 `log`/`exp` kernels,
 * which are not correctly rounded (1 ulp off for a few % of inputs, machine-dependent); k-samplers.ts
 * uses correctly rounded float32 values, and the tree's rounding to 6 decimals hides a 1-ulp
 * difference except near a rounding boundary. The tests measure how often it shows.
 */
import { chwToHwc } from "./a1111-rng";
import { seedSequenceState } from "./seed-sequence";
import { TorchCpuGenerator } from "./torch-cpu-randn";

/** Noise for the interval (σ, σ_next): NHWC values for the whole batch, unit variance. */
export type NoiseSampler = (sigma: number, sigmaNext: number) => Float32Array;

const f32 = Math.fround;
/** torchsde's pool size for the tree's SeedSequences (BrownianTree default). */
const POOL_SIZE = 24;
/** How many node increments one path keeps (torchsde keeps 45; values do not depend on it). */
const CACHE_NODES = 64;

/**
 * Python's `round(x, 6)`: x rounded to 6 decimals (correctly, on x's exact binary value; exact
 * ties to even), returned as the nearest double. `toFixed` rounds exact ties up instead, and a tie
 * can only happen when x·128 is an odd integer.
 */
export function pyRound6(x: number): number {
  if (!Number.isFinite(x) || Math.abs(x) >= 1e15) return x;
  const y = x * 128;
  if (Number.isInteger(y) && Math.abs(y % 2) === 1) {
    const n = x * 1e6; // exact: k·7812.5
    const lo = Math.floor(n);
    return (lo % 2 === 0 ? lo : lo + 1) / 1e6;
  }
  return Number(x.toFixed(6));
}

interface TreeNode {
  start: number;
  end: number;
  parent: TreeNode | undefined;
  isLeft: boolean;
  /** Set when the node is split. */
  mid?: number;
  left?: TreeNode;
  right?: TreeNode;
  /** The torch seed of this node's bridge noise (set when split). */
  wSeed?: number;
}

/** One image's torchsde `BrownianTree` (see the module comment); `size` values in NCHW order. */
export class TorchsdeBrownianTree {
  private readonly root: TreeNode;
  private readonly rootW: Float32Array;
  private readonly keys = new Map<TreeNode, { key: number; depth: number }>();
  private readonly cache = new Map<TreeNode, Float32Array>();

  /** t0 < t1 as Python floats (k-diffusion passes float32 σ); `entropy` the image's seed. */
  constructor(
    private readonly entropy: bigint,
    t0: number,
    t1: number,
    private readonly size: number,
  ) {
    if (!(t0 < t1) || !Number.isFinite(t1)) throw new Error(`Brownian tree: need t0 < t1, got [${t0}, ${t1}]`);
    this.root = { start: pyRound6(t0), end: pyRound6(t1), parent: undefined, isLeft: false };
    this.keys.set(this.root, { key: 0, depth: 0 });
    const rootSeed = seedSequenceState(entropy, undefined, POOL_SIZE, 3)[0]!;
    const z = this.randn(rootSeed);
    const scale = f32(Math.sqrt(t1 - t0));
    this.rootW = new Float32Array(size);
    for (let k = 0; k < size; k++) this.rootW[k] = f32(z[k]! * scale);
  }

  private randn(seed: number): Float32Array {
    return TorchCpuGenerator.seeded(BigInt(seed)).normal(this.size);
  }

  /** torchsde `_split_exact` at the rounded halfway point; gives the node its seed. */
  private split(node: TreeNode): void {
    const mid = pyRound6(0.5 * (node.end + node.start));
    const own = node.parent
      ? (() => {
          const p = this.keys.get(node.parent)!;
          return { key: 2 * p.key + (node.isLeft ? 0 : 1), depth: p.depth + 1 };
        })()
      : { key: 0, depth: 0 };
    this.keys.set(node, own);
    node.mid = mid;
    node.wSeed = seedSequenceState(this.entropy, [own.key, own.depth], POOL_SIZE, 4)[0]!;
    node.left = { start: node.start, end: mid, parent: node, isLeft: true };
    node.right = { start: mid, end: node.end, parent: node, isLeft: false };
  }

  /** The nodes tiling [ta, tb] (rounded times inside the root), left to right. */
  private tile(node: TreeNode, ta: number, tb: number, out: TreeNode[]): void {
    if (ta === node.start && tb === node.end) {
      out.push(node);
      return;
    }
    if (node.mid === undefined) this.split(node);
    const m = node.mid!;
    if (tb <= m) this.tile(node.left!, ta, tb, out);
    else if (ta >= m) this.tile(node.right!, ta, tb, out);
    else {
      this.tile(node.left!, ta, m, out);
      this.tile(node.right!, m, tb, out);
    }
  }

  /** A node's increment W(end) − W(start), from its parent's by the Brownian bridge. */
  private increment(node: TreeNode): Float32Array {
    if (!node.parent) return this.rootW;
    const hit = this.cache.get(node);
    if (hit) {
      this.cache.delete(node);
      this.cache.set(node, hit);
      return hit;
    }
    const p = node.parent;
    const wp = this.increment(p);
    const hRec = 1 / (p.end - p.start);
    const ld = p.mid! - p.start;
    const rd = p.end - p.mid!;
    const a = f32(ld);
    const b = f32(hRec);
    const sd = f32(Math.sqrt(ld * rd * hRec));
    const z = this.randn(p.wSeed!);
    const out = new Float32Array(this.size);
    for (let k = 0; k < this.size; k++) {
      const left = f32(f32(f32(wp[k]! * a) * b) + f32(sd * z[k]!));
      out[k] = node.isLeft ? left : f32(wp[k]! - left);
    }
    if (this.cache.size >= CACHE_NODES) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(node, out);
    return out;
  }

  /**
   * torchsde `BrownianTree(ta, tb)` for ta ≤ tb: W(tb) − W(ta), times clamped to the tree's range
   * as torchsde does (it warns). Times that round to the same 6-decimal point give zeros.
   */
  between(ta: number, tb: number): Float32Array {
    if (ta > tb) throw new Error(`Brownian tree: query times must satisfy ta ≤ tb, got ${ta} > ${tb}`);
    const { start, end } = this.root;
    const a = Math.min(Math.max(ta, start), end);
    const b = Math.min(Math.max(tb, start), end);
    const ra = pyRound6(a);
    const rb = pyRound6(b);
    if (a === b || ra === rb) return new Float32Array(this.size);
    const nodes: TreeNode[] = [];
    this.tile(this.root, ra, rb, nodes);
    const w = Float32Array.from(this.increment(nodes[0]!));
    for (let i = 1; i < nodes.length; i++) {
      const wi = this.increment(nodes[i]!);
      for (let k = 0; k < this.size; k++) w[k] = f32(w[k]! + wi[k]!);
    }
    return w;
  }
}

/**
 * k-diffusion's `BrownianTreeNoiseSampler(x, σ_min, σ_max, seed=seeds)` as A1111 creates it, for
 * a batch of `shape[0]` latents (NHWC `shape`; each image's tree works in A1111's [C, H, W]):
 * one `TorchsdeBrownianTree` per image with entropy `seeds[i]`. σ values, here and in the calls,
 * are taken as float32 (A1111's σ are float32 tensors); the answer is
 * −sign·W(σ_lo, σ_hi) / √|σ_next − σ| in float32, laid out NHWC.
 */
export function brownianTreeNoiseSampler(
  shape: readonly number[],
  sigmaMin: number,
  sigmaMax: number,
  seeds: readonly (number | bigint)[],
): NoiseSampler {
  const [batch, h, w, c] = shape as [number, number, number, number];
  const per = h * w * c;
  const lo = f32(sigmaMin);
  const hi = f32(sigmaMax);
  if (!(lo > 0 && hi > lo && Number.isFinite(hi))) {
    throw new Error(`brownianTreeNoiseSampler: need 0 < sigmaMin < sigmaMax, got [${sigmaMin}, ${sigmaMax}]`);
  }
  const valid = (s: number | bigint) => (typeof s === "bigint" ? s >= 0n : Number.isSafeInteger(s) && s >= 0);
  if (seeds.length !== batch || !seeds.every(valid)) {
    throw new Error(
      `brownianTreeNoiseSampler: need one non-negative integer seed per image (${batch}), got [${seeds.map(String).join(", ")}]`,
    );
  }
  const trees = seeds.map((s) => new TorchsdeBrownianTree(BigInt(s), lo, hi, per));
  return (sigma, sigmaNext) => {
    const s0 = f32(sigma);
    const s1 = f32(sigmaNext);
    const sign = s0 < s1 ? 1 : -1;
    const [a, b] = sign === 1 ? [s0, s1] : [s1, s0];
    const d = f32(Math.sqrt(Math.abs(f32(s1 - s0))));
    const out = new Float32Array(batch * per);
    trees.forEach((tree, i) => {
      const inc = tree.between(a, b);
      for (let k = 0; k < per; k++) inc[k] = f32((sign * inc[k]!) / d);
      out.set(chwToHwc(inc, c, h, w), i * per);
    });
    return out;
  };
}

/** A 32-bit integer hash (murmur3's finaliser), for deriving a base seed from an rng draw. */
function mix32(x: number): number {
  let z = x | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
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
