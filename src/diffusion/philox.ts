/**
 * AUTOMATIC1111's "NV" noise source: its CPU imitation of `torch.randn(..., device="cuda")`
 * (modules/rng_philox.py), reproduced value for value.
 *
 * Each draw of n normals uses one Philox 4×32-10 block per element (Salmon et al., "Parallel
 * random numbers: as easy as 1, 2, 3", 2011): key = the 64-bit seed as (low, high) words,
 * counter = (offset, 0, i, 0) for element i, ten rounds with the key bumped by the Weyl constants
 * between rounds. The first two output words go through Box–Muller (sine branch only):
 *
 *   u = w₀·2⁻³² + 2⁻³³,  v = w₁·2π·2⁻³² + π·2⁻³²,  z = √(−2 ln u) · sin v
 *
 * with A1111's float32 constants and the arithmetic in float64 (numpy promotes uint32 × float32
 * arrays to float64), rounded to float32 at the end. Every draw advances the offset by one,
 * whatever its size.
 *
 * The 32×32→64-bit products are split into 16-bit halves so that every step is exact in
 * JavaScript numbers.
 */

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** A1111's constants, as the float32 numpy arrays it writes them as, widened to float64. */
const INV32 = Math.fround(2.3283064e-10);
const INV32_2PI = Math.fround(2.3283064e-10 * 6.2831855);
const INV32_HALF = Math.fround(INV32 / 2);
const INV32_2PI_HALF = Math.fround(INV32_2PI / 2);

/** High and low 32 bits of the exact product a·b of two uint32 values. */
function mulHiLo(a: number, b: number): [number, number] {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  const ll = aLo * bLo;
  const lh = aLo * bHi;
  const hl = aHi * bLo;
  const hh = aHi * bHi;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff); // < 3·2¹⁶
  const lo = ((mid & 0xffff) * 0x10000 + (ll & 0xffff)) >>> 0;
  const hi = (hh + (lh >>> 16) + (hl >>> 16) + Math.floor(mid / 0x10000)) >>> 0;
  return [hi, lo];
}

/**
 * Philox 4×32 with 10 rounds on counter (c0, c1, c2, c3) and key (k0, k1); returns the first two
 * output words (the two A1111 uses). Exposed for tests against published Philox vectors.
 */
export function philox4x32First2(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number): [number, number] {
  for (let round = 0; round < 10; round++) {
    const [hi0, lo0] = mulHiLo(c0, M0);
    const [hi1, lo1] = mulHiLo(c2, M1);
    const n0 = (hi1 ^ c1 ^ k0) >>> 0;
    const n2 = (hi0 ^ c3 ^ k1) >>> 0;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return [c0, c1];
}

/** Saved state of an NV generator: the seed (decimal string, up to 64 bits) and the draw offset. */
export interface PhiloxState {
  seed: string;
  offset: number;
}

/** A1111's `rng_philox.Generator`: `normal(n)` is its `randn((n,))`. */
export class PhiloxNormal {
  private readonly k0: number;
  private readonly k1: number;
  private offset = 0;

  /** @param seed the seed reduced to 64 bits (A1111 fills a uint64 with it). */
  constructor(readonly seed: bigint) {
    if (seed < 0n || seed >= 1n << 64n) throw new Error(`PhiloxNormal: seed must be in [0, 2^64), got ${seed}`);
    this.k0 = Number(seed & 0xffffffffn);
    this.k1 = Number(seed >> 32n);
  }

  /** The offset of the next draw (0 for a fresh generator). */
  get drawOffset(): number {
    return this.offset;
  }

  getState(): PhiloxState {
    return { seed: this.seed.toString(), offset: this.offset };
  }

  /** Resume at a draw offset (the seed is fixed at construction). */
  setOffset(offset: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset >= 2 ** 32)
      throw new Error(`PhiloxNormal: offset must be an integer in [0, 2^32), got ${offset}`);
    this.offset = offset;
  }

  /** `n` normals in A1111's order; advances the offset by one. */
  normal(n: number): Float32Array {
    if (!Number.isSafeInteger(n) || n < 0 || n > 2 ** 32)
      throw new Error(`PhiloxNormal.normal: count must be an integer in [0, 2^32], got ${n}`);
    const out = new Float32Array(n);
    const offset = this.offset;
    for (let i = 0; i < n; i++) {
      const [w0, w1] = philox4x32First2(offset, 0, i, 0, this.k0, this.k1);
      const u = w0 * INV32 + INV32_HALF;
      const v = w1 * INV32_2PI + INV32_2PI_HALF;
      out[i] = Math.sqrt(-2 * Math.log(u)) * Math.sin(v);
    }
    this.offset = (offset + 1) >>> 0;
    return out;
  }
}
