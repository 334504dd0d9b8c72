/**
 * torch's float32 `log` and `exp` on the CPU, bit for bit: on x86 with AVX2 torch evaluates them
 * (any tensor size, even one element) with SLEEF's `Sleef_logf8_u10` / `Sleef_expf8_u10`, which
 * are accurate to 1 ulp but not correctly rounded: a few % of `exp` results and well under 1 % of
 * `log` results differ in the last bit from the correctly rounded value.
 *
 * Why it matters: k-diffusion's DPM++ SDE computes the σ values it asks its Brownian tree about as
 * exp(−(−log σ + h/2)) in float32 tensors, and torchsde rounds those times to 6 decimals; a σ near
 * 10 has a float32 ulp of 1e-6, so a last-bit difference moves the tree time and changes the noise.
 *
 * Restated from SLEEF's `xlogf_u1` and `xexpf` (sleefsimdsp.c, with the AVX2 helpers: every
 * `vmla` is a fused multiply-add, the double-float helpers of df.h use their FMA forms). Every
 * step is one float32 operation: `Math.fround` after + − × ÷, `fmaf` for the fused ones. Inputs are
 * positive normal floats (log) or |x| < 88 (exp); special values are not handled.
 */
import { fmaf } from "./torch-cpu-randn";

const f = Math.fround;
const scratchF = new Float32Array(1);
const scratchI = new Int32Array(scratchF.buffer);

/** x86 `cvtps2dq`: float → int32, rounding to nearest, ties to even. */
function rintToInt(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** 2^q as a float32 (|q| < 127). */
function pow2i(q: number): number {
  scratchI[0] = (q + 0x7f) << 23;
  return scratchF[0]!;
}

/** The unbiased exponent field of a float32. */
function ilogb2k(d: number): number {
  scratchF[0] = d;
  return ((scratchI[0]! >>> 23) & 0xff) - 0x7f;
}

const L2U = f(0.693145751953125);
const L2L = f(1.428606765330187045e-6);
const R_LN2 = f(Math.LOG2E);
const E0 = f(0.000198527617612853646278381);
const E1 = f(0.00139304355252534151077271);
const E2 = f(0.00833336077630519866943359);
const E3 = f(0.0416664853692054748535156);
const E4 = f(0.166666671633720397949219);

/** torch.exp of a float32 on an AVX2 CPU (SLEEF `xexpf`). */
export function torchExpF32(d0: number): number {
  const d = f(d0);
  const q = rintToInt(f(d * R_LN2));
  let s = fmaf(q, -L2U, d);
  s = fmaf(q, -L2L, s);
  let u = E0;
  u = fmaf(u, s, E1);
  u = fmaf(u, s, E2);
  u = fmaf(u, s, E3);
  u = fmaf(u, s, E4);
  u = fmaf(u, s, 0.5);
  u = f(1 + fmaf(f(s * s), u, s));
  const h = q >> 1;
  return f(f(u * pow2i(h)) * pow2i(q - h));
}

const LN2_HI = f(0.69314718246459960938);
const LN2_LO = f(-1.904654323148236017e-9);
const C0 = f(0.3027294874);
const C1 = f(0.3996108174);
const C2 = f(0.666669488);
const FOUR_THIRDS = f(1 / 0.75);

type F2 = [number, number];

/** df.h `dfadd2_vf2_vf_vf`: x + y as a double-float (any magnitudes). */
function dfadd2(x: number, y: number): F2 {
  const s = f(x + y);
  const v = f(s - x);
  return [s, f(f(x - f(s - v)) + f(y - v))];
}

/** df.h `dfdiv_vf2_vf2_vf2`, FMA form. */
function dfdiv(n: F2, d: F2): F2 {
  const t = f(1 / d[0]);
  const s = f(n[0] * t);
  const u = fmaf(t, n[0], -s);
  const v = fmaf(-d[1], t, fmaf(-d[0], t, 1));
  return [s, fmaf(s, v, fmaf(n[1], t, u))];
}

/** torch.log of a positive normal float32 on an AVX2 CPU (SLEEF `xlogf_u1`). */
export function torchLogF32(d0: number): number {
  const d = f(d0);
  const e = ilogb2k(f(d * FOUR_THIRDS));
  const m = f(d * pow2i(-e)); // exact: an exponent shift
  // s = ln2·e as a double-float (dfmul_vf2_vf2_vf)
  const sx = f(LN2_HI * e);
  let s: F2 = [sx, fmaf(LN2_LO, e, fmaf(LN2_HI, e, -sx))];
  const x = dfdiv(dfadd2(-1, m), dfadd2(1, m));
  const x2 = f(x[0] * x[0]);
  let t = C0;
  t = fmaf(t, x2, C1);
  t = fmaf(t, x2, C2);
  // s += 2x (dfadd_vf2_vf2_vf2), then s += x²·x·t (dfadd_vf2_vf2_vf)
  const y: F2 = [f(x[0] * 2), f(x[1] * 2)];
  let hi = f(s[0] + y[0]);
  s = [hi, f(f(f(f(s[0] - hi) + y[0]) + s[1]) + y[1])];
  const z = f(f(x2 * x[0]) * t);
  hi = f(s[0] + z);
  s = [hi, f(f(f(s[0] - hi) + z) + s[1])];
  return f(s[0] + s[1]);
}

// ---- pow: SLEEF `xpowf` (u10) = expkf(logkf(|x|) · y), both in double-float arithmetic ----

/** df.h `dfadd_vf2_vf2_vf2` (|x| ≥ |y|). */
function dfadd(x: F2, y: F2): F2 {
  const s = f(x[0] + y[0]);
  return [s, f(f(f(f(x[0] - s) + y[0]) + x[1]) + y[1])];
}

/** df.h `dfadd2_vf2_vf2_vf2` (any magnitudes). */
function dfadd2ff(x: F2, y: F2): F2 {
  const s = f(x[0] + y[0]);
  const v = f(s - x[0]);
  return [s, f(f(f(x[0] - f(s - v)) + f(y[0] - v)) + f(x[1] + y[1]))];
}

/** df.h `dfadd2_vf2_vf2_vf` (any magnitudes). */
function dfadd2f(x: F2, y: number): F2 {
  const s = f(x[0] + y);
  const v = f(s - x[0]);
  return [s, f(f(f(x[0] - f(s - v)) + f(y - v)) + x[1])];
}

/** df.h `dfmul_vf2_vf2_vf2`, FMA form. */
function dfmul(x: F2, y: F2): F2 {
  const s = f(x[0] * y[0]);
  return [s, fmaf(x[0], y[1], fmaf(x[1], y[0], fmaf(x[0], y[0], -s)))];
}

/** df.h `dfmul_vf2_vf2_vf`, FMA form. */
function dfmulf(x: F2, y: number): F2 {
  const s = f(x[0] * y);
  return [s, fmaf(x[1], y, fmaf(x[0], y, -s))];
}

/** df.h `dfsqu_vf2_vf2`, FMA form. */
function dfsqu(x: F2): F2 {
  const s = f(x[0] * x[0]);
  return [s, fmaf(f(x[0] + x[0]), x[1], fmaf(x[0], x[0], -s))];
}

const LN2_DF: F2 = [LN2_HI, LN2_LO];
const K0 = f(0.240320354700088500976562);
const K1 = f(0.285112679004669189453125);
const K2 = f(0.400007992982864379882812);
const K_C: F2 = [f(0.66666662693023681640625), f(3.69183861259614332084311e-9)];

/** SLEEF `logkf`: ln d as a double-float, d a positive normal float. */
function logkf(d: number): F2 {
  const e = ilogb2k(f(d * FOUR_THIRDS));
  const m = f(d * pow2i(-e));
  const x = dfdiv(dfadd2(-1, m), dfadd2(1, m));
  const x2 = dfsqu(x);
  let t = K0;
  t = fmaf(t, x2[0], K1);
  t = fmaf(t, x2[0], K2);
  let s = dfmulf(LN2_DF, e);
  s = dfadd(s, [f(x[0] * 2), f(x[1] * 2)]);
  return dfadd(s, dfmul(dfmul(x2, x), dfadd2ff(dfmulf(x2, t), K_C)));
}

const X0 = f(0.00136324646882712841033936);
const X1 = f(0.00836596917361021041870117);
const X2 = f(0.0416710823774337768554688);
const X3 = f(0.166665524244308471679688);
const X4 = f(0.499999850988388061523438);

/** SLEEF `expkf`: e^d of a double-float, for results in float32's normal range. */
function expkf(d: F2): number {
  const q = rintToInt(f(f(d[0] + d[1]) * R_LN2));
  let s = dfadd2f(d, f(q * -L2U));
  s = dfadd2f(s, f(q * -L2L));
  const hi = f(s[0] + s[1]); // dfnormalize
  s = [hi, f(f(s[0] - hi) + s[1])];
  let u = X0;
  u = fmaf(u, s[0], X1);
  u = fmaf(u, s[0], X2);
  u = fmaf(u, s[0], X3);
  u = fmaf(u, s[0], X4);
  let t = dfadd(s, dfmulf(dfsqu(s), u));
  const one = f(1 + t[0]); // dfadd_vf2_vf_vf2(1, t)
  t = [one, f(f(f(1 - one) + t[0]) + t[1])];
  return f(f(t[0] + t[1]) * 2 ** q); // vldexp: exact in the normal range
}

/**
 * torch's float32 `x ** y` on an AVX2 CPU where the kernel runs vectorised (SLEEF `xpowf`,
 * 1 ulp): for x > 0 and a finite result in float32's normal range (the σ schedules' case).
 * Elements past the last full 16-element block take `std::pow` in double instead; see
 * `torchPowTensorScalarF32` in torch-ops.ts.
 */
export function torchPowF32(x0: number, y0: number): number {
  const x = f(x0);
  const y = f(y0);
  if (!(x > 0) || !Number.isFinite(x)) throw new Error(`torchPowF32: base must be a positive finite float, got ${x0}`);
  if (y === 0 || x === 1) return 1;
  return expkf(dfmulf(logkf(x), y));
}
