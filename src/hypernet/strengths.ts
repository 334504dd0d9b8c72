/**
 * Finer strengths for an attached network (inference only; none of them is an A1111 feature):
 *
 *     m_eff = multiplier × (k or v factor) × widths[context width] × ramp(t)
 *
 * - `k` / `v`: scale the network's effect on the context that feeds `to_k` and the one that feeds
 *   `to_v` separately (k changes where attention looks, v what it brings back);
 * - `widths`: a factor per context width, e.g. `{ 768: 1, 320: 0 }` keeps a network on the text
 *   context and out of the 320-wide self-attention layers (widths not listed: 1);
 * - `ramp`: a factor that follows the UNet call's timestep t (0–999), given as a function of t or
 *   as points `[[t0, s0], [t1, s1], …]` joined by straight lines and held flat beyond the ends.
 *   A timestep gate `[lo, hi)` is the ramp that is 1 inside and 0 outside; a ramp can fade in
 *   instead of switching. A call whose batch has several timesteps gets each sample's own factor.
 *
 * While training the multiplier is 1 (A1111's rule), so these factors do not apply there.
 */

/** A factor that depends on the timestep: a function of t, or piecewise-linear points `[t, s]`. */
export type TimestepRamp = ((t: number) => number) | ReadonlyArray<readonly [number, number]>;

/** Per-projection, per-width and per-timestep factors on an entry's multiplier (see the module comment). */
export interface Strengths {
  /** Factor on the context that feeds `to_k` (default 1). */
  k?: number;
  /** Factor on the context that feeds `to_v` (default 1). */
  v?: number;
  /** Factor per context width; widths not listed get 1. */
  widths?: Readonly<Record<number, number>>;
  /** Factor that follows the timestep (see the module comment). */
  ramp?: TimestepRamp;
}

/**
 * Refuse malformed strengths with a message naming the network: factors must be finite, ramp
 * points need at least one `[t, s]` pair with finite values and strictly increasing t.
 */
export function checkStrengths(s: Strengths | undefined, name: string): void {
  if (!s) return;
  const bad = (what: string): Error => new Error(`hypernetwork "${name}": strengths.${what}`);
  for (const key of ["k", "v"] as const) {
    const x = s[key];
    if (x !== undefined && !Number.isFinite(x)) throw bad(`${key} must be a finite number, got ${x}`);
  }
  if (s.widths) {
    for (const [w, x] of Object.entries(s.widths)) {
      if (!/^[1-9]\d*$/.test(w)) throw bad(`widths has the key "${w}", which is not a width (a positive whole number)`);
      if (!Number.isFinite(x)) throw bad(`widths[${w}] must be a finite number, got ${x}`);
    }
  }
  const r = s.ramp;
  if (r === undefined || typeof r === "function") return;
  if (!Array.isArray(r) || r.length === 0) throw bad("ramp must be a function of t or a non-empty list of [t, strength] points");
  let prev = Number.NEGATIVE_INFINITY;
  for (const p of r) {
    if (!Array.isArray(p) || p.length !== 2 || !Number.isFinite(p[0]) || !Number.isFinite(p[1]))
      throw bad(`ramp points must be [t, strength] pairs of finite numbers, got ${JSON.stringify(p)}`);
    if (p[0] <= prev) throw bad(`ramp points must have strictly increasing t, got ${JSON.stringify(r)}`);
    prev = p[0];
  }
}

/** The ramp's factor at timestep `t` (points: linear between them, flat beyond the ends). */
export function rampAt(ramp: TimestepRamp, t: number): number {
  if (typeof ramp === "function") {
    const s = ramp(t);
    if (!Number.isFinite(s)) throw new Error(`strength ramp gave ${s} at t = ${t}; it must return a finite number`);
    return s;
  }
  const first = ramp[0]!;
  if (t <= first[0]) return first[1];
  for (let i = 1; i < ramp.length; i++) {
    const [t1, s1] = ramp[i]!;
    if (t <= t1) {
      const [t0, s0] = ramp[i - 1]!;
      return s0 + ((s1 - s0) * (t - t0)) / (t1 - t0);
    }
  }
  return ramp[ramp.length - 1]![1];
}

/**
 * The factor on an entry's multiplier for one projection and width, at the call's timesteps:
 * a number, or one number per batch sample when a ramp meets a call with several timesteps.
 * `t` undefined with a ramp is refused (the UNet was given its timesteps as a tensor).
 */
export function strengthFactor(
  s: Strengths | undefined,
  which: "k" | "v",
  width: number,
  t: readonly number[] | undefined,
  name: string,
): number | number[] {
  if (!s) return 1;
  const base = (s[which] ?? 1) * (s.widths?.[width] ?? 1);
  if (s.ramp === undefined || base === 0) return base;
  if (t === undefined || t.length === 0)
    throw new Error(
      `hypernetwork "${name}" has a timestep ramp but the UNet was called with its timesteps as a tensor (or outside a forward); pass them as numbers`,
    );
  const per = t.map((x) => base * rampAt(s.ramp!, x));
  return per.every((x) => x === per[0]) ? per[0]! : per;
}
