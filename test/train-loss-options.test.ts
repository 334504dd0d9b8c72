/**
 * Noise offset and min-SNR-γ loss weighting: the weights against kohya's formula computed with
 * PyTorch (fixture), the weighted loss against per-sample losses combined by hand on a real (toy)
 * UNet, in ε- and v-prediction and with alpha weights, and the offset noise by hand. No leaks.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../src/diffusion/random";
import { sd15Schedule } from "../src/diffusion/schedule";
import type { BaseModel } from "../src/pipeline/base-model";
import { type LossBatch, diffusionLoss, minSnrWeights, offsetNoise } from "../src/train/loss";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";
import { makeToyBase } from "./helpers/train-setup";

const ref = JSON.parse(fs.readFileSync(fixture("train-options.json"), "utf8")) as {
  minsnr: { gamma: number; t: number[]; snr: number[]; epsilon: number[]; v: number[] };
};

let base: BaseModel;
beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
});
afterAll(() => base.dispose());

describe("min-SNR-γ weights", () => {
  it("match kohya's apply_snr_weight (PyTorch, γ = 5) for ε- and v-prediction", () => {
    const m = ref.minsnr;
    expectClose(minSnrWeights(m.t, m.gamma, "epsilon"), m.epsilon, 0, 1e-6);
    expectClose(minSnrWeights(m.t, m.gamma, "v"), m.v, 0, 1e-6);
    // by hand at t = 0: ᾱ₀ = 1 − 0.00085, SNR = 0.99915 / 0.00085 = 1175.47…; 5 / SNR
    expect(minSnrWeights([0], 5, "epsilon")[0]).toBeCloseTo(5 / (0.99915 / 0.00085), 7);
    expect(() => minSnrWeights([1000], 5, "epsilon")).toThrow(/timestep 1000 is outside/);
  });

  it("the weighted loss is mean_b(w_b · L_b) over per-sample losses (ε, v, and with alpha weights)", async () => {
    const rng = new Rng(11);
    const B = 3;
    const mk = (shape: number[]): tf.Tensor => tf.tensor(rng.normal(shape.reduce((a, b) => a * b, 1)), shape);
    const x0 = mk([B, 8, 8, 3]) as tf.Tensor4D;
    const noise = mk([B, 8, 8, 3]) as tf.Tensor4D;
    const cond = mk([B, 4, 16]) as tf.Tensor3D;
    const weight = tf.abs(mk([B, 8, 8, 1])) as tf.Tensor4D;
    const t = [5, 400, 950];
    const sched = sd15Schedule();
    for (const prediction of ["epsilon", "v"] as const) {
      for (const w of [undefined, weight]) {
        const batch: LossBatch = { x0, noise, t, cond, ...(w ? { weight: w } : {}) };
        const got = await expectNoLeak(async () => {
          const l = diffusionLoss(base.unet, batch, prediction, sched, 5);
          const v = (await l.data())[0]!;
          l.dispose();
          return v;
        });
        const per: number[] = [];
        for (let b = 0; b < B; b++) {
          const one = (x: tf.Tensor): tf.Tensor => tf.slice(x, [b], [1]);
          const sb: LossBatch = {
            x0: one(x0) as tf.Tensor4D,
            noise: one(noise) as tf.Tensor4D,
            t: [t[b]!],
            cond: one(cond) as tf.Tensor3D,
          };
          if (w) sb.weight = one(w) as tf.Tensor4D;
          const l = diffusionLoss(base.unet, sb, prediction, sched);
          per.push((await l.data())[0]!);
          tf.dispose([l, sb.x0, sb.noise, sb.cond, ...(sb.weight ? [sb.weight] : [])]);
        }
        const ws = minSnrWeights(t, 5, prediction);
        const want = per.reduce((a, l, b) => a + ws[b]! * l, 0) / B;
        expect(got, `${prediction}${w ? " + alpha" : ""}`).toBeCloseTo(want, 5);
        // and it is not the plain loss: weighting changes the number
        const plain = diffusionLoss(base.unet, batch, prediction, sched);
        expect(Math.abs((await plain.data())[0]! - got)).toBeGreaterThan(1e-3 * got);
        plain.dispose();
      }
    }
    tf.dispose([x0, noise, cond, weight]);
  });
});

describe("noise offset", () => {
  it("adds offset · n with one n ~ N(0, 1) per image and channel (drawn in [B, C] order)", async () => {
    const noise = tf.zeros([2, 3, 3, 4]) as tf.Tensor4D;
    await expectNoLeak(() => offsetNoise(noise, 0.1, new Rng(42)).dispose());
    const out = offsetNoise(noise, 0.1, new Rng(42));
    const n = new Rng(42).normal(8);
    const data = out.dataSync();
    for (let b = 0; b < 2; b++)
      for (let y = 0; y < 3; y++)
        for (let x = 0; x < 3; x++)
          for (let c = 0; c < 4; c++) expect(data[((b * 3 + y) * 3 + x) * 4 + c]).toBeCloseTo(0.1 * n[b * 4 + c]!, 7);
    // on real noise it is a pure shift
    const e = tf.randomNormal([2, 3, 3, 4], 0, 1, "float32", 3) as tf.Tensor4D;
    const shifted = offsetNoise(e, 0.05, new Rng(42));
    const d = tf.sub(shifted, e);
    expectClose(d.dataSync(), tf.mul(out, 0.5).dataSync(), 1e-6);
    tf.dispose([noise, out, e, shifted, d]);
  });
});
