/**
 * A1111's timestep samplers, "DDIM" and "PLMS" (`modules/sd_samplers_timesteps_impl.py`, A1111
 * 1.6–1.10; "UniPC" is in unipc.ts). They call the ε-model at integer timesteps and work in the
 * model's own x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε space, starting from x = z (no σ scaling), with CFG on ε.
 *
 * The timesteps are A1111's `get_timesteps`: range(0, 1000, ⌊1000/steps⌋) + 1, clipped to 999
 * (`a1111Timesteps`). Both samplers walk them from the top, t = ts[n−1] → ts[n−2] → … → ts[0], so a
 * run makes n − 1 steps and ends at x_{ts[0]} = x_1 (still carrying √(1−ᾱ₁) ≈ 0.03 of noise, which
 * the VAE does not mind). This is not CompVis's DDIM (samplers.ts `ddim`, what A1111 ran before
 * 1.6): that one makes n steps and ends at ᾱ₀. With steps = 20 A1111's DDIM calls the model 19
 * times; with steps = 30, ⌊1000/30⌋ = 33 gives 31 timesteps and 30 steps.
 *
 * DDIM step (t → t_prev, σ_t = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)), A1111 η default 0):
 *   x̂₀ = (x − √(1−ᾱ_t)·ε̂)/√ᾱ_t,   x ← √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ_t²)·ε̂ + σ_t·z
 * A1111 draws z every step, also when σ_t = 0; so does this, to keep the generator's stream.
 *
 * PLMS: the same update with ε̂ replaced by a pseudo linear multistep combination: on the first
 * step the average of ε̂ at t and at t_prev (a second model call at the DDIM-predicted point),
 * then the 2nd/3rd/4th-order Adams–Bashforth mixes of the last ε̂'s.
 */
import * as tf from "@tensorflow/tfjs";
import { randn } from "./random";
import { type SampleOptions, type Sampler, guidedEps, prepare, report } from "./samplers";

/**
 * A1111's timesteps for `steps` (`CompVisSampler.get_timesteps`): 1, 1 + c, 1 + 2c, … below
 * T + 1 with c = ⌊T/steps⌋, clipped to T − 1. Ascending; may hold more than `steps` entries.
 */
export function a1111Timesteps(steps: number, numTimesteps = 1000): number[] {
  if (!Number.isSafeInteger(steps) || steps < 1 || steps > numTimesteps)
    throw new Error(`steps must be an integer in [1, ${numTimesteps}], got ${steps}`);
  const c = Math.floor(numTimesteps / steps);
  const out: number[] = [];
  for (let t = 0; t < numTimesteps; t += c) out.push(Math.min(t + 1, numTimesteps - 1));
  return out;
}

/** A1111's timestep samplers need at least two timesteps (one step between them). */
function checkTimestepCount(name: string, steps: number): void {
  if (a1111Timesteps(steps).length < 2) {
    throw new Error(`${name}: ${steps} step(s) give A1111 a single timestep and no step; use at least 2 steps`);
  }
}

/**
 * The shared start of a run: checked options, ᾱ, A1111's timesteps for `steps` and their count.
 * ᾱ is the model's float32 buffer, as A1111 reads it (`alphas_cumprod[t].item()`).
 */
function startRun(opts: SampleOptions, name: string, steps: number) {
  const p = prepare(opts, name);
  const ts = a1111Timesteps(steps, p.schedule.numTimesteps);
  return { p, ac: Float64Array.from(p.schedule.alphasCumprod, Math.fround), ts, n: ts.length };
}

/** A1111's "DDIM" (see the module comment). `eta` defaults to A1111's 0. */
export function a1111Ddim(config: { steps: number; eta?: number }): Sampler {
  const eta = config.eta ?? 0;
  if (!(eta >= 0) || !Number.isFinite(eta)) throw new Error(`DDIM: eta must be a finite number ≥ 0, got ${eta}`);
  const steps = config.steps;
  checkTimestepCount("DDIM", steps);
  return {
    name: "DDIM",
    steps,
    async sample(opts: SampleOptions): Promise<tf.Tensor4D> {
      const { p, ac, ts, n } = startRun(opts, "DDIM", steps);
      let x = randn(p.shape, p.rng) as tf.Tensor4D;
      try {
        for (let i = 0; i < n - 1; i++) {
          const k = n - 1 - i;
          const aT = ac[ts[k]!]!;
          const aPrev = ac[ts[k - 1]!]!;
          const sigmaT = eta * Math.sqrt(((1 - aPrev) / (1 - aT)) * (1 - aT / aPrev));
          const xs = x;
          const { next, x0 } = tf.tidy(() => {
            const eps = guidedEps(p, xs, ts[k]!);
            const x0 = tf.div(tf.sub(xs, tf.mul(eps, Math.sqrt(1 - aT))), Math.sqrt(aT)) as tf.Tensor4D;
            const dir = tf.mul(eps, Math.sqrt(1 - aPrev - sigmaT * sigmaT));
            const noise = tf.mul(randn(p.shape, p.rng), sigmaT);
            return { next: tf.add(tf.add(tf.mul(x0, Math.sqrt(aPrev)), dir), noise) as tf.Tensor4D, x0 };
          });
          x.dispose();
          x = next;
          await report(p, { step: i, steps: n - 1, t: ts[k]!, sigma: p.schedule.sigmas[ts[k]!]!, x, x0 });
        }
        return x;
      } catch (e) {
        x.dispose();
        throw e;
      }
    },
  };
}

/** A1111's "PLMS" (see the module comment). */
export function a1111Plms(config: { steps: number }): Sampler {
  const steps = config.steps;
  checkTimestepCount("PLMS", steps);
  return {
    name: "PLMS",
    steps,
    async sample(opts: SampleOptions): Promise<tf.Tensor4D> {
      const { p, ac, ts, n } = startRun(opts, "PLMS", steps);
      const oldEps: tf.Tensor4D[] = [];
      let x = randn(p.shape, p.rng) as tf.Tensor4D;
      try {
        for (let i = 0; i < n - 1; i++) {
          const k = n - 1 - i;
          const aT = ac[ts[k]!]!;
          const aPrev = ac[ts[k - 1]!]!;
          const xs = x;
          /** x_prev and x̂₀ from an ε estimate (DDIM with η = 0). */
          const update = (e: tf.Tensor4D) => {
            const x0 = tf.div(tf.sub(xs, tf.mul(e, Math.sqrt(1 - aT))), Math.sqrt(aT)) as tf.Tensor4D;
            return { xPrev: tf.add(tf.mul(x0, Math.sqrt(aPrev)), tf.mul(e, Math.sqrt(1 - aPrev))) as tf.Tensor4D, x0 };
          };
          const { next, x0 } = tf.tidy(() => {
            const e = guidedEps(p, xs, ts[k]!);
            let ePrime: tf.Tensor4D;
            const o = oldEps;
            if (o.length === 0) {
              const eNext = guidedEps(p, update(e).xPrev, ts[Math.max(k - 1, 0)]!);
              ePrime = tf.div(tf.add(e, eNext), 2);
            } else if (o.length === 1) ePrime = tf.div(tf.sub(tf.mul(e, 3), o[0]!), 2);
            else if (o.length === 2) ePrime = tf.div(tf.add(tf.sub(tf.mul(e, 23), tf.mul(o[1]!, 16)), tf.mul(o[0]!, 5)), 12);
            else ePrime = tf.div(tf.sub(tf.add(tf.sub(tf.mul(e, 55), tf.mul(o[2]!, 59)), tf.mul(o[1]!, 37)), tf.mul(o[0]!, 9)), 24);
            oldEps.push(tf.keep(e));
            if (oldEps.length >= 4) oldEps.shift()!.dispose();
            const { xPrev, x0 } = update(ePrime);
            return { next: xPrev, x0 };
          });
          x.dispose();
          x = next;
          await report(p, { step: i, steps: n - 1, t: ts[k]!, sigma: p.schedule.sigmas[ts[k]!]!, x, x0 });
        }
        return x;
      } catch (e) {
        x.dispose();
        throw e;
      } finally {
        tf.dispose(oldEps);
      }
    },
  };
}
