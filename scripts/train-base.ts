/**
 * Train the embedded tiny base model (UNet + text encoder, jointly) on the tiny-shapes dataset.
 *
 *     npm run train-base -- [--steps 6000] [--batch 16] [--lr 1e-3] [--minutes 60]
 *                           [--offset-noise 0.1] [--text-lr-mult 3] [--workers 2]
 *                           [--mean-loss 0.2] [--mean-cap 100]
 *                           [--small-frac 0.5] [--low-t 0.3]  (extra small-shape scenes; extra t < 500)
 *                           [--run out/tiny-train] [--export models/tiny] [--fresh]
 *                           [--init models/tiny]   (a new run that starts from saved weights; its export
 *                                                   counts their steps and time as well as its own)
 *                           [--backend wasm|webgpu|cpu|…]  (default wasm; with webgpu use --workers 1.
 *                                                   Every read-back is awaited, so WebGPU in Node works;
 *                                                   on an H100 it was not faster for this tiny model —
 *                                                   see BENCHMARKS.md)
 *
 * One step (drawn on the main thread by `drawBatch`, the gradient computed by `batchGradients`,
 * both in `train-base-batch.ts`; with `--workers N` the batch is split over N worker threads, one
 * wasm instance per core, and their gradients are summed — see that file):
 *   1. draw `batch` scenes (sample indices step·batch … step·batch + batch − 1 of the seeded
 *      dataset, so a resumed run sees the same data), x₀ = pixels in [−1, 1];
 *   2. drop ~10% of the captions to "" — the model also learns the unconditional ε, which
 *      classifier-free guidance needs at sampling time;
 *   3. t ~ U{0…999} — or, for a fraction `--high-t` of the batch, t ~ U{500…999} — then
 *      ε = n + s·c with n ~ N(0, I) per pixel and c ~ N(0, I) per image and channel ("offset noise",
 *      s = `--offset-noise`, see the comment at the draw), x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε (the SD 1.x schedule). Why the extra high-noise
 *      draws: ε-MSE barely rewards knowing the caption — below t ≈ 500 the noisy image itself shows
 *      its colours, and at high t the error in x̂₀ is scaled down by ᾱ/(1−ᾱ) in ε-space. A first run
 *      with uniform t learned to ignore the text entirely (ε(cond) − ε(uncond) fell to ~1e-7 by step
 *      300), so its samples had random colours. Sampling starts at t = 999, where the caption is
 *      the only source of the background and shape colours, so that regime gets extra weight;
 *   4. loss = Σ_i w_i·mean (ε̂(x_t, t, text(caption)) − ε)² / Σ_i w_i with w = max(1, min(1/SNR_t, 20)),
 *      SNR_t = ᾱ_t/(1−ᾱ_t): where the noise hides the image, the model is graded on its x₀ estimate
 *      (ε-MSE/SNR) instead of the tiny ε-error that a wrong x₀ makes there. This is what finally
 *      made the model listen to the caption (with plain ε-MSE the gradients reaching the cross-
 *      attention were ~1e-7 at high t). With `--mean-loss λ`, plus λ·min(σ_t², mean-cap)·(error of
 *      the mean colour of ε̂)² — the squared error of x̂₀'s mean colour, which decides the background
 *      in the first sampling step (see `drawBatch`). Gradients go to every UNet and text-encoder weight;
 *   5. clip the global gradient norm to 1, AdamW step (β = 0.9/0.999, weight decay 0.01 on
 *      matrices and kernels only), learning rate warmed up linearly then cosine-decayed to 10%;
 *      the text path (text encoder, cross-attention to_k/to_v) steps `--text-lr-mult` times faster;
 *   6. update an exponential moving average (EMA, decay `--ema`, default 0.999) of the weights — the EMA weights
 *      sample much more cleanly than the raw ones after a short run, and they are what is shipped.
 *
 * Every `--ckpt-every` steps (and on Ctrl-C / SIGTERM / a file named STOP in the run folder) the
 * full state — weights, EMA, Adam moments, RNG, step — is written atomically to the run folder,
 * and the EMA weights are exported as a loadable tiny model to `--export`. Re-running the same
 * command resumes from the checkpoint (pass `--fresh` to start over).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { useBackend, type BackendChoice } from "../src/backend/backend";
import { Rng } from "../src/diffusion/random";
import { sd15Schedule } from "../src/diffusion/schedule";
import { readSafetensors, writeSafetensors } from "../src/io/safetensors";
import type { HostTensor } from "../src/io/host-tensor";
import { writeFileAtomic } from "../src/io/atomic";
import { globalNorm } from "../src/train/grad-norm";
import type { Param } from "../src/nn/module";
import {
  buildTinyModel,
  defaultTinyConfig,
  loadTinyWeights,
  readTinyConfig,
  writeTinyModel,
  type TinyModelConfig,
  type TinyModelParts,
} from "../src/tiny/model";
import { registerWasmUnsortedSegmentSum } from "../src/backend/wasm-segment-sum";
import { GradientPool, batchGradients, drawBatch } from "./train-base-batch";

interface Args {
  steps: number;
  batch: number;
  lr: number;
  warmup: number;
  minutes: number;
  run: string;
  export: string;
  seed: number;
  dataSeed: number;
  ckptEvery: number;
  logEvery: number;
  dropout: number;
  ema: number;
  highT: number;
  snrCap: number;
  offsetNoise: number;
  textLrMult: number;
  /** λ of the colour-mean loss (train-base-batch.ts, `drawBatch`); 0 = off. */
  meanLoss: number;
  meanCap: number;
  /** Fraction of each batch swapped for small-shape scenes (`drawBatch`); 0 = off. */
  smallFrac: number;
  /** Fraction of timesteps drawn from U{0…499}; 0 = off. */
  lowT: number;
  /** Worker threads computing parts of each batch's gradient (data parallelism; 1 = in-process). */
  workers: number;
  fresh: boolean;
  /** Start a new run from the weights of this tiny-model folder instead of a random init. */
  init: string;
  backend: BackendChoice;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    steps: 6000,
    batch: 16,
    lr: 1e-3,
    warmup: 200,
    minutes: Infinity,
    run: "out/tiny-train",
    export: "models/tiny",
    seed: 1234,
    dataSeed: 7,
    ckptEvery: 250,
    logEvery: 10,
    dropout: 0.1,
    ema: 0.999,
    highT: 0.5,
    snrCap: 20,
    offsetNoise: 0.1,
    textLrMult: 3,
    meanLoss: 0,
    meanCap: 100,
    smallFrac: 0,
    lowT: 0,
    workers: Math.min(4, os.cpus().length),
    fresh: false,
    init: "",
    backend: "wasm",
  };
  const num = (k: string, v: string | undefined): number => {
    const x = Number(v);
    if (v === undefined || !Number.isFinite(x)) throw new Error(`--${k} needs a number, got ${JSON.stringify(v)}`);
    return x;
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!.replace(/^--/, "");
    switch (k) {
      case "fresh":
        a.fresh = true;
        break;
      case "run":
      case "export":
      case "init":
        a[k] = argv[++i] ?? "";
        break;
      case "backend":
        a.backend = (argv[++i] ?? "wasm") as BackendChoice;
        break;
      case "steps":
      case "batch":
      case "lr":
      case "warmup":
      case "minutes":
      case "seed":
      case "dropout":
      case "ema":
        a[k] = num(k, argv[++i]);
        break;
      case "high-t":
        a.highT = num(k, argv[++i]);
        break;
      case "snr-cap":
        a.snrCap = num(k, argv[++i]);
        break;
      case "offset-noise":
        a.offsetNoise = num(k, argv[++i]);
        break;
      case "mean-loss":
        a.meanLoss = num(k, argv[++i]);
        break;
      case "mean-cap":
        a.meanCap = num(k, argv[++i]);
        break;
      case "small-frac":
        a.smallFrac = num(k, argv[++i]);
        break;
      case "low-t":
        a.lowT = num(k, argv[++i]);
        break;
      case "workers":
        a.workers = Math.max(1, Math.floor(num(k, argv[++i])));
        break;
      case "text-lr-mult":
        a.textLrMult = num(k, argv[++i]);
        break;
      case "data-seed":
        a.dataSeed = num(k, argv[++i]);
        break;
      case "ckpt-every":
        a.ckptEvery = num(k, argv[++i]);
        break;
      case "log-every":
        a.logEvery = num(k, argv[++i]);
        break;
      default:
        throw new Error(`unknown option ${argv[i]} (see the header of scripts/train-base.ts)`);
    }
  }
  return a;
}

/** Linear warmup to `lr`, then cosine decay to 10% of it at `total` steps. */
function learningRate(step: number, a: Args): number {
  if (step < a.warmup) return (a.lr * (step + 1)) / a.warmup;
  const p = Math.min(1, (step - a.warmup) / Math.max(1, a.steps - a.warmup));
  return a.lr * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * p)));
}

/** A trainable weight with its AdamW moments and EMA shadow. */
interface Slot {
  key: string;
  param: Param;
  m: tf.Variable;
  v: tf.Variable;
  ema: tf.Variable;
  decay: boolean;
  /** Learning-rate multiplier: > 1 for the text path (see `isTextPath`). */
  lrMult: number;
}

/**
 * The weights that carry the caption into the image: the whole text encoder (its embeddings start
 * from scratch) and the cross-attention key/value projections that read its output. They get a
 * larger learning rate because their gradients are orders of magnitude smaller than the UNet's
 * image-path gradients, which made the first run learn to ignore the caption.
 */
function isTextPath(key: string): boolean {
  return key.startsWith("text.") || /attn2\.to_[kv]\./.test(key);
}

function makeSlots(parts: TinyModelParts, textLrMult: number): Slot[] {
  const named: Array<[string, Param]> = [...parts.unet.namedParameters("unet."), ...parts.textEncoder.namedParameters("text.")];
  return named.map(([key, param]) => ({
    key,
    param,
    m: tf.variable(tf.zerosLike(param.value), false),
    v: tf.variable(tf.zerosLike(param.value), false),
    ema: tf.variable(param.value.clone(), false),
    // Decay matrices and conv kernels, not biases, norms or embeddings' 1-D tables.
    decay: param.torchShape.length >= 2 && !key.includes("norm"),
    lrMult: isTextPath(key) ? textLrMult : 1,
  }));
}

const B1 = 0.9;
const B2 = 0.999;
const EPS = 1e-8;
const WD = 0.01;
const CLIP = 1.0;

/** One AdamW update of every slot from its gradient, after global-norm clipping. Returns the pre-clip norm. */
async function applyAdamW(slots: Slot[], grads: tf.NamedTensorMap, step: number, lr: number, emaDecay: number): Promise<number> {
  const norm = globalNorm(slots.map((s) => grads[s.param.value.name]!));
  const gnorm = (await norm.data())[0]!; // async: WebGPU in Node cannot read back synchronously
  norm.dispose();
  const scale = gnorm > CLIP ? CLIP / gnorm : 1;
  const t = step + 1;
  const bc1 = 1 - B1 ** t;
  const bc2 = 1 - B2 ** t;
  for (const s of slots) {
    tf.tidy(() => {
      const g = tf.mul(grads[s.param.value.name]!, scale);
      const m = tf.add(tf.mul(s.m, B1), tf.mul(g, 1 - B1));
      const v = tf.add(tf.mul(s.v, B2), tf.mul(tf.square(g), 1 - B2));
      s.m.assign(m);
      s.v.assign(v);
      // w ← w − lr·(m̂/(√v̂ + ε) + wd·w)   (decoupled weight decay)
      let update = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), EPS));
      if (s.decay) update = tf.add(update, tf.mul(s.param.value, WD));
      s.param.value.assign(tf.sub(s.param.value, tf.mul(update, lr * s.lrMult)));
      s.ema.assign(tf.add(tf.mul(s.ema, emaDecay), tf.mul(s.param.value, 1 - emaDecay)));
    });
  }
  return gnorm;
}

interface RunState {
  step: number;
  rng: ReturnType<Rng["getState"]>;
  elapsedSec: number;
  lastLoss: number;
  args: Args;
  config: TinyModelConfig;
  /** A run started with `--init`: the folder and what its weights had behind them. */
  initFrom?: { dir: string; steps: number; trainSeconds: number };
}

async function host(t: tf.Tensor): Promise<HostTensor> {
  return { dtype: "F32", shape: [...t.shape], data: (await t.data()) as Float32Array };
}

/**
 * Write the full training state (atomic) and export the EMA weights as a tiny model. Every read
 * is awaited, so this works on WebGPU in Node too.
 */
async function checkpoint(a: Args, parts: TinyModelParts, slots: Slot[], state: RunState): Promise<void> {
  const tensors: Array<[string, HostTensor]> = [];
  for (const s of slots) {
    tensors.push([`w.${s.key}`, await host(s.param.value)]);
    tensors.push([`m.${s.key}`, await host(s.m)]);
    tensors.push([`v.${s.key}`, await host(s.v)]);
    tensors.push([`ema.${s.key}`, await host(s.ema)]);
  }
  writeSafetensors(path.join(a.run, "state.safetensors"), tensors, {}, { overwrite: true });
  writeFileAtomic(path.join(a.run, "state.json"), [Buffer.from(JSON.stringify(state, null, 2))], { overwrite: true });

  // Export: swap the EMA values in, read them in PyTorch layout, swap back, save fp16.
  const raw = slots.map((s) => s.param.value.clone());
  slots.forEach((s) => s.param.value.assign(s.ema));
  const weights = new Map<string, HostTensor>();
  for (const s of slots) weights.set(s.key, await s.param.toTorch());
  slots.forEach((s, i) => s.param.value.assign(raw[i]!));
  raw.forEach((r) => r.dispose());
  // A run that started from saved weights reports the model's whole history: steps and time
  // before (`initFrom`) plus this run's (`runSteps`), so the exported card numbers stay true.
  const before = state.initFrom;
  const config: TinyModelConfig = {
    ...parts.config,
    training: {
      steps: (before?.steps ?? 0) + state.step,
      ...(before ? { runSteps: state.step, initFrom: before } : {}),
      batch: a.batch,
      highT: a.highT,
      snrCap: a.snrCap,
      offsetNoise: a.offsetNoise,
      textLrMult: a.textLrMult,
      lr: a.lr,
      ema: a.ema,
      captionDropout: a.dropout,
      meanLoss: a.meanLoss,
      meanCap: a.meanCap,
      ...(a.smallFrac ? { smallFrac: a.smallFrac } : {}),
      ...(a.lowT ? { lowT: a.lowT } : {}),
      trainSeconds: Math.round((before?.trainSeconds ?? 0) + state.elapsedSec),
      lossEma: Number(state.lastLoss.toFixed(5)),
      dataSeed: a.dataSeed,
    },
  };
  writeTinyModel(a.export, config, weights, { overwrite: true });
}

/** The config of a tiny-model folder, without its training facts (a new run writes its own). */
function initConfig(dir: string): TinyModelConfig {
  const { training: _previous, ...config } = readTinyConfig(dir);
  return config;
}

function restore(a: Args, slots: Slot[]): RunState | undefined {
  const jf = path.join(a.run, "state.json");
  const sf = path.join(a.run, "state.safetensors");
  if (a.fresh || !fs.existsSync(jf) || !fs.existsSync(sf)) return undefined;
  const state = JSON.parse(fs.readFileSync(jf, "utf8")) as RunState;
  const { tensors } = readSafetensors(sf);
  for (const s of slots) {
    for (const [prefix, target] of [
      ["w.", s.param.value],
      ["m.", s.m],
      ["v.", s.v],
      ["ema.", s.ema],
    ] as Array<[string, tf.Variable]>) {
      const t = tensors.get(prefix + s.key);
      if (!t) throw new Error(`${sf}: missing ${prefix}${s.key}; the checkpoint is from another model config (use --fresh to start over)`);
      const x = tf.tensor(t.data, target.shape, "float32");
      target.assign(x);
      x.dispose();
    }
  }
  return state;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  await useBackend(a.backend);
  if (tf.getBackend() === "wasm") registerWasmUnsortedSegmentSum();
  fs.mkdirSync(a.run, { recursive: true });

  let config = a.init ? initConfig(a.init) : defaultTinyConfig();
  const jf = path.join(a.run, "state.json");
  if (!a.fresh && fs.existsSync(jf)) config = (JSON.parse(fs.readFileSync(jf, "utf8")) as RunState).config;
  const parts = buildTinyModel(config, { trainable: true });
  const slots = makeSlots(parts, a.textLrMult);
  const restored = restore(a, slots);
  let initFrom = restored?.initFrom;
  if (!restored && a.init) {
    const previous = readTinyConfig(a.init).training;
    const num = (v: unknown): number => (typeof v === "number" && Number.isFinite(v) ? v : 0);
    initFrom = { dir: a.init, steps: num(previous?.steps), trainSeconds: num(previous?.trainSeconds) };
    // A new run that starts from saved weights (e.g. the shipped model): weights and EMA from the
    // file, fresh AdamW moments, the warmup and data stream from step 0.
    loadTinyWeights(parts, path.join(a.init, "model.safetensors"));
    for (const s of slots) s.ema.assign(s.param.value);
    console.log(`starting from the weights in ${a.init} (trained ${previous?.steps ?? "?"} steps before)`);
  }
  const rng = restored ? Rng.fromState(restored.rng) : new Rng(a.seed);
  let step = restored?.step ?? 0;
  let elapsed = restored?.elapsedSec ?? 0;
  let lossEma = restored?.lastLoss ?? NaN;
  const nUnet = parts.unet.parameterCount();
  const nText = parts.textEncoder.parameterCount();
  console.log(
    `tiny base model: UNet ${nUnet.toLocaleString()} + text ${nText.toLocaleString()} parameters; ${restored ? `resuming at step ${step}` : "fresh start"}; batch ${a.batch}, ${a.steps} steps`,
  );

  const csv = path.join(a.run, "loss.csv");
  if (!restored || !fs.existsSync(csv)) fs.writeFileSync(csv, "step,loss,lr,grad_norm,elapsed_s\n");
  let stop = false;
  const onSignal = (): void => {
    console.log("stop requested: finishing the step and writing a checkpoint");
    stop = true;
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const schedule = sd15Schedule();
  const vars = slots.map((s) => s.param.value);
  const t0 = Date.now() - elapsed * 1000;
  const deadline = Date.now() + a.minutes * 60_000;
  let csvLines: string[] = [];
  const state = (): RunState => ({
    step,
    rng: rng.getState(),
    elapsedSec: elapsed,
    lastLoss: lossEma,
    args: a,
    config,
    ...(initFrom ? { initFrom } : {}),
  });

  const pool = a.workers > 1 ? await GradientPool.start(a.workers, config, a.dataSeed, slots) : undefined;
  if (pool)
    console.log(`data-parallel: ${a.workers} worker threads, each computing the gradient of ${Math.ceil(a.batch / a.workers)} samples`);

  while (step < a.steps && !stop) {
    const batch = drawBatch(a, step, rng, schedule, parts.tokenizer);
    let loss: number;
    let grads: tf.NamedTensorMap;
    if (pool) {
      const r = await pool.gradients(batch, slots);
      grads = r.grads;
      loss = r.mseSum / a.batch;
    } else {
      const r = await batchGradients(parts, vars, batch, a.dataSeed, schedule);
      grads = r.grads;
      loss = r.mseSum / a.batch;
    }
    const lr = learningRate(step, a);
    const gnorm = await applyAdamW(slots, grads, step, lr, step < 100 ? 0 : a.ema);
    tf.dispose(grads);
    if (!Number.isFinite(loss)) throw new Error(`loss became ${loss} at step ${step}; restart from the last checkpoint with a lower --lr`);
    step++;
    elapsed = (Date.now() - t0) / 1000;
    lossEma = Number.isNaN(lossEma) ? loss : 0.98 * lossEma + 0.02 * loss;
    csvLines.push(`${step},${loss.toFixed(6)},${lr.toExponential(3)},${gnorm.toFixed(4)},${elapsed.toFixed(1)}`);
    if (step % a.logEvery === 0 || step === a.steps) {
      fs.appendFileSync(csv, csvLines.join("\n") + "\n");
      csvLines = [];
      console.log(
        `step ${step}/${a.steps}  loss ${loss.toFixed(4)} (avg ${lossEma.toFixed(4)})  lr ${lr.toExponential(2)}  |g| ${gnorm.toFixed(2)}  ${(elapsed / 60).toFixed(1)} min  tensors ${tf.memory().numTensors}`,
      );
    }
    await new Promise((r) => setImmediate(r)); // let a pending Ctrl-C/SIGTERM handler run
    if (fs.existsSync(path.join(a.run, "STOP")) || Date.now() > deadline) stop = true;
    if (step % a.ckptEvery === 0 || stop || step === a.steps) {
      if (csvLines.length) fs.appendFileSync(csv, csvLines.join("\n") + "\n");
      csvLines = [];
      await checkpoint(a, parts, slots, state());
      console.log(`checkpoint at step ${step} → ${a.run}; EMA weights exported to ${a.export}`);
    }
  }
  await pool?.close();
  console.log(`done at step ${step} after ${(elapsed / 60).toFixed(1)} min; smoothed loss ${lossEma.toFixed(4)}`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
