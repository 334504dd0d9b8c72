/**
 * The WebGPU path in Node (Dawn via the `webgpu` package) on the private Mesa 25 lavapipe that
 * environment/setup-webgpu-cpu.sh unpacks into .cache/lavapipe: the ldm-tiny UNet forward against
 * PyTorch (with and without a hypernetwork), one hypernetwork training step against the wasm
 * backend, and no leaks. Runs only where that driver is present; elsewhere it says why and skips.
 *
 * Reads use `await data()`: tfjs-backend-webgpu cannot read GPU memory synchronously in Node, and
 * for the same reason tensors cannot move between backends, so each backend gets its own model.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attachHypernetworks } from "../src/hypernet/attach";
import { loadHypernetwork } from "../src/hypernet/file";
import type { Hypernetwork } from "../src/hypernet/network";
import type { HostTensor } from "../src/io/host-tensor";
import { readSafetensors } from "../src/io/safetensors";
import { useBackend } from "../src/backend/backend";
import { zerosInit } from "../src/nn/module";
import { AdamW } from "../src/train/adamw";
import { diffusionLoss } from "../src/train/trainer";
import { fromJson } from "../src/unet/config";
import { loadUNetWeights } from "../src/unet/load";
import { UNetModel } from "../src/unet/unet";
import { expectClose, expectNoLeak, fixture } from "./helpers/tf";
import { webgpuSetup } from "./helpers/webgpu";

const { skipReason, icd } = webgpuSetup("webgpu.test.ts");

const io: Map<string, HostTensor> = readSafetensors(fixture("ldm-tiny.io.safetensors")).tensors;
const config = (): ReturnType<typeof fromJson> => fromJson(JSON.parse(fs.readFileSync(fixture("ldm-tiny.config.json"), "utf8")));

/** The ldm-tiny UNet, ldm-a and the fixture inputs, created on the active backend. */
interface Rig {
  unet: UNetModel;
  net: Hypernetwork;
  x: tf.Tensor4D;
  t: number[];
  ctx: tf.Tensor3D;
  noise: tf.Tensor4D;
  dispose(): void;
}

function buildRig(): Rig {
  const unet = new UNetModel(config(), { init: zerosInit });
  loadUNetWeights(unet, fixture("ldm-tiny.unet.safetensors"));
  const net = loadHypernetwork(fixture("ldm-a.pt"), { trainable: true });
  const xs = io.get("x")!;
  const x = tf.tidy(
    () => tf.tensor4d(xs.data as Float32Array, xs.shape as [number, number, number, number]).transpose([0, 2, 3, 1]) as tf.Tensor4D,
  );
  const c = io.get("context")!;
  const ctx = tf.tensor3d(c.data as Float32Array, c.shape as [number, number, number]);
  // A fixed, non-trivial ε (the same values on both backends), NHWC like x.
  const noise = tf.tensor4d(
    Float32Array.from({ length: x.size }, (_, i) => Math.sin(i * 1.618 + 0.3) * 1.2),
    x.shape,
  );
  return {
    unet,
    net,
    x,
    t: [...io.get("t")!.data],
    ctx,
    noise,
    dispose() {
      tf.dispose([x, ctx, noise]);
      net.dispose();
      unet.dispose();
    },
  };
}

/** UNet output on the fixture inputs, NCHW like the fixture, read asynchronously. */
async function eps(r: Rig): Promise<Float32Array> {
  const out = tf.tidy(() => r.unet.forward(r.x, r.t, r.ctx).transpose([0, 3, 1, 2]));
  const data = (await out.data()) as Float32Array;
  out.dispose();
  return data;
}

/** One training step as the trainer takes it: loss, ∂loss/∂θ for the hypernetwork, one AdamW update. */
async function trainingStep(r: Rig): Promise<{ loss: number; grads: Float32Array[]; updated: Float32Array[] }> {
  const att = attachHypernetworks(r.unet, [r.net]);
  att.training = true;
  att.setSeed(1);
  const vars = r.net.trainableVariables();
  const { value, grads } = tf.variableGrads(() => diffusionLoss(r.unet, { x0: r.x, noise: r.noise, t: r.t, cond: r.ctx }), vars);
  const list = vars.map((v) => grads[v.name]!);
  const loss = (await value.data())[0]!;
  const g = await Promise.all(list.map(async (t) => (await t.data()) as Float32Array));
  const opt = new AdamW(
    r.net.namedParameters().map(([, p]) => p),
    { lr: 1e-3 },
  ); // lr: see the comparison below
  opt.step(list);
  const updated = await Promise.all(vars.map(async (v) => (await v.data()) as Float32Array));
  tf.dispose([value, ...list]);
  opt.dispose();
  att.detach();
  return { loss, grads: g, updated };
}

describe.runIf(skipReason === null)("WebGPU (Dawn on private lavapipe)", () => {
  let gpu: Rig;
  let gpuStep: { loss: number; grads: Float32Array[]; updated: Float32Array[] };

  beforeAll(async () => {
    const report = await useBackend("webgpu", { quiet: true });
    expect(report.tfjsBackend).toBe("webgpu");
    gpu = buildRig();
  }, 120_000);

  afterAll(() => gpu?.dispose());

  it("selects the private driver and names the software adapter", async () => {
    const report = await useBackend("webgpu", { quiet: true });
    expect(process.env.VK_ICD_FILENAMES).toBe(icd);
    expect(report.device).toMatch(/llvmpipe|lavapipe/);
    expect(report.notes.join(" ")).toMatch(/software WebGPU adapter/);
  });

  it("ldm-tiny UNet matches PyTorch's eps (1e-4)", async () => {
    expectClose(await eps(gpu), io.get("eps")!.data, 1e-4);
  }, 60_000);

  it("with ldm-a attached, matches PyTorch's eps.a.1 (1e-4)", async () => {
    const att = attachHypernetworks(gpu.unet, [{ network: gpu.net, multiplier: 1 }]);
    expectClose(await eps(gpu), io.get("eps.a.1")!.data, 1e-4);
    att.detach();
  }, 60_000);

  it("a hypernetwork training step leaks no tensors", async () => {
    const t0 = performance.now();
    gpuStep = await expectNoLeak(() => trainingStep(gpu));
    console.log(`webgpu training step: ${Math.round(performance.now() - t0)} ms (first: includes shader compiles)`);
    expect(gpuStep.grads.every((g) => g.some((v) => v !== 0))).toBe(true);
  }, 300_000); // the first step compiles every shader: minutes on lavapipe under load

  it("dataSync says why it cannot work and what to use", () => {
    const t = tf.tidy(() => tf.matMul(tf.ones([64, 64]), tf.ones([64, 64])));
    expect(() => t.dataSync()).toThrow(/await tensor\.data\(\)/);
    t.dispose();
  });

  it("the training step's loss, gradients and AdamW update match the wasm backend's", async () => {
    await useBackend("wasm", { quiet: true });
    const cpu = buildRig();
    const ref = await trainingStep(cpu);
    cpu.dispose();
    await useBackend("webgpu", { quiet: true });
    expect(gpuStep.loss).toBeCloseTo(ref.loss, 5);
    expect(gpuStep.grads.length).toBe(ref.grads.length);
    // Within 1e-4 of the largest gradient entry: fp32 sums run in a different order on each
    // backend, and some parameters' gradients are ~1e-10 rounding noise around zero.
    const scale = ref.grads.reduce((m, g) => g.reduce((mm, v) => Math.max(mm, Math.abs(v)), m), 0);
    expect(scale).toBeGreaterThan(1e-6);
    let worst = 0;
    ref.grads.forEach((g, i) => {
      expectClose(gpuStep.grads[i]!, g, 1e-4 * scale);
      g.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - gpuStep.grads[i]![j]!))));
    });
    console.log(
      `webgpu vs wasm: loss ${gpuStep.loss} vs ${ref.loss}; max |Δgrad| ${worst.toExponential(2)} (largest gradient ${scale.toExponential(2)})`,
    );
    // AdamW's first step moves each weight by lr·g/(|g|+ε) ≈ ±lr: the same update wherever the
    // gradient is clearly non-zero; where it is rounding noise the sign may differ, and Adam bounds
    // the difference by 2·lr.
    const lr = 1e-3;
    ref.updated.forEach((w, i) => {
      const g = ref.grads[i]!;
      w.forEach((v, j) => {
        const tol = Math.abs(g[j]!) > 1e-3 * scale ? 1e-5 : 2 * lr + 1e-6;
        expect(Math.abs(gpuStep.updated[i]![j]! - v), `parameter ${i}[${j}] (gradient ${g[j]})`).toBeLessThanOrEqual(tol);
      });
    });
  }, 300_000);
});

describe.runIf(skipReason === null)("train() on WebGPU", () => {
  it("runs a few steps end to end (no synchronous read-back anywhere) and writes checkpoints that load", async () => {
    const os = await import("node:os");
    const path = await import("node:path");
    const { makeToyBase, makeToyDataset, makeToyNet, TOY_TEMPLATE } = await import("./helpers/train-setup");
    const { train } = await import("../src/train/trainer");
    const { readHypernetworkFile } = await import("../src/hypernet/file");
    await useBackend("webgpu", { quiet: true });
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-webgpu-train-"));
    await makeToyDataset(path.join(tmp, "data"));
    const base = makeToyBase();
    const net = makeToyNet();
    const r = await train(base, net, {
      dataDir: path.join(tmp, "data"),
      template: TOY_TEMPLATE,
      maxSteps: 3,
      saveEvery: 3,
      batchSize: 2,
      learningRate: "1e-3",
      seed: 5,
      logDir: path.join(tmp, "log"),
      onLog: () => {},
      progress: false,
      handleSigint: false,
    }).done;
    expect(r.reason).toBe("max-steps");
    expect(r.losses.every(Number.isFinite)).toBe(true);
    expect(readHypernetworkFile(path.join(tmp, "log", "hypernetworks", "toy-3.pt")).info.step).toBe(3);
    net.dispose();
    base.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }, 180_000);
});

describe.runIf(skipReason === null)("train-base and the global gradient norm on WebGPU", () => {
  it("globalNorm over more tensors than a shader may bind (8) matches the hand-computed norm", async () => {
    await useBackend("webgpu", { quiet: true });
    // 12 tensors, tensor k filled with k+1 over k+1 elements: Σ (k+1)²·(k+1) = Σ n³ = (12·13/2)² = 6084.
    const ts = Array.from({ length: 12 }, (_, k) => tf.fill([k + 1], k + 1));
    const { globalNorm } = await import("../src/train/grad-norm");
    const n = await expectNoLeak(async () => {
      const s = globalNorm(ts);
      const v = (await s.data())[0]!;
      s.dispose();
      return v;
    });
    expect(n).toBeCloseTo(78, 3); // √6084
    tf.dispose(ts);
  }, 60_000);

  it("`npm run train-base -- --backend webgpu` logs the same losses and gradient norms as wasm, and exports the same weights", async () => {
    const os = await import("node:os");
    const path = await import("node:path");
    const { execFileSync } = await import("node:child_process");
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "train-base-webgpu-"));
    const run = (backend: string): { rows: number[][]; weights: Map<string, HostTensor> } => {
      const dir = path.join(tmp, backend);
      execFileSync(
        process.execPath,
        [
          createRequire(__filename).resolve("ts-node/dist/bin.js"),
          "--transpile-only",
          "scripts/train-base.ts",
          "--backend",
          backend,
          "--workers",
          "1",
          "--batch",
          "2",
          "--steps",
          "2",
          "--warmup",
          "1",
          "--lr",
          "1e-3",
          "--init",
          "models/tiny",
          "--run",
          path.join(dir, "run"),
          "--export",
          path.join(dir, "model"),
        ],
        { encoding: "utf8", timeout: 240_000, stdio: "pipe" },
      );
      const rows = fs
        .readFileSync(path.join(dir, "run", "loss.csv"), "utf8")
        .trim()
        .split("\n")
        .slice(1)
        .map((r) => r.split(",").map(Number));
      return { rows, weights: readSafetensors(path.join(dir, "model", "model.safetensors")).tensors };
    };
    try {
      const gpuRun = run("webgpu");
      const cpuRun = run("wasm");
      expect(gpuRun.rows.map((r) => r[0])).toEqual([1, 2]);
      for (let i = 0; i < 2; i++) {
        expect(gpuRun.rows[i]![1]).toBeCloseTo(cpuRun.rows[i]![1]!, 5); // loss
        expect(Math.abs(gpuRun.rows[i]![3]! - cpuRun.rows[i]![3]!)).toBeLessThan(1e-3 * cpuRun.rows[i]![3]! + 1e-4); // grad norm
      }
      expect([...gpuRun.weights.keys()].sort()).toEqual([...cpuRun.weights.keys()].sort());
      let worst = 0;
      for (const [k, t] of cpuRun.weights) {
        const g = gpuRun.weights.get(k)!.data;
        t.data.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - g[i]!))));
      }
      expect(worst).toBeLessThan(2e-3); // fp16 export; two AdamW steps of lr 1e-3 move a weight ≤ 2e-3
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }, 480_000);
});
