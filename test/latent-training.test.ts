/**
 * Training in latent space: the base model's VAE posterior (`encodePosterior`, what the training
 * dataset caches per image) against the VAE's own encode, and a hypernetwork trained through a small
 * synthetic VAE — on wasm, and on WebGPU (Dawn on the private lavapipe), where nothing may read
 * synchronously. The WebGPU part runs only where that driver is present; elsewhere it says why.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { useBackend } from "../src/backend/backend";
import { readHypernetworkFile } from "../src/hypernet/file";
import { type TrainResult, train } from "../src/train";
import { TOY_TEMPLATE, makeToyBase, makeToyDataset, makeToyLatentBase, makeToyNet } from "./helpers/train-setup";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { webgpuSetup } from "./helpers/webgpu";

/** Three steps of latent training on the toy images (deterministic latents, so the run depends on the model only). */
async function trainLatent(dataDir: string, logDir: string): Promise<{ result: TrainResult; file: string }> {
  const base = makeToyLatentBase();
  const net = makeToyNet();
  try {
    const result = await train(base, net, {
      dataDir,
      template: TOY_TEMPLATE,
      maxSteps: 3,
      saveEvery: 3,
      batchSize: 2,
      latentSampling: "deterministic",
      learningRate: "1e-3",
      seed: 5,
      logDir,
      onLog: () => {},
      progress: false,
      handleSigint: false,
    }).done;
    return { result, file: path.join(logDir, "hypernetworks", "toy-3.pt") };
  } finally {
    net.dispose();
    base.dispose();
  }
}

describe("latent training (wasm)", () => {
  let tmp: string;
  beforeAll(async () => {
    await setupBackend();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-latent-"));
    await makeToyDataset(path.join(tmp, "data"));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it("encodePosterior is the VAE's mean and exp(logvar / 2), times the latent scale, read back without leaks", async () => {
    const base = makeToyLatentBase();
    try {
      const pixels = Float32Array.from({ length: 16 * 16 * 3 }, (_, i) => Math.sin(i * 0.37) * 0.9);
      const post = await expectNoLeak(() => base.encodePosterior(pixels, [16, 16, 3]));
      expect(post.shape).toEqual([8, 8, 4]);
      const dist = base.vae!.encode(tf.tensor4d(pixels, [1, 16, 16, 3]));
      const mean = await dist.mean.data();
      const logvar = await dist.logvar.data();
      tf.dispose([dist.mean, dist.logvar]);
      const s = 0.18215;
      expectClose(
        post.mean,
        Array.from(mean, (m) => m * s),
        1e-7,
      );
      expectClose(
        post.std!,
        Array.from(logvar, (v) => Math.exp(v / 2) * s),
        1e-7,
        1e-6,
      );
      expect(post.std!.every((v) => v > 0)).toBe(true);
    } finally {
      base.dispose();
    }
  });

  it("a pixel-space model has no posterior, and says so", async () => {
    const base = makeToyBase();
    await expect(base.encodePosterior(new Float32Array(8 * 8 * 3), [8, 8, 3])).rejects.toThrow(/pixel-space model has no VAE/);
    base.dispose();
  });

  it("trains a hypernetwork through the VAE: finite losses, a checkpoint at step 3, and the same losses again", async () => {
    const a = await trainLatent(path.join(tmp, "data"), path.join(tmp, "a"));
    const b = await trainLatent(path.join(tmp, "data"), path.join(tmp, "b"));
    expect(a.result.reason).toBe("max-steps");
    expect(a.result.losses).toHaveLength(3);
    expect(a.result.losses.every(Number.isFinite)).toBe(true);
    expect(b.result.losses).toEqual(a.result.losses);
    expect(readHypernetworkFile(a.file).info.step).toBe(3);
  });
});

const { skipReason } = webgpuSetup("latent-training.test.ts: WebGPU part");

describe.runIf(skipReason === null)("latent training on WebGPU (Dawn on private lavapipe)", () => {
  it("trains through the VAE with no synchronous read-back, and matches the wasm run's losses", async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-latent-webgpu-"));
    try {
      await makeToyDataset(path.join(tmp, "data"));
      await useBackend("wasm", { quiet: true });
      const ref = await trainLatent(path.join(tmp, "data"), path.join(tmp, "wasm"));
      await useBackend("webgpu", { quiet: true });
      expect(tf.getBackend()).toBe("webgpu");
      const gpu = await trainLatent(path.join(tmp, "data"), path.join(tmp, "gpu"));
      expect(gpu.result.reason).toBe("max-steps");
      expect(gpu.result.losses).toHaveLength(3);
      // fp32 sums run in another order on each backend; three small steps stay within 1e-4.
      expectClose(gpu.result.losses, ref.result.losses, 1e-4, 1e-4);
      expect(readHypernetworkFile(gpu.file).info.step).toBe(3);
    } finally {
      await useBackend("wasm", { quiet: true });
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }, 300_000);
});
