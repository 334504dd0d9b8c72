/**
 * `torch.randn(n, generator=g)` on the CPU, bit for bit, on top of `Mt19937`.
 *
 * PyTorch's CPU normal kernel (aten/src/ATen/native/cpu/DistributionTemplates.h, `normal_kernel`)
 * has two paths:
 *
 * - n ≥ 16 (a contiguous float32 tensor): fill all n slots with float uniforms
 *   u = (word & 0xFFFFFF)·2⁻²⁴, then transform each full block of 16 in place, Box–Muller on the
 *   pairs (j, j+8): r = √(−2 ln(1 − u_j)), θ = 2π·u_{j+8}, slot j ← r cos θ, slot j+8 ← r sin θ.
 *   When n is not a multiple of 16, the LAST 16 slots are refilled with 16 fresh uniforms and
 *   transformed again (overwriting normals already written there).
 * - n < 16: one double normal per element (`at::normal_distribution<double>`): two 53-bit
 *   uniforms from two words each (u = ((hi·2³² + lo) mod 2⁵³)·2⁻⁵³), r = √(−2 ln(1 − u₂)),
 *   θ = 2π·u₁, return r cos θ and keep r sin θ in the generator as the next call's value. The
 *   cache outlives the call (the next small draw starts with it) and survives a large draw; only
 *   re-seeding clears it.
 *
 * The float math of the n ≥ 16 path depends on the CPU kernel torch picked at start-up:
 * - `"avx2"` (every x86-64 machine with AVX2; what A1111 on Windows/Linux PCs runs): 8 lanes at a
 *   time with `log256_ps` and `sincos256_ps` from avx_mathfun.h (Cephes polynomials in float32).
 *   Reproduced here operation by operation in float32 (`Math.fround` after each step, `fmaf` where
 *   the compiled kernel fuses a multiply-add), which is exact: every step is one IEEE float32
 *   operation on float32 inputs.
 * - `"default"` (the portable kernel: ARM machines such as Apple silicon, where A1111 draws MPS noise
 *   on the CPU; or `ATEN_CPU_CAPABILITY=default`): `std::log`/`std::cos`/`std::sin` on floats.
 *   Here they are the float64 functions rounded to float32, which agrees with a correctly rounding
 *   libm except in rare ties (see the tests for the measured rate).
 */
import { Mt19937 } from "./mt19937";

/** Which of torch's CPU kernels to imitate for draws of 16 or more. */
export type TorchCpuKernel = "avx2" | "default";

const f = Math.fround;
const TWO_POW_M24 = 1 / 16777216;
const TWO_POW_M53 = 2 ** -53;
const TWO_PI_F = f(2 * Math.PI);

// avx_mathfun.h constants (`_PS256_CONST` stores each double literal as a float).
const SQRTHF = f(0.707106781186547524);
const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
  3.3333331174e-1,
].map(f);
const LOG_Q1 = f(-2.1219444e-4);
const LOG_Q2 = f(0.693359375);
const DP1 = f(-0.78515625);
const DP2 = f(-2.4187564849853515625e-4);
const DP3 = f(-3.77489497744594108e-8);
const SINCOF = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f);
const COSCOF = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f);
const FOPI = f(1.27323954473516);

const scratchF = new Float32Array(1);
const scratchU = new Uint32Array(scratchF.buffer);

/** The float32 next to `x` (a float32) in the direction of `dir` (its sign). */
function nextFloat32(x: number, dir: number): number {
  if (x === 0) {
    scratchU[0] = 1;
    return dir > 0 ? scratchF[0]! : -scratchF[0]!;
  }
  scratchF[0] = x;
  scratchU[0] = x > 0 === dir > 0 ? scratchU[0]! + 1 : scratchU[0]! - 1;
  return scratchF[0]!;
}

/**
 * Fused multiply-add in float32, a·b + c rounded once (the x86 `vfmadd` instructions). a·b of two
 * floats is exact in a double; the sum is exact as double + error term (Knuth's TwoSum), and only
 * a sum that lands exactly halfway between two floats needs the error term to pick the side.
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bb = s - p;
  const err = p - (s - bb) + (c - bb);
  const r = f(s);
  if (r === s || err === 0) return r;
  const other = nextFloat32(r, s - r);
  if ((r + other) / 2 !== s) return r;
  return err > 0 ? Math.max(r, other) : Math.min(r, other);
}

/*
 * The AVX2 kernel's math. GCC compiles avx_mathfun.h's separate `_mm256_mul_ps` / `_mm256_add_ps`
 * with FMA contraction (-mfma, -ffp-contract=fast is GCC's default): wherever a product feeds
 * only an addition, the pair becomes one fused multiply-add. The fused pairs below are the ones
 * that contraction produces (and the only combination that matched torch bit for bit in the
 * tests; rounding every product separately leaves about 1 % of values 1–2 ulp off).
 */

/** `log256_ps` for one lane, x ∈ (0, 1]: exponent split, then a degree-9 Cephes polynomial. */
export function avxLog(x0: number): number {
  scratchF[0] = Math.max(x0, 1.1754943508222875e-38);
  const bits = scratchU[0]!;
  let e = f((bits >>> 23) - 127 + 1);
  scratchU[0] = (bits & ~0x7f800000) | 0x3f000000; // mantissa with the exponent of 0.5: x ∈ [0.5, 1)
  let x = scratchF[0]!;
  const small = x < SQRTHF;
  const tmp = small ? x : 0;
  x = f(x - 1);
  if (small) e = f(e - 1);
  x = f(x + tmp);
  const z = f(x * x);
  let y = LOG_P[0]!;
  for (let i = 1; i < 9; i++) y = fmaf(y, x, LOG_P[i]!);
  y = f(y * x);
  y = fmaf(y, z, f(e * LOG_Q1));
  y = f(y - f(z * 0.5)); // z·0.5 is exact, so fusing it changes nothing
  return fmaf(e, LOG_Q2, f(x + y));
}

/** `sincos256_ps` for one lane: [sin x, cos x] with Cephes' octant reduction, in float32. */
export function avxSinCos(x0: number): [number, number] {
  let signSin = x0 < 0 || Object.is(x0, -0);
  let x = Math.abs(x0);
  let j = Math.trunc(f(x * FOPI)) | 0;
  j = (j + 1) & ~1;
  const y = j; // exact as a float for the ranges used here
  if (j & 4) signSin = !signSin;
  const firstPoly = (j & 2) === 0;
  const signCos = (~(j - 2) & 4) !== 0;
  x = fmaf(y, DP1, x);
  x = fmaf(y, DP2, x);
  x = fmaf(y, DP3, x);
  const z = f(x * x);
  let c = fmaf(COSCOF[0]!, z, COSCOF[1]!);
  c = fmaf(c, z, COSCOF[2]!);
  c = f(c * z);
  c = fmaf(c, z, -f(z * 0.5));
  c = f(c + 1);
  let s = fmaf(SINCOF[0]!, z, SINCOF[1]!);
  s = fmaf(s, z, SINCOF[2]!);
  s = f(s * z);
  s = fmaf(s, x, x);
  // The kernel adds +0 to the unselected polynomial, which turns −0 into +0.
  const sinV = (firstPoly ? s : c) + 0;
  const cosV = (firstPoly ? c : s) + 0;
  return [signSin ? -sinV : sinV, signCos ? -cosV : cosV];
}

/** Box–Muller on one block of 16 uniforms starting at `at`, as torch's kernel does it. */
function fill16(data: Float32Array, at: number, kernel: TorchCpuKernel): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f(1 - data[at + j]!);
    const u2 = data[at + j + 8]!;
    if (kernel === "avx2") {
      const radius = f(Math.sqrt(f(-2 * avxLog(u1))));
      const [s, c] = avxSinCos(f(TWO_PI_F * u2));
      data[at + j] = f(radius * c);
      data[at + j + 8] = f(radius * s);
    } else {
      const radius = f(Math.sqrt(f(-2 * f(Math.log(u1)))));
      const theta = f(2 * Math.PI * u2); // computed in double, stored as float
      data[at + j] = f(radius * f(Math.cos(theta)));
      data[at + j + 8] = f(radius * f(Math.sin(theta)));
    }
  }
}

/**
 * A CPU generator as torch keeps it: the Mersenne Twister plus the cached second normal of the
 * small-draw path.
 */
export class TorchCpuGenerator {
  /** The cached `r sin θ` of the last small-draw pair, or undefined. */
  cachedNormal: number | undefined = undefined;

  constructor(
    readonly engine: Mt19937,
    readonly kernel: TorchCpuKernel = "avx2",
  ) {}

  /** `torch.Generator("cpu").manual_seed(seed)`: only the seed's low 32 bits matter. */
  static seeded(seed: bigint, kernel: TorchCpuKernel = "avx2"): TorchCpuGenerator {
    return new TorchCpuGenerator(new Mt19937(Number(BigInt.asUintN(32, seed))), kernel);
  }

  /** A float uniform on the 2⁻²⁴ grid from the low 24 bits of one word. */
  private uniformFloat(): number {
    return (this.engine.next() & 0xffffff) * TWO_POW_M24;
  }

  /** A double uniform on the 2⁻⁵³ grid from two words (first = high). */
  private uniformDouble(): number {
    const hi = this.engine.next() & 0x1fffff; // 53 − 32 = 21 bits of the first word survive the mask
    const lo = this.engine.next();
    return (hi * 4294967296 + lo) * TWO_POW_M53;
  }

  /** One value of the small-draw path (`at::normal_distribution<double>`), before the float cast. */
  private normalDouble(): number {
    if (this.cachedNormal !== undefined) {
      const v = this.cachedNormal;
      this.cachedNormal = undefined;
      return v;
    }
    const u1 = this.uniformDouble();
    const u2 = this.uniformDouble();
    const r = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = 2 * Math.PI * u1;
    this.cachedNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** `torch.randn(n, generator=g)` as a flat float32 array. */
  normal(n: number): Float32Array {
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`torch CPU randn: count must be a non-negative integer, got ${n}`);
    const data = new Float32Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) data[i] = this.normalDouble();
      return data;
    }
    for (let i = 0; i < n; i++) data[i] = this.uniformFloat();
    for (let i = 0; i + 16 <= n; i += 16) fill16(data, i, this.kernel);
    if (n % 16 !== 0) {
      const at = n - 16;
      for (let i = 0; i < 16; i++) data[at + i] = this.uniformFloat();
      fill16(data, at, this.kernel);
    }
    return data;
  }
}
