/**
 * The WebGPU launch patches (src/backend/webgpu-launch.ts) and the GPU-call counters
 * (src/backend/webgpu-counters.ts), on Dawn with the private Mesa 25 lavapipe that
 * environment/setup-webgpu-cpu.sh unpacks into .cache/lavapipe. Runs wherever that driver and the
 * `webgpu` package are present; elsewhere it says why and skips.
 *
 * What is checked:
 * - tfjs-backend-webgpu still has the internals the patches replace, with the expected shapes
 *   (this fails first if tfjs changes under them), and the patches take;
 * - the uniform byte layout equals tfjs's own `makeUniforms`, byte for byte;
 * - uploads go through `queue.writeBuffer`, equal-valued tensors share one GPU buffer, and a
 *   kernel that writes into a tensor holding a shared buffer gets a private copy first;
 * - the ldm-tiny UNet still matches PyTorch (1e-4) and gives exactly the stock path's output, and
 *   a hypernetwork training step gives the stock path's loss, gradients and AdamW update, with far
 *   fewer uploads, uniform writes and bind groups; nothing leaks.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { useBackend } from "../src/backend/backend";
import { installWebgpuCounters, type WebgpuCounts } from "../src/backend/webgpu-counters";
import {
  type UniformField,
  installWebgpuLaunchPatches,
  missingWebgpuInternals,
  removeWebgpuLaunchPatches,
  uniformBytes,
} from "../src/backend/webgpu-launch";
import { attachHypernetworks } from "../src/hypernet/attach";
import { loadHypernetwork } from "../src/hypernet/file";
import type { Hypernetwork } from "../src/hypernet/network";
import type { HostTensor } from "../src/io/host-tensor";
import { readSafetensors } from "../src/io/safetensors";
import { zerosInit } from "../src/nn/module";
import { AdamW } from "../src/train/adamw";
import { diffusionLoss } from "../src/train/trainer";
import { fromJson } from "../src/unet/config";
import { loadUNetWeights } from "../src/unet/load";
import { UNetModel } from "../src/unet/unet";
import { expectClose, expectNoLeak, fixture } from "./helpers/tf";
import { webgpuSetup } from "./helpers/webgpu";

const nodeRequire = createRequire(__filename);
const { skipReason } = webgpuSetup("webgpu-launch.test.ts");

/** tfjs's WebGPUBackend as these tests poke at it. */
interface Backend {
  uploadToGPU(dataId: object): void;
  makeUniforms(fields: UniformField[]): { offset: number; size: number; buffer: { size: number } };
  runWebGPUProgram(
    program: object,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: UniformField[],
    output?: tf.TensorInfo,
  ): tf.TensorInfo;
  tensorMap: { get(id: object): { resource: unknown; external?: boolean } };
  bufferManager: {
    freeBuffers: Map<string, unknown[]>;
    acquireBuffer(size: number, usage: number): { size: number; usage: number };
    releaseBuffer(b: object): void;
  };
}
const backend = (): Backend => tf.findBackend("webgpu") as unknown as Backend;
const stockProto = (): Backend => Object.getPrototypeOf(backend()) as Backend;

const io = (): Map<string, HostTensor> => readSafetensors(fixture("ldm-tiny.io.safetensors")).tensors;

interface Rig {
  unet: UNetModel;
  net: Hypernetwork;
  x: tf.Tensor4D;
  t: number[];
  ctx: tf.Tensor3D;
  noise: tf.Tensor4D;
  dispose(): void;
}

/** The ldm-tiny UNet with its PyTorch weights, ldm-a and the fixture inputs (as in webgpu.test.ts). */
function buildRig(tensors: Map<string, HostTensor>): Rig {
  const unet = new UNetModel(fromJson(JSON.parse(fs.readFileSync(fixture("ldm-tiny.config.json"), "utf8"))), { init: zerosInit });
  loadUNetWeights(unet, fixture("ldm-tiny.unet.safetensors"));
  const net = loadHypernetwork(fixture("ldm-a.pt"), { trainable: true });
  const xs = tensors.get("x")!;
  const x = tf.tidy(
    () => tf.tensor4d(xs.data as Float32Array, xs.shape as [number, number, number, number]).transpose([0, 2, 3, 1]) as tf.Tensor4D,
  );
  const c = tensors.get("context")!;
  const ctx = tf.tensor3d(c.data as Float32Array, c.shape as [number, number, number]);
  const noise = tf.tensor4d(
    Float32Array.from({ length: x.size }, (_, i) => Math.sin(i * 1.618 + 0.3) * 1.2),
    x.shape,
  );
  return {
    unet,
    net,
    x,
    t: [...tensors.get("t")!.data],
    ctx,
    noise,
    dispose() {
      tf.dispose([x, ctx, noise]);
      net.dispose();
      unet.dispose();
    },
  };
}

async function eps(r: Rig): Promise<Float32Array> {
  const out = tf.tidy(() => r.unet.forward(r.x, r.t, r.ctx).transpose([0, 3, 1, 2]));
  const data = (await out.data()) as Float32Array;
  out.dispose();
  return data;
}

/** One trainer-style step: loss, hypernetwork gradients, one AdamW update; the net is restored after. */
async function trainingStep(r: Rig): Promise<{ loss: number; grads: Float32Array[]; updated: Float32Array[] }> {
  const att = attachHypernetworks(r.unet, [r.net]);
  att.training = true;
  att.setSeed(1);
  const vars = r.net.trainableVariables();
  const before = vars.map((v) => v.clone());
  const { value, grads } = tf.variableGrads(() => diffusionLoss(r.unet, { x0: r.x, noise: r.noise, t: r.t, cond: r.ctx }), vars);
  const list = vars.map((v) => grads[v.name]!);
  const opt = new AdamW(
    r.net.namedParameters().map(([, p]) => p),
    { lr: 1e-3 },
  );
  opt.step(list);
  const loss = (await value.data())[0]!;
  const g = await Promise.all(list.map(async (t) => (await t.data()) as Float32Array));
  const updated = await Promise.all(vars.map(async (v) => (await v.data()) as Float32Array));
  vars.forEach((v, i) => v.assign(before[i]!)); // the next run starts from the same weights
  tf.dispose([value, ...list, ...before]);
  opt.dispose();
  att.detach();
  return { loss, grads: g, updated };
}

/** Counts of one call of `fn` (which is awaited). */
async function counted<T>(fn: () => Promise<T>): Promise<{ result: T; counts: WebgpuCounts }> {
  const c = installWebgpuCounters();
  try {
    const result = await fn();
    return { result, counts: c.snapshot() };
  } finally {
    c.stop();
  }
}

const expectSameBits = (a: Float32Array, b: Float32Array, what: string): void => {
  expect(a.length, what).toBe(b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const i = ua.findIndex((v, k) => v !== ub[k]);
  expect(i, `${what}: first difference at ${i} (${a[i]} vs ${b[i]})`).toBe(-1);
};

describe.runIf(skipReason === null)("WebGPU launch patches (Dawn on private lavapipe)", () => {
  let tensors: Map<string, HostTensor>;
  beforeAll(async () => {
    await useBackend("webgpu", { quiet: true });
    removeWebgpuLaunchPatches(); // start from the stock backend, whoever selected it
    tensors = io();
  }, 120_000);
  afterAll(() => removeWebgpuLaunchPatches());

  it("tfjs-backend-webgpu has the 4.22 internals the patches replace", () => {
    const version = (nodeRequire("@tensorflow/tfjs-backend-webgpu/package.json") as { version: string }).version;
    expect(version, "the patches were written and checked against 4.22.0; re-check them before moving").toBe("4.22.0");
    expect(missingWebgpuInternals(backend())).toBeNull();
    const p = stockProto();
    const rec = (p as unknown as { recordAndSubmit: (...a: unknown[]) => void }).recordAndSubmit;
    expect([p.uploadToGPU.length, p.makeUniforms.length, p.runWebGPUProgram.length, rec.length]).toEqual([1, 1, 5, 4]);
    // The stock upload still stages through a mapped buffer (what the patch replaces), and the
    // stock recording still builds NaN, Infinity, shapes and strides, then submits in batches
    // (what the lean recorder reproduces).
    expect(String(p.uploadToGPU)).toMatch(/MAP_WRITE/);
    const recSource = String(rec);
    for (const part of [
      "NaN",
      "Infinity",
      "computeStrides",
      "makeUniforms",
      "createBindGroup",
      "getBindGroupLayout(0)",
      "dispatchWorkgroups",
      "WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE",
      "submitQueue",
      "commandQueueOwnedIds",
    ]) {
      expect(recSource, `stock recordAndSubmit no longer mentions ${part}`).toContain(part);
    }
    // The pool's free lists are keyed `${size}_${usage}` (the bind-group patch keeps them sorted).
    const bm = backend().bufferManager;
    const b = bm.acquireBuffer(1236, 0x80 | 0x4 | 0x8);
    bm.releaseBuffer(b);
    expect(bm.freeBuffers.get(`1236_${0x80 | 0x4 | 0x8}`)).toContain(b);
  });

  it("uniformBytes lays out uniforms exactly as tfjs's makeUniforms", () => {
    const cases: UniformField[][] = [
      [
        { type: "float32", data: [NaN] },
        { type: "float32", data: [Infinity] },
        { type: "int32", data: [2, 3, 4, 5] },
        { type: "int32", data: [60, 20, 5] },
        { type: "int32", data: [120] },
      ],
      [
        { type: "int32", data: [1, 2] },
        { type: "int32", data: [3] },
        { type: "uint32", data: [7, 8, 9] },
        { type: "float32", data: [-0, 0.1] },
      ],
      [
        { type: "int32", data: [1, 2, 3, 4, 5] },
        { type: "int32", data: [6] },
        { type: "int32", data: [1, 2, 3, 4, 5, 6] },
        { type: "float32", data: [0.5] },
      ],
      [
        { type: "int32", data: [] },
        { type: "float32", data: [1e-7, 2, 3] },
      ],
    ];
    for (let s = 0; s < 40; s++) {
      // Random field lists of every length 1–6 and every type.
      const n = 1 + ((s * 7) % 6);
      cases.push(
        Array.from({ length: n }, (_, i) => ({
          type: ["int32", "uint32", "float32"][(s + i) % 3]!,
          data: Array.from({ length: 1 + ((s * 5 + i * 3) % 6) }, (_, j) => (s * 31 + i * 17 + j) % 97),
        })),
      );
    }
    for (const fields of cases) {
      let written: Uint8Array | null = null;
      const fake = {
        bufferManager: { acquireBuffer: (size: number) => ({ size }) },
        queue: {
          writeBuffer: (_b: unknown, _o: number, data: ArrayBuffer, off: number, size: number) =>
            void (written = new Uint8Array(data.slice(off, off + size))),
        },
        uniformPendingDisposal: [] as unknown[],
      };
      const r = stockProto().makeUniforms.call(
        fake,
        fields.map((f) => ({ ...f, data: [...f.data] })),
      );
      expect(written, JSON.stringify(fields)).not.toBeNull();
      expect(new Uint8Array(uniformBytes(fields)), JSON.stringify(fields)).toEqual(written);
      expect(r.size).toBe(written!.length);
    }
  });

  it("installs, says what it did, and is turned off by HYPERNET_WEBGPU_PATCHES=0", () => {
    process.env.HYPERNET_WEBGPU_PATCHES = "0";
    try {
      expect(installWebgpuLaunchPatches()).toEqual({ installed: false, reason: "turned off by HYPERNET_WEBGPU_PATCHES" });
    } finally {
      delete process.env.HYPERNET_WEBGPU_PATCHES;
    }
    const r = installWebgpuLaunchPatches();
    expect(r.installed).toBe(true);
    expect(r.patches!.applied).toEqual([
      "writeBuffer uploads",
      "shared constant buffers",
      "cached uniform buffers",
      "cached bind groups and layouts",
      "lean launch recording",
    ]);
    expect(installWebgpuLaunchPatches().patches).toBe(r.patches); // idempotent
    expect(backend().uploadToGPU).not.toBe(stockProto().uploadToGPU);
    removeWebgpuLaunchPatches();
    expect(backend().uploadToGPU).toBe(stockProto().uploadToGPU);
    expect(Object.hasOwn(backend(), "makeUniforms")).toBe(false);
  });

  it('useBackend("webgpu") applies the patches and says so in its report', async () => {
    removeWebgpuLaunchPatches();
    const report = await useBackend("webgpu", { quiet: true });
    expect(report.notes.join("\n")).toMatch(
      /WebGPU launch patches: writeBuffer uploads, shared constant buffers, cached uniform buffers, cached bind groups and layouts, lean launch recording/,
    );
    expect(backend().uploadToGPU).not.toBe(stockProto().uploadToGPU);
    removeWebgpuLaunchPatches();
  }, 60_000);

  it("uploads through writeBuffer, shares equal-valued tensors, and leaks nothing", async () => {
    installWebgpuLaunchPatches();
    const big = tf.tensor1d(Float32Array.from({ length: 1000 }, (_, i) => Math.cos(i)));
    const warm = tf.add(big, big); // compiles the Add pipeline, uploads `big`
    await warm.data();
    warm.dispose();
    const { result, counts } = await counted(() =>
      expectNoLeak(async () => {
        const fresh = tf.tensor1d(Float32Array.from({ length: 1000 }, (_, i) => i / 7));
        const y = tf.tidy(() => tf.add(tf.mul(tf.add(fresh, big), 2.5), tf.mul(tf.ones([1000]), 2.5)));
        const v = (await y.data()) as Float32Array;
        tf.dispose([y, fresh]);
        return v;
      }),
    );
    result.forEach((v, i) => expect(v).toBeCloseTo((i / 7 + Math.cos(i)) * 2.5 + 2.5, 4));
    // `fresh` is one 4,000-byte writeBuffer upload; 2.5 (twice) and ones(1000) are constants:
    // written once each at most, shared after (and 2.5 may already be cached from earlier tests).
    expect(counts.createBufferMapped).toBe(0);
    expect(counts.uploads).toBeLessThanOrEqual(3);
    expect(counts.uploadBytes).toBeGreaterThanOrEqual(4000);
    const a = tf.scalar(2.5);
    const b = tf.scalar(2.5);
    const s = tf.tidy(() => [tf.add(big, a), tf.add(big, b)]);
    const tm = backend().tensorMap;
    expect(tm.get(a.dataId).resource).toBe(tm.get(b.dataId).resource);
    expect(tm.get(a.dataId).external).toBe(true);
    tf.dispose([a, b, big, ...s]);
  });

  it("a kernel writing into a tensor that holds a shared buffer writes into a private copy", async () => {
    installWebgpuLaunchPatches();
    const z = tf.zeros([64]);
    const z2 = tf.zeros([64]);
    const x = tf.range(0, 64);
    const warm = tf.tidy(() => tf.add(tf.add(x, z), z2)); // uploads z and z2: one shared buffer
    await warm.data();
    const tm = backend().tensorMap;
    expect(tm.get(z.dataId).resource).toBe(tm.get(z2.dataId).resource);
    // A program that writes A + 5 into an explicit output tensor (as tfjs's atomics kernels do).
    const program = {
      variableNames: ["A"],
      outputShape: [64],
      shaderKey: "hypernetTestAddFive",
      size: true,
      workgroupSize: [64, 1, 1],
      dispatchLayout: { x: [0] },
      dispatch: [1, 1, 1],
      getUserCode: () => `fn main(index : i32) { if (index < uniforms.size) { setOutputAtIndex(index, getAByOutputIndex(index) + 5.0); } }`,
    };
    backend().runWebGPUProgram(program, [{ dataId: x.dataId, shape: x.shape, dtype: x.dtype }], "float32", undefined, {
      dataId: z.dataId,
      shape: z.shape,
      dtype: "float32",
    });
    expect(tm.get(z.dataId).resource).not.toBe(tm.get(z2.dataId).resource);
    expect(Array.from(await z.data())).toEqual(Array.from({ length: 64 }, (_, i) => i + 5));
    expect(Array.from(await z2.data())).toEqual(new Array(64).fill(0));
    const z3 = tf.tidy(() => tf.add(tf.zeros([64]), x)); // a new zeros([64]) still reads zeros
    expect(Array.from(await z3.data())).toEqual(Array.from({ length: 64 }, (_, i) => i));
    tf.dispose([z, z2, x, warm, z3]);
  });

  it("ldm-tiny eps: PyTorch's to 1e-4, and the stock path's exactly, with and without ldm-a", async () => {
    const rig = buildRig(tensors);
    try {
      removeWebgpuLaunchPatches();
      const stock = await eps(rig);
      installWebgpuLaunchPatches();
      const patched = await expectNoLeak(() => eps(rig));
      expectClose(patched, tensors.get("eps")!.data, 1e-4);
      expectSameBits(patched, stock, "eps, patched vs stock");
      const att = attachHypernetworks(rig.unet, [{ network: rig.net, multiplier: 1 }]);
      const withNet = await eps(rig);
      att.detach();
      expectClose(withNet, tensors.get("eps.a.1")!.data, 1e-4);
    } finally {
      rig.dispose();
    }
  }, 180_000);

  it("a training step: the stock path's loss, gradients and update, with ≤ 20 uploads and cached launches", async () => {
    const rig = buildRig(tensors);
    try {
      removeWebgpuLaunchPatches();
      const stock = await counted(() => trainingStep(rig)); // also compiles the step's shaders
      installWebgpuLaunchPatches();
      await trainingStep(rig); // fills the caches
      const patched = await counted(() => expectNoLeak(() => trainingStep(rig)));
      expect(patched.result.loss).toBe(stock.result.loss);
      stock.result.grads.forEach((g, i) => expectSameBits(patched.result.grads[i]!, g, `gradient ${i}`));
      stock.result.updated.forEach((w, i) => expectSameBits(patched.result.updated[i]!, w, `updated weight ${i}`));
      const s = stock.counts;
      const p = patched.counts;
      console.log(
        `training step counts, stock → patched: dispatches ${s.dispatches} → ${p.dispatches}, uploads ${s.uploads} (${s.scalarUploads} scalars) → ${p.uploads} (${p.scalarUploads}), uniform writes ${s.uniformWrites} → ${p.uniformWrites}, bind groups ${s.createBindGroup} → ${p.createBindGroup}, buffers created ${s.createBuffer} → ${p.createBuffer}`,
      );
      expect(p.dispatches).toBe(s.dispatches); // no fusion here: the same launches, made cheaper
      expect(Math.abs(p.submits - s.submits)).toBeLessThanOrEqual(Math.ceil(s.submits / 100));
      expect(s.createBufferMapped).toBeGreaterThan(100); // the stock path stages each upload
      expect(p.createBufferMapped).toBe(0);
      expect(p.uploads).toBeLessThanOrEqual(20);
      expect(p.uniformWrites).toBeLessThan(s.uniformWrites / 10);
      expect(p.createBindGroup).toBeLessThan(s.createBindGroup / 4);
      // The lean recorder against tfjs's own recordAndSubmit (every other patch on in both): the
      // same dispatches in the same submit batches, and the same numbers.
      removeWebgpuLaunchPatches();
      installWebgpuLaunchPatches({ record: false });
      const tfjsRecorder = await counted(() => trainingStep(rig));
      expect([tfjsRecorder.counts.dispatches, tfjsRecorder.counts.submits, tfjsRecorder.counts.computePasses]).toEqual([
        p.dispatches,
        p.submits,
        p.computePasses,
      ]);
      tfjsRecorder.result.grads.forEach((g, i) => expectSameBits(patched.result.grads[i]!, g, `gradient ${i}, lean vs tfjs recorder`));
    } finally {
      rig.dispose();
    }
  }, 600_000); // four training steps on lavapipe: 250 s at load 11–16
});
