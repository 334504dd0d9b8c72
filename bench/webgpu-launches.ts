/**
 * Launch costs of the WebGPU backend for `npm run bench`: per training step and per sampling step,
 * the GPU dispatches, submits, CPU→GPU uploads (and how many are single values), uniform writes,
 * bind groups, buffers created and read-backs (counted by src/backend/webgpu-counters.ts), plus
 * the host queuing time (the synchronous part of the step: tfjs builds and records every launch)
 * and the drain time (from asking for the result until it is on the CPU: the GPU finishing the
 * queued work, then the read-back).
 *
 * Also the Dawn `null` backend (`--backend webgpu-null`): a WebGPU device that executes nothing,
 * so the step's time is the host cost of the launches alone, with no driver in the way.
 */
import { createRequire } from "node:module";
import * as tf from "@tensorflow/tfjs";
import { type WebgpuCounts, installWebgpuCounters } from "../src/backend/webgpu-counters";
import type { BenchModel } from "./harness";
import { diffusionLoss } from "../src/train/trainer";

const nodeRequire = createRequire(__filename);

/**
 * Select tfjs's `webgpu` backend on Dawn's `null` adapter (no GPU work is done; read-backs return
 * whatever the buffers hold). Must run before anything else loads tfjs-backend-webgpu in this
 * process, since that package registers itself only when `navigator.gpu` exists at import time.
 */
export async function useWebgpuNull(): Promise<{ backend: string; device: string }> {
  let webgpu: { create(o: string[]): unknown; globals: Record<string, unknown> };
  try {
    webgpu = nodeRequire("webgpu") as typeof webgpu;
  } catch (e) {
    throw new Error(
      `--backend webgpu-null needs the optional \`webgpu\` package (npm install webgpu): ${(e as Error).message.split("\n")[0]}`,
    );
  }
  Object.assign(globalThis, webgpu.globals);
  const g = globalThis as { navigator?: object };
  const gpu = webgpu.create(["backend=null"]);
  if (g.navigator && typeof g.navigator === "object")
    Object.defineProperty(g.navigator, "gpu", { value: gpu, configurable: true, writable: true });
  else g.navigator = { gpu };
  nodeRequire("@tensorflow/tfjs-backend-webgpu");
  tf.enableProdMode(); // as useBackend does: the same tfjs checks as a real run
  if (!(await tf.setBackend("webgpu")))
    throw new Error("--backend webgpu-null: tfjs could not initialise the webgpu backend on Dawn's null adapter");
  return { backend: "webgpu-null", device: "Dawn null backend (no GPU work; host cost only)" };
}

/** Times of one step, split where the step stops queuing work and starts waiting for it. */
export interface SplitTime {
  /** Building and recording every launch (tfjs + Dawn on the CPU), ms. */
  hostMs: number;
  /** From asking for the result until it is on the CPU, ms. */
  drainMs: number;
  /**
   * CPU time of this process (all threads, user + system) during the host part, ms. On a shared,
   * loaded machine wall time includes waiting for a core; this does not.
   */
  hostCpuMs: number;
}

const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

let tick = 0;
function timesteps(batch: number): number[] {
  tick++;
  return Array.from({ length: batch }, (_, i) => (tick * 7919 + i * 104729) % 1000);
}

/** The bench training step (see harness.ts) with its host and drain parts timed apart. */
export async function trainStepSplit(m: BenchModel): Promise<SplitTime> {
  const c0 = cpuMs();
  const t0 = performance.now();
  const t = timesteps(m.x0.shape[0]);
  const noise = tf.randomNormal(m.x0.shape) as tf.Tensor4D;
  const vars = m.net.trainableVariables();
  const { value, grads } = tf.variableGrads(() => diffusionLoss(m.unet, { x0: m.x0, noise, t, cond: m.cond }), vars);
  m.optimizer.step(vars.map((v) => grads[v.name]!));
  const t1 = performance.now();
  const c1 = cpuMs();
  await value.data();
  const t2 = performance.now();
  tf.dispose([noise, value, ...Object.values(grads)]);
  return { hostMs: t1 - t0, drainMs: t2 - t1, hostCpuMs: c1 - c0 };
}

/** The bench sampling step (one UNet forward, no gradient) with host and drain timed apart. */
export async function sampleStepSplit(m: BenchModel): Promise<SplitTime> {
  const c0 = cpuMs();
  const t0 = performance.now();
  const out = tf.tidy(() => m.unet.forward(m.x0, timesteps(m.x0.shape[0]), m.cond));
  const t1 = performance.now();
  const c1 = cpuMs();
  await out.data();
  const t2 = performance.now();
  out.dispose();
  return { hostMs: t1 - t0, drainMs: t2 - t1, hostCpuMs: c1 - c0 };
}

/** Median of a list (the upper middle for even lengths). */
function median(xs: number[]): number {
  const s = [...xs].sort((p, q) => p - q);
  return s[Math.floor(s.length / 2)]!;
}

const r1 = (v: number): number => Math.round(v * 10) / 10;
const r2 = (v: number): number => Math.round(v * 100) / 100;

/** One step kind measured: counts of one step, and the median host/drain time over `runs`. */
export interface LaunchReport {
  counts: WebgpuCounts;
  /** tfjs kernels run in the step (each may dispatch 0, 1 or several GPU launches). */
  tfjs_kernels: number;
  host_ms: number;
  drain_ms: number;
  /** host_ms per dispatch, µs: the launch cost the targets are written in. */
  host_us_per_dispatch: number;
  /** CPU time of the host part (see {@link SplitTime.hostCpuMs}), ms and µs per dispatch. */
  host_cpu_ms: number;
  host_cpu_us_per_dispatch: number;
  /** The fastest run's host CPU time per dispatch, µs (the least disturbed by other processes). */
  host_cpu_us_per_dispatch_min: number;
}

/**
 * Count and time one kind of step: `runs` uncounted steps give the median host and drain times
 * (wrappers off, so they cost nothing), then one more step runs with the counters on. The model
 * must have been warmed up (shaders compiled) beforehand.
 */
export async function measureLaunches(step: () => Promise<SplitTime>, runs: number): Promise<LaunchReport> {
  const times: SplitTime[] = [];
  for (let i = 0; i < runs; i++) times.push(await step());
  const counters = installWebgpuCounters();
  let kernels = 0;
  try {
    kernels = await countKernels(async () => {
      await step();
    });
  } finally {
    counters.stop();
  }
  const host = median(times.map((t) => t.hostMs));
  const hostCpu = median(times.map((t) => t.hostCpuMs));
  const counts = counters.snapshot();
  const perDispatch = (ms: number): number => (counts.dispatches ? r2((ms * 1000) / counts.dispatches) : 0);
  return {
    counts,
    tfjs_kernels: kernels,
    host_ms: r1(host),
    drain_ms: r1(median(times.map((t) => t.drainMs))),
    host_us_per_dispatch: perDispatch(host),
    host_cpu_ms: r1(hostCpu),
    host_cpu_us_per_dispatch: perDispatch(hostCpu),
    host_cpu_us_per_dispatch_min: perDispatch(Math.min(...times.map((t) => t.hostCpuMs))),
  };
}

/**
 * Run `fn` and return how many tfjs kernels it ran, by wrapping the engine's `runKernelFunc`
 * bookkeeping: every kernel goes through `engine.runKernelFunc`.
 */
async function countKernels(fn: () => Promise<void>): Promise<number> {
  const engine = tf.engine() as unknown as { runKernelFunc: (...a: unknown[]) => unknown };
  const original = engine.runKernelFunc;
  let n = 0;
  engine.runKernelFunc = function (this: unknown, ...a: unknown[]): unknown {
    n++;
    return original.apply(this, a);
  };
  try {
    await fn();
  } finally {
    engine.runKernelFunc = original;
  }
  return n;
}
