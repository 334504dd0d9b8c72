/**
 * Shared pieces of `bench/bench.ts` and `bench/soak.ts`: argument parsing, the benchmark model
 * (a UNet from a config + a 1-2-1 relu hypernetwork on every attention width) and the two steps
 * that are timed:
 *
 *   training step: ε-MSE of the frozen UNet with the hypernetwork attached, backward to the
 *                  hypernetwork's weights only, AdamW update (what `train()` does per step, with
 *                  latents and text context already cached, as the trainer caches them)
 *   sampling step: one UNet forward, no gradient (one sampler step without CFG)
 *
 * The PyTorch twin is `bench/torch_bench.py`; both build the same architecture from the same
 * LDM-named config and report the same parameter counts, so their times can be compared.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { type Attachment, attachHypernetworks } from "../src/hypernet/attach";
import { type Hypernetwork, createHypernetwork } from "../src/hypernet/network";
import { type BackendChoice, type BackendReport, useBackend } from "../src/backend/backend";
import { AdamW } from "../src/train/adamw";
import { diffusionLoss } from "../src/train/trainer";
import { type UNetConfig, UNET_PRESETS, fromJson } from "../src/unet/config";
import { UNetModel } from "../src/unet/unet";

/** Command-line settings shared by the bench and the soak run. */
export interface BenchArgs {
  /** `tiny`, `sd15`, or a JSON file of LDM unet_config params (+ optional `context_len`). */
  config: string;
  batch: number;
  /** Latent (pixel, for pixel-space models) side. */
  size: number;
  /** Timed repetitions per case (after one warm-up). */
  steps: number;
  backend: BackendChoice;
  /** Text tokens in the context (77 for SD; a config file's `context_len` overrides). */
  contextLen: number;
  /** Skip the micro-benchmarks. */
  noMicro: boolean;
  /** Print a per-kernel profile of one training step. */
  profile: boolean;
  /** Disable the hypernetwork's once-per-forward cross-attention cache (the A1111 way). */
  noCache: boolean;
}

export const DEFAULT_CONFIG = "test/fixtures/ldm-tiny.config.json";

/** Parse `--name value` / `--flag` arguments; unknown names are an error that lists the known ones. */
export function parseArgs(argv: string[], defaults: Partial<BenchArgs> = {}): BenchArgs {
  const a: BenchArgs = {
    config: DEFAULT_CONFIG,
    batch: 4,
    size: 32,
    steps: 5,
    backend: "auto",
    contextLen: 77,
    noMicro: false,
    profile: false,
    noCache: false,
    ...defaults,
  };
  const num = (name: string, v: string | undefined): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} needs a positive integer (got ${JSON.stringify(v)})`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = argv[i + 1];
    switch (k) {
      case "--config":
        a.config = v ?? "";
        i++;
        break;
      case "--batch":
        a.batch = num("batch", v);
        i++;
        break;
      case "--size":
        a.size = num("size", v);
        i++;
        break;
      case "--steps":
        a.steps = num("steps", v);
        i++;
        break;
      case "--context-len":
        a.contextLen = num("context-len", v);
        i++;
        break;
      case "--backend":
        a.backend = (v ?? "") as BackendChoice;
        i++;
        break;
      case "--no-micro":
        a.noMicro = true;
        break;
      case "--profile":
        a.profile = true;
        break;
      case "--no-cache":
        a.noCache = true;
        break;
      default:
        throw new Error(
          `unknown argument ${k}; use --config tiny|sd15|FILE.json, --batch N, --size N, --steps N, --context-len N, --backend auto|wasm|cpu|webgpu|tensorflow|tensorflow-gpu, --no-micro, --profile, --no-cache`,
        );
    }
  }
  return a;
}

/** Resolve `--config`: a preset name or a JSON file; returns the config and the context length. */
export function loadConfig(spec: string, contextLen: number): { config: UNetConfig; contextLen: number; name: string } {
  if (spec in UNET_PRESETS) return { config: { ...UNET_PRESETS[spec as keyof typeof UNET_PRESETS] }, contextLen, name: spec };
  if (!fs.existsSync(spec)) throw new Error(`--config ${spec}: not a preset (${Object.keys(UNET_PRESETS).join(", ")}) and no such file`);
  const json = JSON.parse(fs.readFileSync(spec, "utf8")) as Record<string, unknown>;
  let len = contextLen;
  if ("context_len" in json) {
    len = Number(json.context_len);
    delete json.context_len;
  }
  return { config: fromJson(json, spec), contextLen: len, name: spec };
}

/** The model, data and optimizer of one benchmark case. */
export interface BenchModel {
  unet: UNetModel;
  net: Hypernetwork;
  attachment: Attachment;
  optimizer: AdamW;
  x0: tf.Tensor4D;
  cond: tf.Tensor3D;
  dispose(): void;
}

/** Build the UNet (random weights), attach a 1-2-1 relu hypernetwork on every attention width. */
export function buildModel(config: UNetConfig, batch: number, size: number, contextLen: number, cache = true): BenchModel {
  const unet = new UNetModel(config);
  const dims = [...new Set(unet.attentionLayers().map(([, l]) => l.contextDim))].sort((p, q) => p - q);
  const net = createHypernetwork({ name: "bench", dims, layerStructure: [1, 2, 1], activation: "relu", seed: 1 });
  const attachment = attachHypernetworks(unet, [net]);
  attachment.training = true;
  attachment.cacheCrossAttention = cache;
  const optimizer = new AdamW(
    net.namedParameters().map(([, p]) => p),
    { lr: 1e-5 },
  );
  // Latents and text context are cached by the trainer, so they are made once here too.
  const x0 = tf.randomNormal([batch, size, size, config.in_channels], 0, 1, "float32", 2) as tf.Tensor4D;
  const cond = tf.randomNormal([batch, contextLen, config.context_dim], 0, 1, "float32", 3) as tf.Tensor3D;
  return {
    unet,
    net,
    attachment,
    optimizer,
    x0,
    cond,
    dispose() {
      attachment.detach();
      optimizer.dispose();
      net.dispose();
      unet.dispose();
      tf.dispose([x0, cond]);
    },
  };
}

let stepCounter = 0;
function timesteps(batch: number): number[] {
  stepCounter++;
  return Array.from({ length: batch }, (_, i) => (stepCounter * 7919 + i * 104729) % 1000);
}

/** One hypernetwork training step: loss, gradients for the hypernetwork only, AdamW. Returns the loss. */
export function trainStep(m: BenchModel): number {
  const t = timesteps(m.x0.shape[0]);
  const noise = tf.randomNormal(m.x0.shape) as tf.Tensor4D;
  const vars = m.net.trainableVariables();
  const { value, grads } = tf.variableGrads(() => diffusionLoss(m.unet, { x0: m.x0, noise, t, cond: m.cond }), vars);
  m.optimizer.step(vars.map((v) => grads[v.name]!));
  const loss = value.dataSync()[0]!;
  tf.dispose([noise, value, ...Object.values(grads)]);
  return loss;
}

/**
 * {@link trainStep} reading the loss with `await data()`: the WebGPU backend cannot read GPU memory
 * synchronously in Node, so the benchmark uses this form on every backend.
 */
export async function trainStepAsync(m: BenchModel): Promise<number> {
  const t = timesteps(m.x0.shape[0]);
  const noise = tf.randomNormal(m.x0.shape) as tf.Tensor4D;
  const vars = m.net.trainableVariables();
  const { value, grads } = tf.variableGrads(() => diffusionLoss(m.unet, { x0: m.x0, noise, t, cond: m.cond }), vars);
  m.optimizer.step(vars.map((v) => grads[v.name]!));
  const loss = (await value.data())[0]!;
  tf.dispose([noise, value, ...Object.values(grads)]);
  return loss;
}

/** {@link sampleStep} reading the result with `await data()` (see {@link trainStepAsync}). */
export async function sampleStepAsync(m: BenchModel): Promise<void> {
  const t = timesteps(m.x0.shape[0]);
  const out = tf.tidy(() => m.unet.forward(m.x0, t, m.cond));
  await out.data();
  out.dispose();
}

/** {@link time} for functions that finish asynchronously. */
export async function timeAsync(
  fn: () => Promise<unknown>,
  runs: number,
  warmup = 1,
): Promise<{ median: number; min: number; all: number[] }> {
  for (let i = 0; i < warmup; i++) await fn();
  const all: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    all.push(performance.now() - t0);
  }
  const s = [...all].sort((p, q) => p - q);
  return { median: s[Math.floor(s.length / 2)]!, min: s[0]!, all };
}

/** One sampling step: a UNet forward with no gradient; the result is read back. */
export function sampleStep(m: BenchModel): void {
  const t = timesteps(m.x0.shape[0]);
  tf.tidy(() => m.unet.forward(m.x0, t, m.cond).dataSync());
}

/** Peak resident set size of this process so far, MB. */
export function peakRssMb(): number {
  return process.resourceUsage().maxRSS / 1024;
}

/** Select the backend quietly; returns its report. */
export function selectBackend(choice: BackendChoice): Promise<BackendReport> {
  return useBackend(choice, { quiet: true });
}
