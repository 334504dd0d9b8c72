/**
 * The validation loss and the module norms on the toy model (test/helpers/train-setup.ts): turning
 * them on leaves the training losses and weights bit-identical; the batch is fixed (same t, same
 * loss for the same weights, whatever the training seed); the per-sample loss is the trainer's loss
 * per sample; per-module gradient norms add up to the step's global norm; output norms are
 * ‖m(c) − c‖ measured by hand; and nothing leaks.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Rng, randn } from "../src/diffusion/random";
import { sd15Schedule } from "../src/diffusion/schedule";
import { attachHypernetworks } from "../src/hypernet/attach";
import { fromNetwork } from "../src/hypernet/file";
import { createHypernetwork } from "../src/hypernet/network";
import type { BaseModel } from "../src/pipeline/base-model";
import { type NormsEvent, type StepEvent, type TrainOptions, type ValidationEvent, diffusionLoss, train } from "../src/train";
import { gradientNormsByModule, outputNormsByModule, parameterModules } from "../src/train/module-norms";
import { perSampleLoss, stratifiedTimesteps } from "../src/train/validation";
import { setupBackend } from "./helpers/tf";
import { makeToyBase, makeToyDataset, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

let base: BaseModel;
let tmp: string;
let dataDir: string;

beforeAll(async () => {
  await setupBackend();
  base = makeToyBase();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-validation-"));
  dataDir = path.join(tmp, "data");
  await makeToyDataset(dataDir);
});

afterAll(() => {
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const opts = (name: string, extra: Partial<TrainOptions> = {}): TrainOptions =>
  toyTrainOptions(dataDir, path.join(tmp, name), { maxSteps: 6, learningRate: "1e-2", ...extra });

/** The toy network with dropout, so a measurement that left dropout off or moved its masks would change the run. */
function dropoutNet(): ReturnType<typeof makeToyNet> {
  return createHypernetwork({
    name: "toy",
    dims: [16, 64],
    layerStructure: [1, 2, 1],
    activation: "tanh",
    weightInit: "XavierNormal",
    useDropout: true,
    dropoutStructure: [0, 0.3, 0],
    seed: 3,
  });
}

/** Every weight of a network as one flat list (bit-exact comparison). */
function weights(net: ReturnType<typeof makeToyNet>): number[] {
  return [...fromNetwork(net).weights.values()].flatMap((pair) => pair.flatMap((sd) => [...sd.values()].flatMap((t) => [...t.data])));
}

describe("validation loss and module norms during training", () => {
  it("leave the training losses and weights bit-identical, report at the start and every N steps, and leak nothing", async () => {
    const plainNet = dropoutNet();
    const plain = await train(base, plainNet, opts("plain")).done;

    const net = dropoutNet();
    const validation: ValidationEvent[] = [];
    const norms: NormsEvent[] = [];
    const steps: StepEvent[] = [];
    const before = tf.memory().numTensors;
    const measured = await train(
      base,
      net,
      opts("measured", {
        validationEvery: 2,
        normsEvery: 3,
        validation: { images: 3, timesteps: 5 },
        onValidation: (e) => validation.push(e),
        onNorms: (e) => norms.push(e),
        onStep: (e) => steps.push(e),
      }),
    ).done;
    expect(tf.memory().numTensors).toBe(before);

    expect(measured.losses).toEqual(plain.losses);
    expect(weights(net)).toEqual(weights(plainNet));

    expect(validation.map((e) => e.step)).toEqual([0, 2, 4, 6]);
    for (const e of validation) {
      expect(e.samples).toHaveLength(15);
      expect(e.loss).toBeCloseTo(e.samples.reduce((a, s) => a + s.loss, 0) / 15, 6);
      // Three distinct training images, each at one timestep in each fifth of [0, 1000).
      expect(new Set(e.samples.map((s) => s.file)).size).toBe(3);
      for (let i = 0; i < 3; i++) {
        const ts = e.samples.filter((s) => s.image === i).map((s) => s.t);
        ts.forEach((t, k) => expect(Math.floor(t / 200)).toBe(k));
      }
    }
    // Fixed batch: the same timesteps every time.
    expect(validation[3]!.samples.map((s) => s.t)).toEqual(validation[0]!.samples.map((s) => s.t));

    // Norms at steps 3 and 6: one entry per module of the widths the model uses; the per-module
    // gradient norms add up (in squares) to the step's global gradient norm.
    expect(norms.map((e) => e.step)).toEqual([3, 6]);
    for (const e of norms) {
      expect(Object.keys(e.gradient).sort()).toEqual(["16 k", "16 v", "64 k", "64 v"]);
      expect(Object.keys(e.output).sort()).toEqual(["16 k", "16 v", "64 k", "64 v"]);
      const total = Math.sqrt(Object.values(e.gradient).reduce((a, g) => a + g * g, 0));
      expect(total).toBeCloseTo(steps[e.step - 1]!.gradNorm, 4);
      for (const v of Object.values(e.output)) expect(v).toBeGreaterThan(0);
    }
    plainNet.dispose();
    net.dispose();
  }, 240_000);

  it("is a fixed batch: the same weights give the same validation loss whatever the training seed; a held-out folder is used when given", async () => {
    const heldOut = path.join(tmp, "held-out");
    fs.mkdirSync(heldOut, { recursive: true });
    for (const f of ["red.png", "red.txt", "blue.png", "blue.txt"]) fs.copyFileSync(path.join(dataDir, f), path.join(heldOut, f));
    const first = async (seed: number, validationSeed: number): Promise<ValidationEvent> => {
      const got: ValidationEvent[] = [];
      const net = makeToyNet();
      await train(
        base,
        net,
        opts(`seed-${seed}-${validationSeed}`, {
          maxSteps: 1,
          seed,
          validationEvery: 1,
          validation: { dataDir: heldOut, seed: validationSeed, timesteps: 2 },
          onValidation: (e) => got.push(e),
        }),
      ).done;
      net.dispose();
      return got[0]!;
    };
    const a = await first(1, 0);
    const b = await first(2, 0);
    const c = await first(1, 7);
    expect(a.step).toBe(0);
    expect(b.loss).toBe(a.loss);
    expect(b.samples).toEqual(a.samples);
    expect(a.samples.map((s) => path.basename(s.file)).sort()).toEqual(["blue.png", "blue.png", "red.png", "red.png"]);
    expect(c.samples.map((s) => s.t)).not.toEqual(a.samples.map((s) => s.t));
  }, 240_000);

  it("refuses bad options with the option's name", async () => {
    const net = makeToyNet();
    await expect(train(base, net, opts("bad1", { validationEvery: -1 })).done).rejects.toThrow(/validationEvery/);
    await expect(train(base, net, opts("bad2", { validationEvery: 1, validation: { timesteps: 0 } })).done).rejects.toThrow(
      /validation\.timesteps/,
    );
    await expect(
      train(base, net, opts("bad3", { validationEvery: 1, validation: { dataDir: path.join(tmp, "nope") } })).done,
    ).rejects.toThrow(/nope/);
    net.dispose();
  }, 120_000);
});

describe("the measurements' arithmetic", () => {
  it("perSampleLoss: its mean is diffusionLoss, each entry is that sample's own loss, no leaks", () => {
    const rng = new Rng(3);
    const x0 = randn([3, 8, 8, 3], rng) as tf.Tensor4D;
    const noise = randn([3, 8, 8, 3], rng) as tf.Tensor4D;
    const cond = base.encodeText(["a photo of red", "a photo of blue", "art by toy , green"]);
    const t = [10, 500, 990];
    const before = tf.memory().numTensors;
    const per = perSampleLoss(base.unet, { x0, noise, t, cond }, "epsilon", sd15Schedule());
    const values = Array.from(per.dataSync());
    per.dispose();
    expect(tf.memory().numTensors).toBe(before);
    const whole = diffusionLoss(base.unet, { x0, noise, t, cond });
    expect(values.reduce((a, v) => a + v, 0) / 3).toBeCloseTo(whole.dataSync()[0]!, 5);
    whole.dispose();
    const slice = (x: tf.Tensor, i: number): tf.Tensor4D => tf.slice(x, [i, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D;
    for (let i = 0; i < 3; i++) {
      const one = tf.tidy(() =>
        diffusionLoss(base.unet, { x0: slice(x0, i), noise: slice(noise, i), t: [t[i]!], cond: tf.slice(cond, [i, 0, 0], [1, -1, -1]) }),
      );
      expect(values[i]).toBeCloseTo(one.dataSync()[0]!, 5);
      one.dispose();
    }
    tf.dispose([x0, noise, cond]);
  });

  it("stratifiedTimesteps: one timestep in each stratum, inside the range", () => {
    const ts = stratifiedTimesteps(4, 100, 300, new Rng(1));
    expect(ts).toHaveLength(4);
    ts.forEach((t, k) => {
      expect(t).toBeGreaterThanOrEqual(100 + 50 * k);
      expect(t).toBeLessThan(100 + 50 * (k + 1));
    });
    expect(stratifiedTimesteps(3, 0, 3, new Rng(2))).toEqual([0, 1, 2]);
  });

  it("gradientNormsByModule: the norm of each module's gradients, from hand values; no leaks", async () => {
    const g = [tf.tensor1d([3, 4]), tf.tensor1d([1]), tf.tensor2d([[2, 2, 1]])];
    const before = tf.memory().numTensors;
    const out = await gradientNormsByModule(g, ["768 k", "768 v", "768 k"]);
    expect(tf.memory().numTensors).toBe(before);
    expect(out["768 k"]).toBeCloseTo(Math.sqrt(9 + 16 + 4 + 4 + 1), 5);
    expect(out["768 v"]).toBeCloseTo(1, 6);
    tf.dispose(g);
    await expect(gradientNormsByModule(g, ["a"])).rejects.toThrow(/3 gradients but 1 labels/);
    expect(parameterModules(makeToyNet()).slice(0, 1)).toEqual(["16 k"]);
  });

  it("outputNormsByModule: the text width's norms are ‖m(c) − c‖ of the text context, computed by hand; processors restored; no leaks", async () => {
    const net = makeToyNet(8);
    const att = attachHypernetworks(base.unet, [net]);
    const procs = base.unet.getProcessors();
    const cond = base.encodeText(["a photo of red", "a photo of blue"]);
    const x = randn([2, 8, 8, 3], new Rng(5)) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    const out = await outputNormsByModule(base.unet, net, async () => {
      tf.dispose(base.unet.forward(x, [100, 700], cond));
    });
    expect(tf.memory().numTensors).toBe(before);
    for (const [which, label] of [
      ["k", "16 k"],
      ["v", "16 v"],
    ] as const) {
      const expected = tf.tidy(() => tf.mean(tf.norm(tf.sub(net.apply(which, cond), cond), "euclidean", -1)).dataSync()[0]!);
      expect(out[label]).toBeCloseTo(expected, 5);
    }
    expect(out["64 k"]).toBeGreaterThan(0);
    expect([...base.unet.getProcessors()]).toEqual([...procs]);
    // A failing forward restores the processors and frees what was measured.
    await expect(
      outputNormsByModule(base.unet, net, async () => {
        tf.dispose(base.unet.forward(x, [100, 700], cond));
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(tf.memory().numTensors).toBe(before);
    expect([...base.unet.getProcessors()]).toEqual([...procs]);
    att.detach();
    tf.dispose([cond, x]);
    net.dispose();
  });
});
