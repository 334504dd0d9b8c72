/**
 * numpy's `SeedSequence` (numpy/random/bit_generator.pyx), the part torchsde uses: build the
 * entropy pool from an integer entropy and a spawn key, then `generate_state(n)` words.
 *
 * Why here: torchsde's Brownian tree (which A1111's DPM++ SDE samplers use through k-diffusion)
 * seeds the torch generator of every tree node with
 * `SeedSequence(entropy=seed, spawn_key=(key, depth), pool_size=24).generate_state(4)[0]`, so the
 * tree's noise can only be reproduced with the same words. The algorithm is Melissa O'Neill's
 * seed_seq hashing as numpy implements it: 32-bit multiply–xorshift hashes (`hashmix`) fold the
 * entropy words into the pool, every pool word is mixed into every other (`mix`), and the output
 * words are hashes of the pool words taken in a cycle.
 */

const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;

/** An integer as numpy's `_int_to_uint32_array`: little-endian 32-bit words, [0] for 0. */
function intWords(n: bigint, what: string): number[] {
  if (n < 0n) throw new Error(`SeedSequence: ${what} must be a non-negative integer, got ${n}`);
  if (n === 0n) return [0];
  const out: number[] = [];
  for (let v = n; v > 0n; v >>= 32n) out.push(Number(v & 0xffffffffn));
  return out;
}

/**
 * The output of numpy's `SeedSequence(entropy, spawn_key=spawnKey, pool_size=poolSize)
 * .generate_state(nWords)` (uint32 words). `spawnKey` undefined or empty means no spawn key.
 */
export function seedSequenceState(
  entropy: bigint | number,
  spawnKey: readonly (bigint | number)[] | undefined,
  poolSize: number,
  nWords: number,
): Uint32Array {
  if (!Number.isSafeInteger(poolSize) || poolSize < 4) throw new Error(`SeedSequence: pool size must be an integer ≥ 4, got ${poolSize}`);
  let run = intWords(BigInt(entropy), "entropy");
  const spawn = (spawnKey ?? []).flatMap((k, i) => intWords(BigInt(k), `spawn key word ${i}`));
  // numpy ≥ 1.19 pads the run entropy to the pool size when there is a spawn key (gh-16539)
  if (spawn.length > 0 && run.length < poolSize) run = run.concat(new Array<number>(poolSize - run.length).fill(0));
  const entropyWords = run.concat(spawn);

  let hashConst = INIT_A;
  const hashmix = (value: number): number => {
    let v = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    v = Math.imul(v, hashConst) >>> 0;
    return (v ^ (v >>> 16)) >>> 0;
  };
  const mix = (x: number, y: number): number => {
    const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };

  const pool = new Uint32Array(poolSize);
  for (let i = 0; i < poolSize; i++) pool[i] = hashmix(i < entropyWords.length ? entropyWords[i]! : 0);
  for (let src = 0; src < poolSize; src++) {
    for (let dst = 0; dst < poolSize; dst++) {
      if (src !== dst) pool[dst] = mix(pool[dst]!, hashmix(pool[src]!));
    }
  }
  for (let src = poolSize; src < entropyWords.length; src++) {
    for (let dst = 0; dst < poolSize; dst++) pool[dst] = mix(pool[dst]!, hashmix(entropyWords[src]!));
  }

  const out = new Uint32Array(nWords);
  let h = INIT_B;
  for (let i = 0; i < nWords; i++) {
    let v = (pool[i % poolSize]! ^ h) >>> 0;
    h = Math.imul(h, MULT_B) >>> 0;
    v = Math.imul(v, h) >>> 0;
    out[i] = (v ^ (v >>> 16)) >>> 0;
  }
  return out;
}
