/**
 * The loss a real training run computes, recomputed here by hand from the batch it drew (x₀, ε, t
 * and the text context, recorded on the way in): with alpha weights, the loss and the gradient
 * norm of step 1 equal those of a weight mask made here from the PNG's alpha (a fully transparent
 * half weighs 0, the opaque half 2); with v-prediction, the target is v = α·ε − σ·x₀ with α, σ
 * computed here from SD 1.5's β schedule for the fixed t. Step 1's loss and gradient are taken
 * before any update, so a fresh copy of the network (same seed) reproduces them.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { attachHypernetworks } from "../src/hypernet/attach";
import type { BaseModel } from "../src/pipeline/base-model";
import { type StepEvent, type TrainOptions, train } from "../src/train";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { captureModel } from "./helpers/train-capture";
import { makeToyBase, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

/** qSample's x₀ and ε for every loss the trainer computes. */
const q = vi.hoisted(() => ({ on: false, calls: [] as Array<{ x0: Float32Array; noise: Float32Array; t: number[]; shape: number[] }> }));
vi.mock(import("../src/diffusion/schedule"), async (importOriginal) => {
  const m = await importOriginal();
  return {
    ...m,
    qSample: (x0: tf.Tensor, noise: tf.Tensor, t: ArrayLike<number>, s?: InstanceType<typeof m.NoiseSchedule>) => {
      if (q.on)
        q.calls.push({
          x0: Float32Array.from(x0.dataSync()),
          noise: Float32Array.from(noise.dataSync()),
          t: Array.from(t),
          shape: [...x0.shape],
        });
      return m.qSample(x0, noise, t, s);
    },
  };
});

/** ᾱ_t of SD 1.5 ("scaled_linear": β = linspace(√0.00085, √0.012, 1000)²), in float64, written out here. */
function alphaBar(t: number): number {
  const a = Math.sqrt(0.00085);
  const b = Math.sqrt(0.012);
  let prod = 1;
  for (let i = 0; i <= t; i++) prod *= 1 - (a + ((b - a) * i) / 999) ** 2;
  return prod;
}

let base: BaseModel;
let tmp: string;

beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-loss-targets-"));
});

afterAll(() => {
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** What step 1 drew and what the trainer reported for it. */
interface StepOne {
  x0: Float32Array;
  noise: Float32Array;
  t: number[];
  shape: [number, number, number, number];
  xt: Float32Array;
  context: { data: Float32Array; shape: number[] };
  loss: number;
  gradNorm: number;
}

/** Train one step of batch 2 and record its batch, its loss and its gradient norm. */
async function stepOne(name: string, dataDir: string, extra: Partial<TrainOptions>): Promise<StepOne> {
  const net = makeToyNet();
  const cap = captureModel(base);
  const steps: StepEvent[] = [];
  q.calls.length = 0;
  q.on = true;
  try {
    const r = await expectNoLeak(
      () =>
        train(
          base,
          net,
          toyTrainOptions(dataDir, path.join(tmp, name), { maxSteps: 1, batchSize: 2, onStep: (e) => steps.push(e), ...extra }),
        ).done,
    );
    expect(q.calls).toHaveLength(1);
    expect(cap.unet).toHaveLength(1);
    const c = q.calls[0]!;
    const u = cap.unet[0]!;
    expect(u.t).toEqual(c.t);
    return {
      x0: c.x0,
      noise: c.noise,
      t: c.t,
      shape: c.shape as StepOne["shape"],
      xt: u.x,
      context: { data: u.context, shape: u.contextShape },
      loss: r.losses[0]!,
      gradNorm: steps[0]!.gradNorm,
    };
  } finally {
    q.on = false;
    cap.restore();
    net.dispose();
  }
}

/**
 * mean(w·(UNet(x_t, t, c) − target)²) and the global norm of its gradient over a fresh copy of the
 * toy network (the weights step 1 starts from), with `weight` `[B, H, W, 1]` (absent: all ones).
 */
async function handLoss(s: StepOne, target: Float32Array, weight?: Float32Array): Promise<{ loss: number; gradNorm: number }> {
  const net = makeToyNet();
  const att = attachHypernetworks(base.unet, [{ network: net, multiplier: 1 }]);
  att.training = true;
  try {
    return await expectNoLeak(async () => {
      const xt = tf.tensor4d(s.xt, s.shape);
      const ctx = tf.tensor3d(s.context.data, s.context.shape as [number, number, number]);
      const tgt = tf.tensor4d(target, s.shape);
      const w = weight ? tf.tensor4d(weight, [s.shape[0], s.shape[1], s.shape[2], 1]) : undefined;
      const f = (): tf.Scalar =>
        tf.tidy(() => {
          let se = tf.squaredDifference(base.unet.forward(xt, s.t, ctx), tgt);
          if (w) se = tf.mul(se, w);
          return tf.mean(se) as tf.Scalar;
        });
      const vars = net.namedParameters().map(([, p]) => p.value as tf.Variable);
      const { value, grads } = tf.variableGrads(f, vars);
      const loss = (await value.data())[0]!;
      let sq = 0;
      for (const g of Object.values(grads)) for (const v of await g.data()) sq += v * v;
      tf.dispose([value, ...Object.values(grads), xt, ctx, tgt, ...(w ? [w] : [])]);
      return { loss, gradNorm: Math.sqrt(sq) };
    });
  } finally {
    att.detach();
    net.dispose();
  }
}

/** x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε per row, by hand. */
function noised(s: StepOne): Float32Array {
  const per = s.x0.length / s.shape[0];
  return Float32Array.from(s.x0, (x, i) => {
    const ab = alphaBar(s.t[Math.floor(i / per)]!);
    return Math.sqrt(ab) * x + Math.sqrt(1 - ab) * s.noise[i]!;
  });
}

describe("alpha-weighted loss", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = path.join(tmp, "alpha");
    fs.mkdirSync(dataDir);
    // two 8×8 RGBA patterns: columns 0–3 opaque, columns 4–7 fully transparent (colour still there)
    for (let k = 0; k < 2; k++) {
      const px = new Uint8Array(8 * 8 * 4);
      for (let i = 0; i < 64; i++) {
        for (let c = 0; c < 3; c++) px[i * 4 + c] = (31 * i + 67 * c + 101 * k) % 256;
        px[i * 4 + 3] = i % 8 < 4 ? 255 : 0;
      }
      await sharp(px, { raw: { width: 8, height: 8, channels: 4 } })
        .png()
        .toFile(path.join(dataDir, `a${k}.png`));
      fs.writeFileSync(path.join(dataDir, `a${k}.txt`), "toy");
    }
  });

  it("step 1's loss and gradient are those of a mask that is 0 on the transparent half and 2 on the opaque half", async () => {
    const s = await stepOne("alpha", dataDir, { alphaWeights: true, timesteps: [300, 301] });
    expect(s.shape).toEqual([2, 8, 8, 3]);
    expectClose(s.xt, noised(s), 1e-5);
    // the mask, from the alpha written above: weights average 1, the transparent half weighs nothing
    const mask = Float32Array.from({ length: 2 * 64 }, (_, i) => (i % 8 < 4 ? 2 : 0));
    const weighted = await handLoss(s, s.noise, mask);
    const plain = await handLoss(s, s.noise);
    expect(s.loss).toBeCloseTo(weighted.loss, 5);
    expect(Math.abs(s.gradNorm - weighted.gradNorm)).toBeLessThan(1e-4 * weighted.gradNorm);
    // and the weighting matters: the unweighted loss and gradient are not these
    expect(Math.abs(plain.loss - weighted.loss)).toBeGreaterThan(1e-3 * plain.loss);
    expect(Math.abs(plain.gradNorm - weighted.gradNorm)).toBeGreaterThan(1e-3 * plain.gradNorm);

    // without alphaWeights the same images train on the plain loss
    const off = await stepOne("alpha-off", dataDir, { timesteps: [300, 301] });
    expect(off.x0).toEqual(s.x0);
    const offHand = await handLoss(off, off.noise);
    expect(off.loss).toBeCloseTo(offHand.loss, 5);
    expect(Math.abs(off.gradNorm - offHand.gradNorm)).toBeLessThan(1e-4 * offHand.gradNorm);
  }, 120_000);
});

describe("v-prediction", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = path.join(tmp, "v");
    fs.mkdirSync(dataDir);
    for (let k = 0; k < 2; k++) {
      const px = Uint8Array.from({ length: 8 * 8 * 3 }, (_, i) => (29 * i + 113 * k) % 256);
      await sharp(px, { raw: { width: 8, height: 8, channels: 3 } })
        .png()
        .toFile(path.join(dataDir, `v${k}.png`));
      fs.writeFileSync(path.join(dataDir, `v${k}.txt`), "toy");
    }
  });

  it("the loss target at a fixed t is α·ε − σ·x₀ (α = √ᾱ_t, σ = √(1−ᾱ_t)), not ε", async () => {
    const t = 500;
    const s = await stepOne("v", dataDir, { prediction: "v", timesteps: [t, t + 1] });
    expect(s.t).toEqual([t, t]);
    const ab = alphaBar(t);
    expect(ab).toBeCloseTo(0.2763, 3); // SD 1.5's ᾱ_500, as diffusers prints it
    const alpha = Math.sqrt(ab);
    const sigma = Math.sqrt(1 - ab);
    expectClose(s.xt, noised(s), 1e-5);
    const v = Float32Array.from(s.noise, (e, i) => alpha * e - sigma * s.x0[i]!);
    const hand = await handLoss(s, v);
    const eps = await handLoss(s, s.noise);
    expect(s.loss).toBeCloseTo(hand.loss, 5);
    expect(Math.abs(s.gradNorm - hand.gradNorm)).toBeLessThan(1e-4 * hand.gradNorm);
    expect(Math.abs(s.loss - eps.loss)).toBeGreaterThan(0.05 * eps.loss);

    // the same draw with the default prediction trains on ε
    const e = await stepOne("eps", dataDir, { timesteps: [t, t + 1] });
    expect(e.noise).toEqual(s.noise);
    expect(e.loss).toBeCloseTo(eps.loss, 5);
  }, 120_000);
});
