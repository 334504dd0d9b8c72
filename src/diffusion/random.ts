/**
 * Seeded random numbers that are the same everywhere.
 *
 * tfjs's own `randomNormal` depends on the backend (cpu, wasm, webgpu and tfjs-node each draw
 * differently), so a seed would not reproduce an image or a training run across machines. Here
 * every random number is drawn on the host, in JavaScript, and only then uploaded as a tensor:
 *
 * - generator: xoshiro128** (Blackman & Vigna), 128 bits of state in four uint32 words, 32-bit
 *   integer arithmetic only (`Math.imul`, shifts), so its stream is exact on every platform;
 * - uniforms: the top 24 bits of a draw divided by 2²⁴, exactly representable in float32;
 * - normals: Box–Muller on two such uniforms, computed in float64 and rounded to float32. Each
 *   pair of uniforms gives two normals; an odd-length request drops the last one, so a request
 *   for n normals always consumes exactly ⌈n/2⌉·2 draws. (`Math.log/cos/sin` are V8's fdlibm
 *   ports, the same on every OS and CPU; the float32 rounding absorbs any last-ulp difference
 *   another engine might have, except in vanishingly rare ties.)
 *
 * The state is a plain JSON object (`getState`/`setState`), so a training checkpoint can save it
 * and a preview can draw its own noise and then put the training stream back untouched.
 */
import * as tf from "@tensorflow/tfjs";

/** Serialisable generator state: the four xoshiro128** words as unsigned 32-bit integers. */
export interface RngState {
  algorithm: "xoshiro128**";
  words: [number, number, number, number];
}

const TWO_POW_24 = 16777216;
const TWO_POW_32 = 4294967296;

/** One step of splitmix32: returns [next state, mixed output]. Used only to expand a seed. */
function splitmix32(state: number): [number, number] {
  const next = (state + 0x9e3779b9) | 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  z ^= z >>> 16;
  return [next, z >>> 0];
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A seeded xoshiro128** generator with float32 uniform/normal helpers and a saveable state. */
export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  /**
   * @param seed a non-negative integer up to 2⁵³−1 (A1111 seeds are 32-bit; larger ones work too).
   *   The seed is expanded to 128 bits with splitmix32 over its low and high 32-bit halves.
   */
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new Error(
        `Rng: seed must be a non-negative integer below 2^53, got ${seed}; pick e.g. 1234 or Math.floor(Math.random() * 2 ** 32)`,
      );
    }
    const lo = seed >>> 0;
    const hi = Math.floor(seed / TWO_POW_32) >>> 0;
    let a = lo;
    let b = hi ^ 0x5bd1e995;
    const w: number[] = [];
    for (let i = 0; i < 4; i++) {
      let x: number;
      let y: number;
      [a, x] = splitmix32(a);
      [b, y] = splitmix32(b);
      w.push((x ^ Math.imul(y, 0x27d4eb2f)) >>> 0);
    }
    if ((w[0]! | w[1]! | w[2]! | w[3]!) === 0) w[0] = 1; // the all-zero state is a fixed point
    [this.s0, this.s1, this.s2, this.s3] = w as [number, number, number, number];
  }

  /** A generator resumed from a saved state. */
  static fromState(state: RngState): Rng {
    const r = new Rng(0);
    r.setState(state);
    return r;
  }

  /** The current state, a JSON-safe copy. */
  getState(): RngState {
    return { algorithm: "xoshiro128**", words: [this.s0 >>> 0, this.s1 >>> 0, this.s2 >>> 0, this.s3 >>> 0] };
  }

  /** Resume from a state returned by `getState` (possibly after a JSON round trip). */
  setState(state: RngState): void {
    const words = (state as Partial<RngState> | null)?.words;
    if (
      state?.algorithm !== "xoshiro128**" ||
      !Array.isArray(words) ||
      words.length !== 4 ||
      !words.every((v) => Number.isInteger(v) && v >= 0 && v < TWO_POW_32) ||
      words.every((v) => v === 0)
    ) {
      throw new Error(
        `Rng.setState: expected {algorithm: "xoshiro128**", words: [4 uint32, not all 0]}, got ${JSON.stringify(state)}; pass the object returned by rng.getState()`,
      );
    }
    [this.s0, this.s1, this.s2, this.s3] = words.map((v) => v | 0) as [number, number, number, number];
  }

  /** An independent copy with the same state (drawing from one does not advance the other). */
  clone(): Rng {
    return Rng.fromState(this.getState());
  }

  /** Next raw 32-bit draw, as an unsigned integer in [0, 2³²). */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9);
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result >>> 0;
  }

  /** Uniform in [0, 1) on the 2⁻²⁴ grid (exact in float32). */
  nextFloat(): number {
    return (this.nextUint32() >>> 8) / TWO_POW_24;
  }

  /** `n` uniforms in [0, 1). */
  uniform(n: number): Float32Array {
    checkCount(n, "uniform");
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.nextFloat();
    return out;
  }

  /** `n` standard normals (Box–Muller, pairs; see the module comment). */
  normal(n: number): Float32Array {
    checkCount(n, "normal");
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      // u1 ∈ (0, 1] so log(u1) is finite; u2 ∈ [0, 1).
      const u1 = ((this.nextUint32() >>> 8) + 1) / TWO_POW_24;
      const u2 = this.nextFloat();
      const r = Math.sqrt(-2 * Math.log(u1));
      const theta = 2 * Math.PI * u2;
      out[i] = r * Math.cos(theta);
      if (i + 1 < n) out[i + 1] = r * Math.sin(theta);
    }
    return out;
  }

  /** Uniform integer in [low, high), without modulo bias (rejection sampling). */
  nextInt(low: number, high: number): number {
    if (!Number.isSafeInteger(low) || !Number.isSafeInteger(high) || high <= low || high - low > TWO_POW_32) {
      throw new Error(`Rng.nextInt: need integers low < high with high − low ≤ 2^32, got [${low}, ${high})`);
    }
    const range = high - low;
    const limit = Math.floor(TWO_POW_32 / range) * range;
    for (;;) {
      const u = this.nextUint32();
      if (u < limit) return low + (u % range);
    }
  }
}

function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`Rng.${what}: count must be a non-negative integer, got ${n}`);
}

/** A float32 tensor of standard normals with the given shape, drawn from `rng` (backend-independent). */
export function randn(shape: readonly number[], rng: Pick<Rng, "normal">): tf.Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new Error(`randn: bad shape [${shape.join(", ")}]`);
  return tf.tensor(rng.normal(size), [...shape], "float32");
}

/** `n` integers uniform in [low, high) — like `torch.randint(low, high, (n,))`, e.g. timesteps. */
export function randint(n: number, low: number, high: number, rng: Rng): Int32Array {
  checkCount(n, "randint");
  if (low < -2147483648 || high > 2147483648) throw new Error(`randint: bounds must fit in int32, got [${low}, ${high})`);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.nextInt(low, high);
  return out;
}

/**
 * Run `fn` with `rng`, then put `rng` back to the state it had before — e.g. a preview during
 * training draws its own noise without shifting the training noise stream.
 */
export async function withRestoredRng<T>(rng: Rng, fn: () => T | Promise<T>): Promise<T> {
  const saved = rng.getState();
  try {
    return await fn();
  } finally {
    rng.setState(saved);
  }
}
