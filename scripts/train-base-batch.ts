/**
 * One training batch of the tiny base model, and computing its gradient on several CPU cores.
 *
 * The tfjs wasm backend runs one thread per process, and the tiny UNet's ops are too small for
 * intra-op threading to pay off (measured in reference/tfjs-on-this-machine.md). So on a machine
 * with N cores the batch is split into N parts and each part's gradient is computed in its own
 * worker thread (its own wasm instance) — plain data parallelism. The main thread owns the weights,
 * the AdamW state, the EMA and the checkpoints; per step it writes the current weights into a
 * shared buffer, each worker loads them, computes Σ_i w_i·mse_i over its samples and writes its
 * gradient into its own shared buffer, and the main thread adds the parts up. Because the loss is a
 * weighted sum over samples, the summed gradient equals the single-process one up to float
 * rounding, and everything random is drawn on the main thread (`drawBatch`), so a run's data stream
 * does not depend on the number of workers.
 */
import * as path from "node:path";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import * as tf from "@tensorflow/tfjs";
import { Rng } from "../src/diffusion/random";
import { qSample, sd15Schedule, type NoiseSchedule } from "../src/diffusion/schedule";
import { useBackend } from "../src/backend/backend";
import type { Param } from "../src/nn/module";
import { buildTinyModel, type TinyModelConfig, type TinyModelParts } from "../src/tiny/model";
import { registerWasmUnsortedSegmentSum } from "../src/backend/wasm-segment-sum";
import { TINY_SIZE, randomScene, shapeSample, shapeSamples, toModelPixels } from "../src/tiny/shapes-data/shapes";

/** Everything one (part of a) batch needs; all of it drawn by the main thread. */
export interface BatchPart {
  /** First dataset index and number of samples (scenes `start … start + count − 1`). */
  start: number;
  count: number;
  /** Token ids of the captions after caption dropout, `[count][maxLength]`. */
  ids: number[][];
  timesteps: number[];
  /** ε, `[count, 32, 32, 3]`, offset noise included. */
  noise: Float32Array;
  /** Each sample's loss weight, already divided by the whole batch's total. */
  weights: number[];
  /** Each sample's weight for the colour-mean loss (see `drawBatch`), already divided by the batch size. */
  meanWeights: number[];
  /**
   * Where each sample comes from, `[dataSeed, index]`, when the batch is not simply scenes
   * `start … start + count − 1` of the run's data seed (`--small-frac`; see `drawBatch`).
   */
  sources?: Array<[number, number]>;
}

/** The knobs of `drawBatch` (a subset of train-base's options). */
export interface DrawOptions {
  batch: number;
  dropout: number;
  highT: number;
  snrCap: number;
  offsetNoise: number;
  dataSeed: number;
  /** λ of the colour-mean loss (0 = off). */
  meanLoss: number;
  /** Cap on σ_t² in the colour-mean loss's weight. */
  meanCap: number;
  /**
   * Fraction of the samples replaced by a small-shape scene (a small single shape or two small
   * shapes), drawn from a second stream of the dataset (seed `dataSeed + 1`); 0 or absent = off.
   */
  smallFrac?: number;
  /** Fraction of the timesteps drawn from U{0…499} (the low-noise half that draws edges); 0 or absent = off. */
  lowT?: number;
}

/**
 * Index of a small-shape scene in the stream `seed`, found by scanning from `from` upward: the
 * first index whose scene is small (60 % of all scenes are, so this takes ~1.7 tries). Only the
 * scene is drawn, not rendered, so it is cheap.
 */
export function smallSceneIndex(seed: number, from: number): number {
  for (let j = from; ; j++) {
    const scene = randomScene(new Rng((seed * 1_000_003 + j) % 2 ** 52));
    if (scene.size === "small") return j;
  }
}

/**
 * Draw step `step`'s batch: scenes `step·batch …`, ~`dropout` of the captions replaced by "",
 * t ~ U{0…999} (a fraction `highT` from U{500…999}), ε = n + s·c (offset noise: n per pixel,
 * c per image and channel), and per-sample weights max(1, min(1/SNR_t, snrCap)) normalised to sum 1.
 *
 * The colour-mean loss: at 32×32 the per-channel mean of an image — mostly its background — is its
 * dominant content, and sampling fixes it in the very first step, at σ ≈ 14.6, where the clean-image
 * estimate is x̂₀ = x − σ·ε̂ (in k-diffusion's scaling): an error δ in the mean of ε̂ becomes an error
 * σ·δ ≈ 15δ in the mean colour. Measured on the step-2,000 model: δ ≈ 0.05 gave backgrounds off by
 * 0.5–1.5 (saturated green, pink, orange for "black background"), locked in for the rest of the run.
 * Plain ε-MSE barely sees δ (a 0.05 mean error adds 0.0025 to a per-pixel loss of ~0.025), so the
 * loss gets a term for exactly that: λ·min(σ_t², meanCap)·mean_c (mean(ε̂)_c − mean(ε)_c)², which is
 * the squared error of x̂₀'s mean colour.
 */
export function drawBatch(
  o: DrawOptions,
  step: number,
  rng: Rng,
  schedule: NoiseSchedule,
  tokenizer: TinyModelParts["tokenizer"],
): BatchPart {
  const start = step * o.batch;
  // With `smallFrac`, some samples are swapped for small-shape scenes from a second stream of the
  // dataset (the weak point of the step-10,662 model: small shapes 10/30 right, large 34/34).
  const smallFrac = o.smallFrac ?? 0;
  const sources: Array<[number, number]> | undefined =
    smallFrac > 0
      ? Array.from({ length: o.batch }, (_, i): [number, number] =>
          rng.nextFloat() < smallFrac ? [o.dataSeed + 1, smallSceneIndex(o.dataSeed + 1, (start + i) * 4)] : [o.dataSeed, start + i],
        )
      : undefined;
  const scenes = sources ? sources.map(([seed, index]) => shapeSample(seed, index)) : shapeSamples(o.dataSeed, start, o.batch);
  const captions = scenes.map((s) => s.caption);
  const dropped = captions.map((c) => (rng.nextFloat() < o.dropout ? "" : c));
  const ids = tokenizer.encode(dropped, { longPrompts: "truncate" }).ids;
  const half = schedule.numTimesteps / 2;
  const lowT = o.lowT ?? 0;
  const timesteps = Array.from({ length: o.batch }, () => {
    const r = rng.nextFloat();
    if (r < o.highT) return rng.nextInt(half, schedule.numTimesteps);
    if (r < o.highT + lowT) return rng.nextInt(0, half);
    return rng.nextInt(0, schedule.numTimesteps);
  });
  const per = TINY_SIZE * TINY_SIZE * 3;
  // Offset noise: a shared per-image, per-channel offset in ε makes the model predict — and so
  // control — the mean colour of the noise it removes, which at 32×32 is most of the image's colour.
  // (It only helps when the UNet can carry a channel's spatial mean at all: see norm_num_groups in
  // models/tiny/MODEL_CARD.md.)
  const noise = rng.normal(o.batch * per);
  if (o.offsetNoise !== 0) {
    const offs = rng.normal(o.batch * 3);
    for (let i = 0; i < noise.length; i++) noise[i]! += o.offsetNoise * offs[Math.floor(i / per) * 3 + (i % 3)]!;
  }
  // x₀-error weighting at high noise: ε-MSE/SNR where the image is hidden, capped.
  const raw = timesteps.map((ti) => {
    const ab = schedule.alphasCumprod[ti]!;
    return Math.max(1, Math.min((1 - ab) / ab, o.snrCap));
  });
  const total = raw.reduce((x, y) => x + y, 0);
  const meanWeights = timesteps.map((ti) => {
    const ab = schedule.alphasCumprod[ti]!;
    return (o.meanLoss * Math.min((1 - ab) / ab, o.meanCap)) / o.batch;
  });
  return {
    start,
    count: o.batch,
    ids,
    timesteps,
    noise,
    weights: raw.map((w) => w / total),
    meanWeights,
    ...(sources ? { sources } : {}),
  };
}

/** Split a batch into `n` nearly equal consecutive parts (weights keep the whole batch's normalisation). */
export function splitBatch(b: BatchPart, n: number): BatchPart[] {
  const per = TINY_SIZE * TINY_SIZE * 3;
  const out: BatchPart[] = [];
  let at = 0;
  for (let k = 0; k < n; k++) {
    const c = Math.floor(b.count / n) + (k < b.count % n ? 1 : 0);
    if (c === 0) continue;
    out.push({
      start: b.start + at,
      count: c,
      ids: b.ids.slice(at, at + c),
      timesteps: b.timesteps.slice(at, at + c),
      noise: b.noise.slice(at * per, (at + c) * per),
      weights: b.weights.slice(at, at + c),
      meanWeights: b.meanWeights.slice(at, at + c),
      ...(b.sources ? { sources: b.sources.slice(at, at + c) } : {}),
    });
    at += c;
  }
  return out;
}

/**
 * The gradient of Σ_i w_i·mean((ε̂(x_t, t, text(caption)) − ε)²) + Σ_i u_i·mean_c(mean(ε̂)_c − mean(ε)_c)²
 * (u = `meanWeights`, the colour-mean loss of `drawBatch`) over one batch part with respect to
 * `vars` (every UNet and text-encoder weight), and Σ_i mse_i (the plain ε-MSE, for the log).
 */
export async function batchGradients(
  parts: TinyModelParts,
  vars: tf.Variable[],
  b: BatchPart,
  dataSeed: number,
  schedule: NoiseSchedule,
): Promise<{ grads: tf.NamedTensorMap; mseSum: number }> {
  const hw = TINY_SIZE;
  const samples = b.sources ? b.sources.map(([seed, index]) => shapeSample(seed, index)) : shapeSamples(dataSeed, b.start, b.count);
  const noise = tf.tensor4d(b.noise, [b.count, hw, hw, 3]);
  const x0 = tf.tensor4d(toModelPixels(samples.map((s) => s.pixels)), [b.count, hw, hw, 3]);
  const xt = qSample(x0, noise, b.timesteps, schedule) as tf.Tensor4D;
  const w = tf.tensor1d(b.weights);
  const u = tf.tensor1d(b.meanWeights);
  const useMean = b.meanWeights.some((x) => x > 0);
  let perSample: tf.Tensor1D | undefined;
  const { value, grads } = tf.variableGrads(() => {
    const ctx = parts.textEncoder.encode(b.ids);
    const eps = parts.unet.forward(xt, b.timesteps, ctx);
    const mse = tf.mean(tf.square(tf.sub(eps, noise)), [1, 2, 3]) as tf.Tensor1D;
    perSample = tf.keep(mse.clone());
    const loss = tf.sum(tf.mul(mse, w));
    if (!useMean) return loss as tf.Scalar;
    const meanErr = tf.mean(tf.square(tf.sub(tf.mean(eps, [1, 2]), tf.mean(noise, [1, 2]))), 1);
    return tf.add(loss, tf.sum(tf.mul(meanErr, u))) as tf.Scalar;
  }, vars);
  // Read asynchronously: WebGPU in Node has no synchronous read-back.
  const total = tf.sum(perSample!);
  tf.dispose([perSample!, w, u, value, noise, x0, xt]);
  const mseSum = (await total.data())[0]!;
  total.dispose();
  return { grads, mseSum };
}

interface WorkerInit {
  config: TinyModelConfig;
  dataSeed: number;
  keys: string[];
  weights: SharedArrayBuffer;
  grads: SharedArrayBuffer;
}

type ToWorker = { kind: "part"; part: BatchPart } | { kind: "close" };
type FromWorker = { kind: "ready" } | { kind: "done"; mseSum: number } | { kind: "error"; message: string };

/** Where each parameter sits in the flat shared buffers (slot order): offset and element count. */
interface Layout {
  shapes: number[][];
  offsets: number[];
  sizes: number[];
  total: number;
}

function layout(shapes: number[][]): Layout {
  const sizes = shapes.map((s) => s.reduce((x, y) => x * y, 1));
  const offsets: number[] = [];
  let total = 0;
  for (const n of sizes) {
    offsets.push(total);
    total += n;
  }
  return { shapes, offsets, sizes, total };
}

/** Parameter `i` of a flat buffer as a new tensor. */
function slice(flat: Float32Array, l: Layout, i: number): tf.Tensor {
  return tf.tensor(flat.subarray(l.offsets[i]!, l.offsets[i]! + l.sizes[i]!), l.shapes[i]!, "float32");
}

/** A slot as the pool sees it: the live weight (a tfjs variable) and its checkpoint key. */
export interface PoolSlot {
  key: string;
  param: Param;
}

/** N worker threads that each compute one part of every batch's gradient. */
export class GradientPool {
  private constructor(
    private readonly workers: Worker[],
    private readonly weights: Float32Array,
    private readonly grads: Float32Array[],
    private readonly layout: Layout,
  ) {}

  /** Start `n` workers, each building the model from `config`; resolves when all are ready. */
  static async start(n: number, config: TinyModelConfig, dataSeed: number, slots: PoolSlot[]): Promise<GradientPool> {
    const l = layout(slots.map((s) => [...s.param.value.shape]));
    const wBuf = new SharedArrayBuffer(l.total * 4);
    const gBufs = Array.from({ length: n }, () => new SharedArrayBuffer(l.total * 4));
    const file = path.resolve(__filename);
    const bootstrap = `require("ts-node").register({ transpileOnly: true }); require(${JSON.stringify(file)});`;
    const workers = gBufs.map(
      (g) =>
        new Worker(bootstrap, {
          eval: true,
          workerData: { config, dataSeed, keys: slots.map((s) => s.key), weights: wBuf, grads: g } satisfies WorkerInit,
        }),
    );
    await Promise.all(workers.map((w) => reply(w)));
    return new GradientPool(
      workers,
      new Float32Array(wBuf),
      gBufs.map((g) => new Float32Array(g)),
      l,
    );
  }

  /** The summed gradient of `batch` at the current values of `slots`, keyed by variable name. */
  async gradients(batch: BatchPart, slots: PoolSlot[]): Promise<{ grads: tf.NamedTensorMap; mseSum: number }> {
    slots.forEach((s, i) => this.weights.set(s.param.value.dataSync() as Float32Array, this.layout.offsets[i]!));
    const partsOf = splitBatch(batch, this.workers.length);
    const results = await Promise.all(
      partsOf.map((part, k) => {
        const w = this.workers[k]!;
        const r = reply(w);
        w.postMessage({ kind: "part", part } satisfies ToWorker);
        return r;
      }),
    );
    const sum = new Float32Array(this.weights.length);
    for (let k = 0; k < partsOf.length; k++) {
      const g = this.grads[k]!;
      for (let i = 0; i < sum.length; i++) sum[i]! += g[i]!;
    }
    const grads: tf.NamedTensorMap = {};
    slots.forEach((s, i) => {
      grads[s.param.value.name] = slice(sum, this.layout, i);
    });
    let mseSum = 0;
    for (const r of results) if (r.kind === "done") mseSum += r.mseSum;
    return { grads, mseSum };
  }

  async close(): Promise<void> {
    for (const w of this.workers) w.postMessage({ kind: "close" } satisfies ToWorker);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** The next message from a worker; rejects on an error message or a crash. */
function reply(w: Worker): Promise<FromWorker> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: FromWorker): void => {
      cleanup();
      if (m.kind === "error") reject(new Error(`training worker: ${m.message}`));
      else resolve(m);
    };
    const onErr = (e: Error): void => {
      cleanup();
      reject(e);
    };
    const onExit = (code: number): void => {
      cleanup();
      reject(new Error(`training worker exited with code ${code}`));
    };
    const cleanup = (): void => {
      w.off("message", onMsg);
      w.off("error", onErr);
      w.off("exit", onExit);
    };
    w.on("message", onMsg);
    w.on("error", onErr);
    w.on("exit", onExit);
  });
}

/** Worker side: build the model, then answer "part" messages with gradients in the shared buffer. */
async function workerMain(init: WorkerInit): Promise<void> {
  const port = parentPort!;
  try {
    await useBackend("wasm", { quiet: true });
    registerWasmUnsortedSegmentSum();
    const parts = buildTinyModel(init.config, { trainable: true });
    const named: Array<[string, Param]> = [...parts.unet.namedParameters("unet."), ...parts.textEncoder.namedParameters("text.")];
    const keys = named.map(([k]) => k);
    if (keys.join("\n") !== init.keys.join("\n")) throw new Error("the worker's model has different parameters from the main thread's");
    const vars = named.map(([, p]) => p.value);
    const l = layout(vars.map((v) => [...v.shape]));
    const weights = new Float32Array(init.weights);
    const grads = new Float32Array(init.grads);
    const index = new Map(vars.map((v, i) => [v.name, i]));
    const schedule = sd15Schedule();
    port.postMessage({ kind: "ready" } satisfies FromWorker);
    port.on("message", async (m: ToWorker) => {
      if (m.kind === "close") {
        port.close();
        return;
      }
      try {
        vars.forEach((v, i) => {
          const t = slice(weights, l, i);
          v.assign(t);
          t.dispose();
        });
        const { grads: g, mseSum } = await batchGradients(parts, vars, m.part, init.dataSeed, schedule);
        grads.fill(0); // a weight the loss does not reach gets no entry in g
        for (const [name, t] of Object.entries(g)) grads.set(t.dataSync() as Float32Array, l.offsets[index.get(name)!]!);
        tf.dispose(g);
        port.postMessage({ kind: "done", mseSum } satisfies FromWorker);
      } catch (e) {
        port.postMessage({ kind: "error", message: e instanceof Error ? e.message : String(e) } satisfies FromWorker);
      }
    });
  } catch (e) {
    port.postMessage({ kind: "error", message: e instanceof Error ? e.message : String(e) } satisfies FromWorker);
  }
}

if (!isMainThread && parentPort) void workerMain(workerData as WorkerInit);
