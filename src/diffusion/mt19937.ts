/**
 * The Mersenne Twister (MT19937) exactly as PyTorch's CPU generator runs it
 * (`at::mt19937` in ATen/core/MT19937RNGEngine.h, Matsumoto & Nishimura's 2002 algorithm).
 *
 * Why a second generator next to `Rng`: AUTOMATIC1111's "CPU" noise source is
 * `torch.Generator("cpu").manual_seed(seed)`, and reproducing an A1111 image means drawing the very
 * same 32-bit words. Seeding follows torch: only the low 32 bits of the seed enter the state
 * (`manual_seed(2**32 + 5)` draws what `manual_seed(5)` draws), and the state is regenerated in
 * one block of 624 words when the first word is requested.
 *
 * All arithmetic is 32-bit (`Math.imul`, `>>>`), so the stream is identical on every platform.
 */

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER = 0x80000000;
const LOWER = 0x7fffffff;

/** A saved MT19937 state: the 624 words and the read position, as plain JSON. */
export interface Mt19937State {
  words: number[];
  /** Index of the next word to temper; 624 means "regenerate before the next draw". */
  index: number;
}

/** PyTorch's CPU Mersenne Twister: `next()` returns what `generator.random()` returns in ATen. */
export class Mt19937 {
  private readonly mt = new Uint32Array(N);
  private index = N;

  /** @param seed32 the seed's low 32 bits (torch ignores the rest), an integer in [0, 2³²). */
  constructor(seed32: number) {
    if (!Number.isInteger(seed32) || seed32 < 0 || seed32 >= 2 ** 32) {
      throw new Error(`Mt19937: seed must be an integer in [0, 2^32), got ${seed32}`);
    }
    const mt = this.mt;
    mt[0] = seed32;
    for (let j = 1; j < N; j++) {
      const prev = mt[j - 1]!;
      mt[j] = (Math.imul(1812433253, prev ^ (prev >>> 30)) + j) >>> 0;
    }
  }

  /** A generator resumed from `getState()`. */
  static fromState(state: Mt19937State): Mt19937 {
    const g = new Mt19937(0);
    g.setState(state);
    return g;
  }

  /** A JSON-safe copy of the state. */
  getState(): Mt19937State {
    return { words: Array.from(this.mt), index: this.index };
  }

  /** Resume from a state returned by `getState` (possibly after a JSON round trip). */
  setState(state: Mt19937State): void {
    const words = (state as Partial<Mt19937State> | null)?.words;
    const index = (state as Partial<Mt19937State> | null)?.index;
    if (
      !Array.isArray(words) ||
      words.length !== N ||
      !words.every((w) => Number.isInteger(w) && w >= 0 && w < 2 ** 32) ||
      !Number.isInteger(index) ||
      index! < 0 ||
      index! > N
    ) {
      throw new Error(`Mt19937.setState: expected {words: 624 uint32, index: 0..624}; pass the object returned by getState()`);
    }
    this.mt.set(words);
    this.index = index!;
  }

  /** Regenerate all 624 words (the "twist"). */
  private twist(): void {
    const mt = this.mt;
    for (let k = 0; k < N; k++) {
      const y = (mt[k]! & UPPER) | (mt[(k + 1) % N]! & LOWER);
      mt[k] = mt[(k + M) % N]! ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    this.index = 0;
  }

  /** The next 32-bit word, as an unsigned integer in [0, 2³²). */
  next(): number {
    if (this.index >= N) this.twist();
    let y = this.mt[this.index++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}
