/**
 * Sampling the tiny model on every CPU core: one worker thread per core, each with its own wasm
 * instance and its own copy of the model, splitting a call's images between them.
 *
 * The tfjs wasm backend runs one thread per instance, and the tiny UNet's ops are too small for
 * intra-op threads to pay off (see scripts/train-base-batch.ts, which splits training batches the
 * same way). So a call's prompts are cut into UNet batches exactly as `sampleTiny` cuts them
 * (`batchSize` images at a time, in order), and each batch goes to the next idle worker.
 *
 * Same images as one thread: `sampleTiny` draws every batch's noise from one generator, in order,
 * so batch k starts from the generator's state after batches 0…k−1. The pool finds those states on
 * the main thread by running the sampler over each batch with a denoiser that returns zeros (it
 * draws exactly the noise the real run draws, for a few milliseconds of work), and hands each
 * worker its batch's starting state. The worker then runs the very same `sampleImages` call on the
 * same backend, so the pixels are bit-identical (tested). A worker reports the state its generator
 * ended in; if that differs from the main thread's (a sampler whose noise depends on the images,
 * such as an adaptive one), the call fails instead of returning different images.
 */
import * as os from "node:os";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import * as tf from "@tensorflow/tfjs";
import { useBackend, type BackendName } from "../backend/backend";
import { Rng, type RngState } from "../diffusion/random";
import { type SamplerName, samplerByName } from "../diffusion/sampler-names";
import { type StackEntry, attachHypernetworks } from "../hypernet/attach";
import { type HypernetworkInfo, emptyHypernetwork } from "../hypernet/network";
import type { BaseModel } from "../pipeline/base-model";
import { sampleImages } from "../pipeline/sample";
import { TINY_MODEL_DIR, loadTinyModel, readTinyConfig } from "./model";
import type { TinySampleOptions } from "./sample";
import { fromModelPixels } from "./shapes-data/shapes";

/** Options of {@link TinySamplerPool.sample}: `sampleTiny`'s, plus networks to attach. */
export interface PoolSampleOptions extends TinySampleOptions {
  /** Hypernetworks to attach in every worker for this call (with multiplier and optional timestep gate). */
  networks?: readonly StackEntry[];
}

/** A hypernetwork as it travels to a worker: its info, widths and weights (in `storedParameters` order). */
interface WireNetwork {
  info: HypernetworkInfo;
  dims: number[];
  weights: Array<{ shape: number[]; data: Float32Array }>;
  multiplier: number;
  timesteps?: [number, number];
}

interface WorkerInit {
  kind: "tiny-sampler";
  modelDir: string;
  backend: BackendName;
}

type ToWorker =
  | {
      kind: "job";
      prompts: string[];
      rng: RngState;
      sampler: SamplerName;
      steps: number;
      cfg: number;
      /** Networks of this call; `netsId` changes when they do, so a worker rebuilds them once per call. */
      netsId: number;
      nets: WireNetwork[];
    }
  | { kind: "close" };
type FromWorker =
  | { kind: "ready" }
  | { kind: "done"; pixels: Float32Array; rng: RngState }
  | { kind: "error"; message: string }
  | { kind: "closed" };

/** The number of worker threads a pool uses by default: one per core the process may use. */
export function defaultSamplerWorkers(): number {
  return typeof os.availableParallelism === "function" ? os.availableParallelism() : os.cpus().length;
}

/** Cut `count` images into UNet batches of `batchSize`, as `sampleImages` does: `[start, n]` each. */
function chunksOf(count: number, batchSize: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < count; i += batchSize) out.push([i, Math.min(batchSize, count - i)]);
  return out;
}

/**
 * The generator state at the start of each batch, and after the last: the sampler runs over each
 * batch with a zero denoiser, drawing what the real run draws. Leaves no tensors behind.
 */
async function batchRngStates(
  seed: number,
  sizes: number[],
  sampler: SamplerName,
  steps: number,
  cfg: number,
  image: [number, number, number],
): Promise<RngState[]> {
  const rng = new Rng(seed);
  const states: RngState[] = [];
  const cond = tf.zeros([1, 1, 1]);
  try {
    for (const n of sizes) {
      states.push(rng.getState());
      const out = await samplerByName(sampler, { steps }).sample({
        denoiser: (x) => tf.zerosLike(x),
        shape: [n, ...image],
        cond,
        uncond: cond,
        guidanceScale: cfg,
        rng,
      });
      out.dispose();
    }
  } finally {
    cond.dispose();
  }
  states.push(rng.getState());
  return states;
}

/** A network entry → what a worker needs to rebuild it (host copies of the weights). */
function toWire(e: StackEntry): WireNetwork {
  const weights = e.network.storedParameters().map(([, p]) => ({ shape: [...p.value.shape], data: p.value.dataSync() as Float32Array }));
  return {
    info: e.network.info,
    dims: e.network.dims,
    weights,
    multiplier: e.multiplier,
    ...(e.timesteps ? { timesteps: [e.timesteps[0], e.timesteps[1]] as [number, number] } : {}),
  };
}

const sameState = (a: RngState, b: RngState): boolean => JSON.stringify(a) === JSON.stringify(b);

/** N worker threads, each holding the tiny model, that sample the batches of a call in parallel. */
export class TinySamplerPool {
  private failure: Error | undefined;
  private closed = false;
  private netsId = 0;
  private busy = false;
  /** Which workers are still running (a worker that exited, for whatever reason, is not waited for again). */
  private readonly alive: boolean[];

  private constructor(
    private readonly workers: Worker[],
    /** Model folder every worker loaded. */
    readonly modelDir: string,
    private readonly image: [number, number, number],
  ) {
    this.alive = workers.map(() => true);
    for (const [k, w] of workers.entries()) {
      w.on("exit", (code) => {
        this.alive[k] = false;
        if (!this.closed && !this.failure)
          this.failure = new Error(
            `tiny sampler pool: worker ${k + 1} of ${workers.length} stopped (exit code ${code}); the pool is closed — start a new one, or sample in one thread with sampleTiny`,
          );
      });
      w.on("error", (e) => {
        if (!this.failure) this.failure = new Error(`tiny sampler pool: worker ${k + 1} of ${workers.length} failed: ${e.message}`);
      });
    }
  }

  /**
   * Start `workers` threads (default one per core), each loading the tiny model from `modelDir`
   * (default the embedded one) on the main thread's backend (wasm or cpu). Resolves when all are ready.
   */
  static async start(opts: { modelDir?: string; workers?: number } = {}): Promise<TinySamplerPool> {
    const modelDir = opts.modelDir ?? TINY_MODEL_DIR;
    const n = opts.workers ?? defaultSamplerWorkers();
    if (!Number.isSafeInteger(n) || n < 1) throw new Error(`TinySamplerPool.start: workers must be a positive integer, got ${n}`);
    const config = readTinyConfig(modelDir); // a bad folder fails here, with its name, not in a worker
    const backend = tf.getBackend();
    if (backend !== "wasm" && backend !== "cpu")
      throw new Error(
        `TinySamplerPool: the main thread uses the ${backend} backend; the pool's workers run wasm or cpu (call useBackend("wasm") first, or sample with sampleTiny)`,
      );
    const file = __filename;
    const bootstrap = file.endsWith(".ts")
      ? `require("ts-node").register({ transpileOnly: true }); require(${JSON.stringify(file)});`
      : `require(${JSON.stringify(file)});`;
    const init: WorkerInit = { kind: "tiny-sampler", modelDir, backend };
    const workers = Array.from({ length: n }, () => new Worker(bootstrap, { eval: true, workerData: init }));
    try {
      await Promise.all(workers.map((w, k) => reply(w, k, n)));
    } catch (e) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw e;
    }
    return new TinySamplerPool(workers, modelDir, [config.imageSize, config.imageSize, config.unet.in_channels]);
  }

  /** Number of worker threads. */
  get size(): number {
    return this.workers.length;
  }

  /**
   * One image per prompt, as `sampleTiny(loadTinyModel(modelDir), prompts, opts)` with
   * `opts.networks` attached would make them — bit-identical on the same backend — but with the
   * UNet batches spread over the workers. RGB bytes `[size, size, 3]` per prompt.
   */
  async sample(prompts: string[], opts: PoolSampleOptions): Promise<Uint8Array[]> {
    const pixels = await this.samplePixels(prompts, opts);
    return fromModelPixels(pixels, prompts.length);
  }

  /** As {@link sample}, but the raw model pixels (NHWC floats in about [−1, 1]). */
  async samplePixels(prompts: string[], opts: PoolSampleOptions): Promise<Float32Array> {
    if (this.closed) throw new Error("tiny sampler pool: already closed; start a new one");
    if (this.failure) throw this.failure;
    if (this.busy) throw new Error("tiny sampler pool: one call at a time; await the previous sample() first");
    const [h, w, c] = this.image;
    const per = h * w * c;
    const out = new Float32Array(prompts.length * per);
    if (prompts.length === 0) return out;
    const sampler = opts.sampler ?? "Euler a";
    const steps = opts.steps ?? 24;
    const cfg = opts.guidanceScale ?? 4;
    const batchSize = opts.batchSize ?? 16;
    if (!Number.isSafeInteger(batchSize) || batchSize < 1)
      throw new Error(`tiny sampler pool: batchSize must be a positive integer, got ${batchSize}`);
    this.busy = true;
    try {
      const chunks = chunksOf(prompts.length, batchSize);
      const states = await batchRngStates(
        opts.seed,
        chunks.map(([, n]) => n),
        sampler,
        steps,
        cfg,
        this.image,
      );
      const nets = (opts.networks ?? []).map(toWire);
      const netsId = ++this.netsId;
      let next = 0;
      const runWorker = async (k: number): Promise<void> => {
        const worker = this.workers[k]!;
        while (next < chunks.length && !this.failure) {
          if (!this.alive[k]) throw new Error(`tiny sampler pool: worker ${k + 1} of ${this.workers.length} is not running`);
          const j = next++;
          const [start, n] = chunks[j]!;
          const answer = reply(worker, k, this.workers.length);
          worker.postMessage({
            kind: "job",
            prompts: prompts.slice(start, start + n),
            rng: states[j]!,
            sampler,
            steps,
            cfg,
            netsId,
            nets,
          } satisfies ToWorker);
          const r = await answer;
          if (r.kind !== "done") throw new Error(`tiny sampler pool: worker ${k + 1} answered "${r.kind}" to a sampling job`);
          if (!sameState(r.rng, states[j + 1]!))
            throw new Error(
              `tiny sampler pool: the sampler "${sampler}" drew a different amount of noise than predicted for images ${start}…${start + n - 1}; its noise depends on the images, so sample it in one thread with sampleTiny`,
            );
          out.set(r.pixels, start * per);
        }
      };
      await Promise.all(this.workers.map((_, k) => runWorker(k)));
      if (this.failure) throw this.failure;
      return out;
    } catch (e) {
      if (this.failure) throw this.failure;
      throw e;
    } finally {
      this.busy = false;
    }
  }

  /** Ask every worker to free its model and stop; resolves when all threads have exited. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      this.workers.map((w, k) =>
        !this.alive[k]
          ? undefined
          : new Promise<void>((resolve) => {
              // A stuck worker still goes: terminated after 10 s.
              const timer = setTimeout(() => void w.terminate().then(() => resolve()), 10_000);
              w.once("exit", () => {
                clearTimeout(timer);
                resolve();
              });
              w.postMessage({ kind: "close" } satisfies ToWorker);
            }),
      ),
    );
  }
}

/** The next message from worker `k`; rejects with a clear message on an error, a crash or an exit. */
function reply(w: Worker, k: number, n: number): Promise<FromWorker> {
  return new Promise((resolve, reject) => {
    const who = `tiny sampler pool: worker ${k + 1} of ${n}`;
    const onMsg = (m: FromWorker): void => {
      cleanup();
      if (m.kind === "error") reject(new Error(`${who}: ${m.message}`));
      else resolve(m);
    };
    const onErr = (e: Error): void => {
      cleanup();
      reject(new Error(`${who} failed: ${e.message}`));
    };
    const onExit = (code: number): void => {
      cleanup();
      reject(
        new Error(
          `${who} stopped (exit code ${code}) before answering; the pool is closed — start a new one, or sample in one thread with sampleTiny`,
        ),
      );
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

/** Worker side: load the model, then answer jobs until "close". */
async function workerMain(init: WorkerInit): Promise<void> {
  const port = parentPort!;
  let base: BaseModel | undefined;
  let nets: { id: number; entries: StackEntry[] } | undefined;
  const dropNets = (): void => {
    for (const e of nets?.entries ?? []) e.network.dispose();
    nets = undefined;
  };
  try {
    await useBackend(init.backend, { quiet: true });
    base = loadTinyModel(init.modelDir);
  } catch (e) {
    port.postMessage({ kind: "error", message: e instanceof Error ? e.message : String(e) } satisfies FromWorker);
    return;
  }
  const model = base;
  port.postMessage({ kind: "ready" } satisfies FromWorker);
  port.on("message", async (m: ToWorker) => {
    if (m.kind === "close") {
      dropNets();
      model.dispose();
      port.close();
      return;
    }
    try {
      if (nets?.id !== m.netsId) {
        dropNets();
        nets = { id: m.netsId, entries: m.nets.map(fromWire) };
      }
      const attachment = nets.entries.length ? attachHypernetworks(model.unet, nets.entries) : undefined;
      const rng = Rng.fromState(m.rng);
      try {
        const { pixels } = await sampleImages(model, {
          prompts: m.prompts,
          sampler: m.sampler,
          steps: m.steps,
          cfgScale: m.cfg,
          rng,
          batchSize: m.prompts.length,
        });
        port.postMessage({ kind: "done", pixels, rng: rng.getState() } satisfies FromWorker, [pixels.buffer]);
      } finally {
        attachment?.detach();
      }
    } catch (e) {
      port.postMessage({ kind: "error", message: e instanceof Error ? e.message : String(e) } satisfies FromWorker);
    }
  });
}

/** Rebuild a network from its wire form (frozen weights: the worker only samples). */
function fromWire(n: WireNetwork): StackEntry {
  const net = emptyHypernetwork(n.info, n.dims, false);
  const params = net.storedParameters();
  if (params.length !== n.weights.length) {
    net.dispose();
    throw new Error(`network "${n.info.name}": ${n.weights.length} weights sent, its structure has ${params.length}`);
  }
  params.forEach(([, p], i) => {
    const t = tf.tensor(n.weights[i]!.data, n.weights[i]!.shape, "float32");
    p.value.assign(t);
    t.dispose();
  });
  return { network: net, multiplier: n.multiplier, ...(n.timesteps ? { timesteps: n.timesteps } : {}) };
}

if (!isMainThread && (workerData as WorkerInit | undefined)?.kind === "tiny-sampler") void workerMain(workerData as WorkerInit);
