/**
 * The few torch CPU tensor operations k-diffusion builds its σ lists from, restated element by
 * element so the lists come out bit for bit as torch makes them (torch 1.13, AVX2 kernels, GCC's
 * default FMA contraction):
 *
 * - `torch.linspace(start, end, n)`: step = (end − start)/(n − 1) in the tensor's type; element i
 *   of the first half is start + step·i, of the second half end − step·(n − 1 − i), each one fused
 *   multiply-add — except in whole blocks of two vectors (16 floats, 8 doubles), where each vector
 *   (8 floats, 4 doubles) is its first element plus k·step, rounded separately (`Vectorized::arange`).
 * - `t ** y` of a float32 tensor: SLEEF's `powf` over the whole 16-element blocks, `std::pow` in
 *   double (then rounded) for the elements after them.
 *
 * Every rule above was checked against torch on this machine (test/fixtures/sigma-lists.json).
 */
import { torchPowF32 } from "./torch-f32-math";
import { fmaf } from "./torch-cpu-randn";

const f = Math.fround;

const view = new DataView(new ArrayBuffer(8));

/** A finite double as an exact integer mantissa times 2^exponent. */
function exact(x: number): { m: bigint; e: number } {
  view.setFloat64(0, x);
  const hi = view.getUint32(0);
  const lo = view.getUint32(4);
  const biased = (hi >>> 20) & 0x7ff;
  const frac = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  const m = biased === 0 ? frac : frac | (1n << 52n);
  return { m: hi >>> 31 ? -m : m, e: (biased === 0 ? 1 : biased) - 1075 };
}

/**
 * a·b + c in double, rounded once (the x86 `vfmadd…sd` instructions), by exact integer
 * arithmetic. Finite inputs and a result in the normal range (what linspace needs).
 */
export function fma64(a: number, b: number, c: number): number {
  const pa = exact(a);
  const pb = exact(b);
  const pc = exact(c);
  const ep = pa.e + pb.e;
  const e = Math.min(ep, pc.e);
  const sum = ((pa.m * pb.m) << BigInt(ep - e)) + (pc.m << BigInt(pc.e - e));
  if (sum === 0n) return a * b + c;
  // keep 64 significant bits plus a sticky bit, so Number() rounds as the whole sum would
  const neg = sum < 0n;
  let mag = neg ? -sum : sum;
  let shift = 0;
  const bits = mag.toString(2).length;
  if (bits > 64) {
    shift = bits - 64;
    const dropped = mag & ((1n << BigInt(shift)) - 1n);
    mag = ((mag >> BigInt(shift)) << 1n) | (dropped === 0n ? 0n : 1n);
    shift -= 1;
  }
  const r = Number(mag) * 2 ** (e + shift);
  return neg ? -r : r;
}

/** Check a linspace length. */
function checkCount(fn: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 1 || n > 1 << 24) throw new Error(`${fn}: n must be an integer in [1, 2^24], got ${n}`);
}

/**
 * `torch.linspace(start, end, n)` in float32 on the CPU (start and end are rounded to float32
 * first, as torch does with Python numbers).
 */
export function torchLinspaceF32(start0: number, end0: number, n: number): Float32Array {
  checkCount("torchLinspaceF32", n);
  const start = f(start0);
  const end = f(end0);
  const out = new Float32Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const step = f(f(end - start) / f(n - 1));
  const half = Math.floor(n / 2);
  const at = (i: number) => (i < half ? fmaf(step, i, start) : fmaf(-step, n - 1 - i, end));
  const blocks = n - (n % 16);
  let i = 0;
  for (; i < blocks; i += 8) {
    const base = at(i);
    out[i] = base;
    for (let k = 1; k < 8; k++) out[i + k] = f(base + f(k * step));
  }
  for (; i < n; i++) out[i] = at(i);
  return out;
}

/** `torch.linspace(start, end, n, dtype=torch.float64)` on the CPU. */
export function torchLinspaceF64(start: number, end: number, n: number): Float64Array {
  checkCount("torchLinspaceF64", n);
  const out = new Float64Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const step = (end - start) / (n - 1);
  const half = Math.floor(n / 2);
  const at = (i: number) => (i < half ? fma64(step, i, start) : fma64(-step, n - 1 - i, end));
  const blocks = n - (n % 8);
  let i = 0;
  for (; i < blocks; i += 4) {
    const base = at(i);
    out[i] = base;
    for (let k = 1; k < 4; k++) out[i + k] = base + k * step;
  }
  for (; i < n; i++) out[i] = at(i);
  return out;
}

/**
 * `t ** y` for a contiguous float32 tensor `t` of positive values and a Python float `y` (torch's
 * special cases 0.5, 2 and 3 are √, x·x and x·x·x; the other powers SLEEF or `std::pow`).
 */
export function torchPowTensorScalarF32(t: ArrayLike<number>, y: number): Float32Array {
  const n = t.length;
  const out = new Float32Array(n);
  const vectorised = n - (n % 16);
  for (let i = 0; i < n; i++) {
    const x = f(t[i]!);
    if (y === 0.5) out[i] = Math.sqrt(x);
    else if (y === 2) out[i] = x * x;
    else if (y === 3) out[i] = f(x * x) * x;
    else out[i] = i < vectorised ? torchPowF32(x, y) : f(x ** y);
  }
  return out;
}
