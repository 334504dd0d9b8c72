/**
 * `npm run bench`: the hypernetwork training step and the sampling step of a UNet, plus
 * micro-benchmarks (matMul, conv forward/backward, attention forward/backward), one JSON object per
 * case on stdout. `bench/torch_bench.py` measures the same cases in PyTorch; BENCHMARKS.md puts
 * them side by side.
 *
 *   npm run bench -- [--config tiny|sd15|FILE.json] [--batch 4] [--size 32] [--steps 5]
 *                    [--backend auto|wasm|cpu|webgpu|webgpu-null|tensorflow|tensorflow-gpu]
 *                    [--context-len 77] [--no-micro] [--profile] [--no-cache]
 *                    [--sd-shapes] [--no-webgpu-patches]
 *
 * On WebGPU (`webgpu`, or `webgpu-null`: Dawn's null device, which runs nothing, so only host
 * costs are left) a `webgpu_launches` line follows the step times: per training and per sampling
 * step, the GPU dispatches, submits, uploads (scalars among them), uniform writes, bind groups and
 * buffers created, and the host queuing and drain times (bench/webgpu-launches.ts). The launch
 * patches of src/backend/webgpu-launch.ts are on unless `--no-webgpu-patches` (compare the two).
 * `--sd-shapes` adds micro-benchmarks at SD 1.5's real sizes (the 64×64×320 conv, attention
 * products at 4,096 tokens, the 4,096×320·320×1,280 linears): seconds on a GPU, minutes on
 * lavapipe or wasm, so they are off by default.
 *
 * Defaults: the ldm-tiny fixture config at 32×32, batch 4, 77 context tokens, 5 timed steps after
 * one warm-up. Times include reading the result back (`dataSync`), so GPU backends are measured to
 * completion.
 */
import * as os from "node:os";
import * as tf from "@tensorflow/tfjs";
import { fusedKernelsActive } from "../src/backend/webgpu-fused";
import { fusedAttentionActive } from "../src/backend/webgpu-attention";
import { fusedAdamWActive } from "../src/backend/webgpu-adamw";

/** Which fused kernel sets a WebGPU run had (the attention and AdamW ones can be turned off alone). */
function fusedFlags(): Record<string, boolean> {
  return { fused_kernels: fusedKernelsActive(), fused_attention: fusedAttentionActive(), fused_adamw: fusedAdamWActive() };
}
import { installWebgpuLaunchPatches, removeWebgpuLaunchPatches } from "../src/backend/webgpu-launch";
import { CrossAttention } from "../src/unet/attention";
import {
  type BenchArgs,
  type BenchModel,
  buildModel,
  loadConfig,
  parseArgs,
  peakRssMb,
  sampleStepAsync,
  selectBackend,
  timeAsync,
  trainStep,
  trainStepAsync,
} from "./harness";
import { measureLaunches, sampleStepSplit, trainStepSplit, useWebgpuNull } from "./webgpu-launches";

function emit(obj: Record<string, unknown>): void {
  console.log(JSON.stringify(obj));
}

/** Aggregate `tf.profile` kernel times of one training step by kernel name, largest first. */
async function profileStep(run: () => void): Promise<Array<{ kernel: string; ms: number; calls: number }>> {
  const info = await tf.profile(run);
  const by = new Map<string, { ms: number; calls: number }>();
  for (const k of info.kernels) {
    const e = by.get(k.name) ?? { ms: 0, calls: 0 };
    e.ms += typeof k.kernelTimeMs === "number" ? k.kernelTimeMs : 0;
    e.calls++;
    by.set(k.name, e);
  }
  return [...by].map(([kernel, e]) => ({ kernel, ms: Math.round(e.ms * 10) / 10, calls: e.calls })).sort((p, q) => q.ms - p.ms);
}

/** Micro-benchmarks with the shapes of reference/tfjs-on-this-machine.md §3 (same as torch_bench.py). */
async function micro(args: BenchArgs, base: Record<string, unknown>, small: boolean, sd: boolean): Promise<void> {
  const runs = Math.max(3, args.steps);
  // Each run reads every result back with `await data()` (so a GPU backend is timed to completion;
  // WebGPU in Node has no synchronous read).
  const report = async (name: string, gflop: number, fn: () => tf.Tensor[]): Promise<void> => {
    const before = tf.memory().numTensors;
    const r = await timeAsync(async () => {
      const outs = fn();
      for (const t of outs) await t.data();
      tf.dispose(outs);
    }, runs);
    emit({
      ...base,
      case: name,
      median_ms: round(r.median),
      min_ms: round(r.min),
      gflops: round(gflop / (r.median / 1000)),
      leaked_tensors: tf.memory().numTensors - before,
    });
  };
  if (sd) await microSd(report);
  if (!small) return;
  // (a) 512³ matMul: 0.268 GFLOP
  const a = tf.randomNormal([512, 512]);
  const b = tf.randomNormal([512, 512]);
  await report("matmul_512", 0.268, () => [tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D)]);
  // (b) conv 1×64×64×128, 3×3, 128→128, 'same': 1.208 GFLOP forward, 3.62 forward + dx + dW
  const x = tf.randomNormal([1, 64, 64, 128]) as tf.Tensor4D;
  const w = tf.mul(tf.randomNormal([3, 3, 128, 128]), 0.05) as tf.Tensor4D;
  await report("conv_fwd", 1.208, () => [tf.conv2d(x, w, 1, "same")]);
  await report("conv_fwd_bwd", 3.62, () =>
    tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.mean(tf.square(tf.conv2d(p as tf.Tensor4D, q as tf.Tensor4D, 1, "same"))) as tf.Scalar)([
      x,
      w,
    ]),
  );
  // (c) cross-attention: B=4, 256 tokens × 128, context 77 × 256, 4 heads of 32: 0.148 GFLOP forward, ×3 with backward
  const attn = new CrossAttention(128, 256, 4, 32, false);
  const q = tf.randomNormal([4, 256, 128]);
  const c = tf.randomNormal([4, 77, 256]);
  await report("attention_fwd", 0.148, () => [attn.apply(q, c)]);
  // Module weights are frozen by default; make them trainable so variableGrads differentiates them.
  const weights = attn.namedParameters().map(([, p]) => p.value);
  for (const v of weights) v.trainable = true;
  await report("attention_fwd_bwd", 0.444, () => {
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.mean(tf.square(attn.apply(q, c))) as tf.Scalar), weights);
    value.dispose();
    const dx = tf.grad((xx: tf.Tensor) => tf.mean(tf.square(attn.apply(xx, c))))(q);
    return [dx, ...Object.values(grads)];
  });
  attn.dispose();
  tf.dispose([a, b, x, w, q, c]);
}

/**
 * Micro-benchmarks at SD 1.5's own sizes (UNet level 1: 64×64 latents, 320 channels, 8 heads of
 * 40; 4,096 tokens): the 3×3 conv, the attention score and value products for one head (8 heads
 * in fp32 would be a 512 MiB score matrix, over WebGPU's default binding limit), and the
 * feed-forward linears. FLOPs are 2·MACs; `bench/torch_bench.py --sd-shapes` runs the same.
 */
async function microSd(report: (name: string, gflop: number, fn: () => tf.Tensor[]) => Promise<void>): Promise<void> {
  const gf = (macs: number): number => (2 * macs) / 1e9;
  const x = tf.randomNormal([1, 64, 64, 320]) as tf.Tensor4D;
  const w = tf.mul(tf.randomNormal([3, 3, 320, 320]), 0.02) as tf.Tensor4D;
  const conv = gf(64 * 64 * 320 * 320 * 9);
  await report("sd_conv3x3_64x64x320_fwd", conv, () => [tf.conv2d(x, w, 1, "same")]);
  await report("sd_conv3x3_64x64x320_fwd_bwd", 3 * conv, () =>
    tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.mean(tf.square(tf.conv2d(p as tf.Tensor4D, q as tf.Tensor4D, 1, "same"))) as tf.Scalar)([
      x,
      w,
    ]),
  );
  tf.dispose([x, w]);
  for (const d of [40, 64]) {
    const q = tf.randomNormal([1, 4096, d]) as tf.Tensor3D;
    const kT = tf.randomNormal([1, d, 4096]) as tf.Tensor3D;
    const p = tf.softmax(tf.randomNormal([1, 4096, 4096])) as tf.Tensor3D;
    const v = tf.randomNormal([1, 4096, d]) as tf.Tensor3D;
    await report(`sd_attn_qk_4096_d${d}`, gf(4096 * 4096 * d), () => [tf.matMul(q, kT)]);
    await report(`sd_attn_pv_4096_d${d}`, gf(4096 * 4096 * d), () => [tf.matMul(p, v)]);
    tf.dispose([q, kT, p, v]);
  }
  const h = tf.randomNormal([4096, 320]) as tf.Tensor2D;
  const up = tf.randomNormal([320, 1280]) as tf.Tensor2D;
  const g = tf.randomNormal([4096, 1280]) as tf.Tensor2D;
  const down = tf.randomNormal([1280, 320]) as tf.Tensor2D;
  await report("sd_linear_4096x320x1280", gf(4096 * 320 * 1280), () => [tf.matMul(h, up)]);
  await report("sd_linear_4096x1280x320", gf(4096 * 1280 * 320), () => [tf.matMul(g, down)]);
  tf.dispose([h, up, g, down]);
}

function round(v: number): number {
  return Math.round(v * 10) / 10;
}

/** Options of this script beyond the shared {@link BenchArgs}. */
interface ExtraArgs {
  sdShapes: boolean;
  webgpuPatches: boolean;
}

/** Take this script's own flags out of argv (the rest goes to the shared parser). */
function takeExtraArgs(argv: string[]): { rest: string[]; extra: ExtraArgs } {
  const extra: ExtraArgs = { sdShapes: false, webgpuPatches: true };
  const rest = argv.filter((a) => {
    if (a === "--sd-shapes") extra.sdShapes = true;
    else if (a === "--no-webgpu-patches") extra.webgpuPatches = false;
    else return true;
    return false;
  });
  return { rest, extra };
}

/** Launch counts and host/drain times per training and sampling step (WebGPU backends only). */
async function reportLaunches(m: BenchModel, args: BenchArgs, base: Record<string, unknown>, patches: string[]): Promise<void> {
  const runs = Math.max(3, args.steps);
  const train = await measureLaunches(() => trainStepSplit(m), runs);
  const sample = await measureLaunches(() => sampleStepSplit(m), runs);
  emit({
    ...base,
    case: "webgpu_launches",
    config: args.config,
    batch: args.batch,
    size: args.size,
    launch_patches: patches,
    ...fusedFlags(),
    runs,
    train_step: train,
    sample_step: sample,
  });
}

async function main(): Promise<void> {
  const { rest, extra } = takeExtraArgs(process.argv.slice(2));
  const args = parseArgs(rest);
  const nullDevice = String(args.backend) === "webgpu-null";
  const report = nullDevice ? await useWebgpuNull() : await selectBackend(args.backend);
  const webgpu = tf.getBackend() === "webgpu";
  let patches: string[] = [];
  if (webgpu) {
    // As useBackend("webgpu") does (also for the null device): the launch patches, and with them
    // the fused kernels unless HYPERNET_WEBGPU_FUSED=0; --no-webgpu-patches then takes the launch
    // patches off again, so the two runs differ in the launch patches only.
    const r = installWebgpuLaunchPatches();
    if (extra.webgpuPatches && !r.installed) throw new Error(`WebGPU launch patches not installed: ${r.reason}`);
    if (extra.webgpuPatches) patches = r.patches!.applied;
    else removeWebgpuLaunchPatches();
  }
  const { config, contextLen, name } = loadConfig(args.config, args.contextLen);
  const base = {
    backend: report.backend,
    device: report.device,
    host: `${os.cpus().length}× ${os.cpus()[0]?.model ?? "cpu"}, load ${os.loadavg()[0]!.toFixed(2)}`,
  };
  const tensorsBefore = tf.memory().numTensors;
  const m = buildModel(config, args.batch, args.size, contextLen, !args.noCache);
  const modelTensors = tf.memory().numTensors;
  // Read back with `await data()`: WebGPU in Node has no synchronous readback (dataSync).
  const train = await timeAsync(() => trainStepAsync(m), args.steps);
  const sample = await timeAsync(() => sampleStepAsync(m), args.steps);
  emit({
    ...base,
    case: "unet_step",
    config: name,
    batch: args.batch,
    size: args.size,
    context_len: contextLen,
    cross_attention_cache: !args.noCache,
    unet_params: m.unet.namedParameters().reduce((n, [, p]) => n + p.value.size, 0),
    hypernet_params: m.net.parameterCount(),
    train_step_ms: round(train.median),
    train_step_min_ms: round(train.min),
    sample_step_ms: round(sample.median),
    sample_step_min_ms: round(sample.min),
    tensors_before: modelTensors,
    tensors_after: tf.memory().numTensors,
    peak_rss_mb: Math.round(peakRssMb()),
    ...(webgpu ? { launch_patches: patches, ...fusedFlags() } : {}),
  });
  if (webgpu) await reportLaunches(m, args, base, patches);
  if (args.profile) {
    const kernels = await profileStep(() => void trainStep(m));
    const total = kernels.reduce((s, k) => s + k.ms, 0);
    emit({ ...base, case: "train_step_profile", total_kernel_ms: round(total), top: kernels.slice(0, 15) });
  }
  m.dispose();
  if (tf.memory().numTensors !== tensorsBefore) emit({ ...base, case: "leak", tensors: tf.memory().numTensors - tensorsBefore });
  if (nullDevice && (!args.noMicro || extra.sdShapes)) {
    emit({ ...base, case: "micro_skipped", reason: "Dawn's null device runs no shaders: its GFLOP/s would mean nothing" });
  } else if (!args.noMicro || extra.sdShapes) {
    await micro(args, base, !args.noMicro, extra.sdShapes);
  }
}

main().catch((e: unknown) => {
  console.error((e as Error).message);
  process.exit(1);
});
