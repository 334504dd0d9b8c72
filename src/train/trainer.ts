/**
 * Training a hypernetwork on a frozen base model (spec §4.6–§4.10), with A1111's options and
 * files, and with the faults users reported fixed (spec §6).
 *
 * One optimizer step, from `s` steps done to `s + 1`:
 *
 *     lr   = schedule(s)                                   (§4.3; training ends when it runs out)
 *     for each of the `accum` micro-batches of this step:
 *         x₀ = the batch's images in UNet space (latents, cached by the dataset)
 *         c  = text context of the batch's prompts (cached per distinct prompt when prompts are fixed)
 *         t ~ U{0 … 999},  ε ~ N(0, I)
 *         x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
 *         L  = mean (UNet(x_t, t, c) − target)²            target = ε (or v for v-models)
 *         g += ∂(L / accum)/∂θ                             θ = the hypernetwork only
 *     clip g (by value or by global norm — on the true gradients, no AMP scale)
 *     θ ← AdamW(θ, g, lr)
 *
 * Reproducibility: every random number of step `s` (batch order of its epoch, prompts, t, ε, dropout
 * masks) is drawn from generators seeded by (seed, s), never from a stream that runs through the
 * whole training. A run resumed from any checkpoint therefore sees exactly the randomness the
 * uninterrupted run saw, and — with the weights and AdamW moments restored from the checkpoint —
 * reproduces its loss curve step for step. Previews draw from their own fixed seed and cannot
 * shift the training noise.
 *
 * Files, in the run folder `logDir` (A1111: `textual_inversion/<date>/<name>`). `<name>` is the
 * network's name made a plain file name (`safeFileStem`: a name read from a file never chooses the
 * folder; a warning says when it was changed), and every path is checked to stay inside `logDir`:
 *   hypernetworks/<name>-<step>.pt                 the network after exactly <step> steps
 *   hypernetworks/<name>-<step>.pt.optim           its AdamW state (keyed to that .pt's hash)
 *   hypernetworks/<name>-<step>.pt.state.json      seed, step, schedule position, loss average
 *   images/<name>-<step>.png                       previews
 *   hypernetwork_loss.csv                          step, epoch, epoch_step, loss, learn_rate
 *   settings-YYYY-MM-DD-HH-MM-SS.json              everything the run was started with
 * Every file is written atomically. The state file is written last, so a checkpoint whose state
 * file exists is complete.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { TrainingDataset, type DatasetItem, type EncodeFn, type LatentSampling } from "../data/dataset";
import { Rng, randint, randn } from "../diffusion/random";
import { type NoiseSchedule, qSample, sd15Schedule, vTarget } from "../diffusion/schedule";
import { type Attachment, attachHypernetworks } from "../hypernet/attach";
import { fromNetworkAsync, readHypernetworkFile, saveHypernetworkAsync, toNetwork, type HypernetworkFile } from "../hypernet/file";
import type { Hypernetwork } from "../hypernet/network";
import { readOptimizerFile, writeOptimizerFile } from "../hypernet/optim-file";
import { removeStaleTempFiles, writeFileAtomic } from "../io/atomic";
import { insideFolder, printable, safeFileStem } from "../io/safe-name";
import { type Param, loadStateDict } from "../nn/module";
import type { BaseModel } from "../pipeline/base-model";
import type { UNetModel } from "../unet/unet";
import { globalNorm } from "./grad-norm";
import { AdamW } from "./adamw";
import { Schedule } from "./lr-schedule";
import { previewImages } from "./preview";
import { checkpointFile, previewFile } from "./run-files";

// ---- options and payloads ------------------------------------------------------------------------

/** What the model predicts: the noise ε (SD 1.x, SD 2-base) or v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2-768-v). */
export type Prediction = "epsilon" | "v";

/** Gradient clipping mode (A1111's "Gradient Clipping" dropdown). */
export type ClipMode = "disabled" | "value" | "norm";

/**
 * Gradient clipping as PyTorch does it (A1111 calls these two): `"value"` clamps every element to
 * [−c, c] (`clip_grad_value_`); `"norm"` scales all gradients by `min(1, c / (‖g‖₂ + 1e-6))`, with
 * ‖g‖₂ the global norm over every tensor (`clip_grad_norm_`). Returns new tensors; the caller
 * disposes the inputs. `norm` may be passed when already known.
 */
export function clipGradients(grads: readonly tf.Tensor[], mode: Exclude<ClipMode, "disabled">, c: number, norm?: number): tf.Tensor[] {
  if (mode === "value") return grads.map((g) => tf.clipByValue(g, -c, c));
  const n = norm ?? tf.tidy(() => globalNorm(grads).dataSync()[0]!);
  const coef = Math.min(1, c / (n + 1e-6));
  return grads.map((g) => tf.mul(g, coef));
}

/** Options of `train`. Names follow A1111's Train tab; defaults are A1111's unless noted. */
export interface TrainOptions {
  // -- data (spec §4.5) --
  /** Folder of training images with optional `<stem>.txt` captions. */
  dataDir: string;
  /** Prompt template: stock name, file path or lines (default "style_filewords"). */
  template?: string | readonly string[];
  /** Resize target (default: the base model's image size). */
  width?: number;
  height?: number;
  /** Keep native sizes, batching within equal-size buckets (default false). */
  doNotResize?: boolean;
  /** Shuffle caption tags on every fetch (default false). */
  shuffleTags?: boolean;
  /** Leading tags never shuffled or dropped (default 0). */
  keepTokens?: number;
  /** Probability of dropping each tag on every fetch (default 0). */
  tagDropout?: number;
  /** Times each image appears per epoch (default 1). */
  repeats?: number;
  /** VAE latent sampling: "once" (default), "deterministic" or "random". */
  latentSampling?: LatentSampling;
  /** Use the PNG alpha channel as a loss weight (default false). */
  alphaWeights?: boolean;
  /** Most pixels a dataset image may claim before decoding (default 2^27; `false`: no limit). See `DatasetOptions`. */
  limitInputPixels?: number | false;
  /** Longest caption used, in characters (default 4,096); longer ones are cut with a note. See `DatasetOptions`. */
  maxCaptionChars?: number;

  // -- the run (spec §4.2–§4.4, §4.7) --
  /** Max steps: the absolute number of optimizer steps to reach (a network at step 500 trained to 2000 does 1500 more). */
  maxSteps: number;
  /** Learning-rate schedule string or number (default "0.00001", see lr-schedule.ts). */
  learningRate?: string | number;
  /** Images per micro-batch (default 1; clamped to the dataset size). */
  batchSize?: number;
  /** Micro-batches per optimizer step (default 1; clamped to ⌊dataset / batch⌋). */
  gradientAccumulation?: number;
  /** Gradient clipping (default "disabled"). */
  gradientClipping?: ClipMode;
  /** Clip value or max norm, a schedule string like the learning rate (default "0.1"). */
  clipValue?: string | number;
  /** Prediction target (default "epsilon"). */
  prediction?: Prediction;
  /** Seed of all training randomness (default 0). The same seed gives the same run. */
  seed?: number;
  /** AdamW weight decay (default 0.01, PyTorch's). */
  weightDecay?: number;
  /**
   * Timesteps the loss is sampled from, `[min, max)` out of the schedule's 1000 (default `[0, 1000]`,
   * uniform over all of them, as A1111 does). Not an A1111 option; kohya's trainers call it
   * `--min_timestep`/`--max_timestep`. A narrower low range trains the network only on the
   * low-noise steps that draw colour and texture, and keeps it from learning changes at high noise,
   * where the layout of the picture is decided.
   */
  timesteps?: readonly [number, number];

  // -- files (spec §4.8–§4.9) --
  /** Run folder (default `textual_inversion/<YYYY-MM-DD>/<name>`, as A1111). */
  logDir?: string;
  /** Checkpoint every N steps (default 500; 0 = only the final save). */
  saveEvery?: number;
  /** Write `.optim` beside each checkpoint (default true; A1111's default is off). */
  saveOptimizer?: boolean;
  /** Append a CSV row every N steps (default 1; A1111: 500; 0 = no CSV). */
  csvEvery?: number;
  /** Write the settings JSON at start (default true). */
  saveSettings?: boolean;
  /** Also save the final network here (e.g. `models/hypernetworks/<name>.pt`). */
  finalFile?: string;
  /** Allow `finalFile` to replace an existing file (default false: the user's files are never replaced unasked). */
  overwrite?: boolean;
  /**
   * Resume from this checkpoint `.pt` (one written by this trainer, or an A1111 file): the network
   * passed in must have been loaded from it (`loadHypernetwork(file, { trainable: true })`, or use
   * `resumeTraining`). Its `.optim` restores AdamW; its `.state.json` restores the seed check and
   * the loss average. Step counting and the schedule continue from the file's step.
   */
  resumeFrom?: string;

  // -- previews (spec §4.10) --
  /** Make a preview every N steps (default 0 = never). */
  previewEvery?: number;
  /** How previews are made. */
  preview?: PreviewOptions;

  // -- safety --
  /**
   * Stop when a step's loss exceeds this many times the running average (default 20; 0 = off).
   * Non-finite losses or gradients always stop training.
   */
  blowUpFactor?: number;
  /** Steps before the blow-up check starts (default 20), so the average means something. */
  blowUpWarmup?: number;

  // -- reporting --
  /** Called after every optimizer step. */
  onStep?: (e: StepEvent) => void;
  /** Called after every checkpoint (and the final save). */
  onCheckpoint?: (e: CheckpointEvent) => void;
  /** Called with every preview. */
  onPreview?: (e: PreviewEvent) => void | Promise<void>;
  /** Messages (schedule changes, warnings, the stop reason). Default: console.log. */
  onLog?: (message: string) => void;
  /** Print a progress line with step/s and ETA (default: when stderr is a terminal). */
  progress?: boolean;
  /** Stop after the current step on Ctrl-C (SIGINT) and save (default true). */
  handleSigint?: boolean;
  /** For tests: replace the loss of this step (1-based) by NaN, to exercise the safety stop. */
  debugPoisonStep?: number;
}

/** Preview settings (A1111 defaults without "read parameters from txt2img"). */
export interface PreviewOptions {
  /** Prompt (default: the first prompt of the current batch). */
  prompt?: string;
  negativePrompt?: string;
  /** Sampler name: "Euler a" (default), "Euler", "DDIM". */
  sampler?: string;
  /** Sampling steps (default 20). */
  steps?: number;
  /** CFG scale (default 7). */
  cfgScale?: number;
  /** Fixed seed (default 0), so previews of successive steps are comparable. */
  seed?: number;
  /** Size in pixels (default: the training width/height). */
  width?: number;
  height?: number;
  /** Write `images/<name>-<step>.png` (default true). */
  save?: boolean;
}

/** Payload of `onStep`. */
export interface StepEvent {
  /** Optimizer steps done (1-based; the step just finished). */
  step: number;
  /** Max steps of the run (training may end earlier if the schedule ends). */
  maxSteps: number;
  /** The step loss: mean of the micro-batch losses. */
  loss: number;
  /** Running average of the loss (exponential, over ~20 steps). */
  lossAverage: number;
  /** Learning rate used for this step. */
  lr: number;
  /** 0-based epoch and step within it (A1111's CSV columns). */
  epoch: number;
  epochStep: number;
  stepsPerEpoch: number;
  /** Global L2 norm of the gradient before clipping. */
  gradNorm: number;
  /** Steps per second (smoothed) and estimated seconds left. */
  stepsPerSecond: number;
  etaSeconds: number;
  /** The first prompt of this step's batch. */
  prompt: string;
}

/** Payload of `onCheckpoint`. */
export interface CheckpointEvent {
  step: number;
  /** The `.pt` written; `.optim` and `.state.json` sit beside it. */
  file: string;
  optimFile?: string;
  /** True for the save at the end of the run. */
  final: boolean;
}

/** An RGB image as bytes. */
export interface RgbImage {
  width: number;
  height: number;
  /** HWC, 3 channels, 0–255. */
  data: Uint8Array;
}

/** Payload of `onPreview`. */
export interface PreviewEvent {
  step: number;
  prompts: string[];
  /** PNG files' bytes, one per image (display inline with tslab's `display.png`). */
  png: Buffer[];
  /** The same images as raw RGB. */
  images: RgbImage[];
  /** Where the PNG was written, if saved. */
  file?: string;
}

/** Why training ended. */
export type StopReason = "max-steps" | "schedule-end" | "stopped" | "unsafe" | "already-trained";

/** What a finished run reports. */
export interface TrainResult {
  reason: StopReason;
  /** A sentence for the user: what happened and, for unsafe stops, what to try. */
  message: string;
  /** Step the run started at and ended at. */
  startStep: number;
  step: number;
  /** Loss of every step done in this run, in order (index 0 = step startStep + 1). */
  losses: number[];
  /** The newest complete checkpoint (after an unsafe stop: the last good one, which the network was rolled back to). */
  lastCheckpoint?: string;
  /** `finalFile`, when it was written. */
  finalFile?: string;
  logDir: string;
  warnings: string[];
}

/** A running training job. */
export interface TrainingRun {
  /** Resolves when training ends (normally, on stop, or on an unsafe loss); rejects on an error, after saving. */
  done: Promise<TrainResult>;
  /** Ask training to end after the current step and save. */
  stop(): void;
}

/** What `<name>-<step>.pt.state.json` holds. */
export interface CheckpointState {
  format: "hypernet-lab/train-state";
  version: 1;
  name: string;
  step: number;
  seed: number;
  learningRate: string;
  /** Index into the schedule parsed at this step (0 = the entry in force now). */
  lrEntry: number;
  lr: number;
  clipValue: string;
  gradientClipping: ClipMode;
  batchSize: number;
  gradientAccumulation: number;
  stepsPerEpoch: number;
  datasetSize: number;
  lossAverage: number | null;
  stepsInAverage: number;
  /** Per-step randomness is derived from (seed, step), so no generator stream state is needed. */
  rng: "derived-from-seed-and-step";
  savedAt: string;
}

// ---- the loss -------------------------------------------------------------------------------------

/** One micro-batch, in UNet space. */
export interface LossBatch {
  x0: tf.Tensor4D;
  noise: tf.Tensor4D;
  t: number[];
  cond: tf.Tensor3D;
  /** Per-pixel loss weights `[B, H, W, 1]`, mean 1 (alpha weights). */
  weight?: tf.Tensor4D;
}

/**
 * The diffusion training loss (spec §4.7): x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, prediction = UNet(x_t, t, c),
 * loss = mean over B, H, W, C of w·(prediction − target)², target ε or v. Returns a scalar the caller
 * owns; differentiable through whatever attention processors (hypernetworks) the UNet has.
 */
export function diffusionLoss(unet: UNetModel, batch: LossBatch, prediction: Prediction = "epsilon", schedule: NoiseSchedule = sd15Schedule()): tf.Scalar {
  return tf.tidy(() => {
    const xt = qSample(batch.x0, batch.noise, batch.t, schedule) as tf.Tensor4D;
    const out = unet.forward(xt, batch.t, batch.cond);
    const target = prediction === "v" ? vTarget(batch.x0, batch.noise, batch.t, schedule) : batch.noise;
    let se = tf.squaredDifference(out, target);
    if (batch.weight) se = tf.mul(se, batch.weight);
    return tf.mean(se) as tf.Scalar;
  });
}

/** Pad text contexts of different lengths to the longest by repeating the last vector (A1111 `stack_conds`), then stack. */
export function stackConds(conds: readonly tf.Tensor3D[]): tf.Tensor3D {
  return tf.tidy(() => {
    const T = Math.max(...conds.map((c) => c.shape[1]));
    const padded = conds.map((c) => {
      const n = c.shape[1];
      if (n === T) return c;
      const last = tf.slice(c, [0, n - 1, 0], [-1, 1, -1]);
      return tf.concat([c, tf.tile(last, [1, T - n, 1])], 1);
    });
    return tf.concat(padded, 0) as tf.Tensor3D;
  });
}

// ---- seeds ------------------------------------------------------------------------------------------

const PURPOSE = { load: 1, epoch: 2, data: 3, noise: 4, dropout: 5 } as const;

/** A 32-bit seed from (seed, step, micro-batch, purpose): FNV-1a over the words, then murmur3's finaliser. */
export function deriveSeed(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    for (const w of [p >>> 0, Math.floor(p / 4294967296) >>> 0]) {
      h = Math.imul(h ^ w, 0x01000193);
    }
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A `{ next() }` uniform source for the dataset whose generator the trainer re-seeds per use. */
class SwitchableRng {
  gen = new Rng(0);
  reseed(seed: number): void {
    this.gen = new Rng(seed);
  }
  next(): number {
    return this.gen.nextFloat();
  }
}

// ---- helpers ----------------------------------------------------------------------------------------

function today(d = new Date()): string {
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

function stamp(d = new Date()): string {
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${today(d)}-${p(d.getHours())}-${p(d.getMinutes())}-${p(d.getSeconds())}`;
}

function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
}

/** Validate a `timesteps` range against a schedule of `n` steps; the default is all of them. */
function checkTimesteps(range: readonly [number, number] | undefined, n: number): [number, number] {
  if (range === undefined) return [0, n];
  const [lo, hi] = range;
  if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || lo < 0 || hi > n || lo >= hi) {
    throw new Error(`train: timesteps must be integers [min, max) with 0 ≤ min < max ≤ ${n}, got ${JSON.stringify(range)}`);
  }
  return [lo, hi];
}

function positiveInt(v: number | undefined, fallback: number, what: string, min = 1): number {
  const x = v ?? fallback;
  if (!Number.isSafeInteger(x) || x < min) throw new Error(`train: ${what} must be an integer ≥ ${min}, got ${x}`);
  return x;
}

/** Copy a file's weights into a live network of the same structure. */
export function assignWeights(net: Hypernetwork, hf: HypernetworkFile, where: string): void {
  for (const [dim, pair] of hf.weights) {
    const mods = net.pair(dim);
    if (!mods) throw new Error(`${where}: has dim ${dim}, which the network does not`);
    pair.forEach((sd, j) => {
      loadStateDict(mods[j]!, { keys: () => sd.keys(), get: (k) => sd.get(k)!, shapeOf: (k) => sd.get(k)?.shape }, { where: `${where}: dim ${dim} ${j === 0 ? "k" : "v"}` });
    });
  }
}

/**
 * The checkpoint file of `name` at `step` in a run folder: `<logDir>/hypernetworks/<stem>-<step>.pt`
 * with `stem = safeFileStem(name).stem`, checked to lie inside that folder (a name or step read
 * from a file cannot move it elsewhere).
 */
export function checkpointPath(logDir: string, name: string, step: number): string {
  return checkpointFile(logDir, name, step);
}

/** Complete checkpoints (state file present) in a run folder, oldest first. */
export function listCheckpoints(logDir: string): Array<{ step: number; file: string }> {
  const dir = path.join(logDir, "hypernetworks");
  if (!fs.existsSync(dir)) return [];
  const out: Array<{ step: number; file: string }> = [];
  for (const f of fs.readdirSync(dir)) {
    const m = /-(\d+)\.pt$/.exec(f);
    if (m && fs.existsSync(path.join(dir, f + ".state.json"))) out.push({ step: Number(m[1]), file: path.join(dir, f) });
  }
  return out.sort((a, b) => a.step - b.step);
}

/** Largest `.state.json` read (they are about 600 bytes). */
const STATE_FILE_MAX_BYTES = 1 << 20;

/**
 * Read a checkpoint's `.state.json`, or undefined if there is none. A state file that cannot be
 * read, is not JSON, or lacks the fields resuming uses (`step`, `seed`, `lossAverage`,
 * `stepsInAverage`) throws an error naming it and saying what to do: the state only restores the
 * seed check and the loss average, so deleting it lets training resume from the `.pt` without them.
 */
export function readCheckpointState(ptFile: string): CheckpointState | undefined {
  const f = `${ptFile}.state.json`;
  if (!fs.existsSync(f)) return undefined;
  const fix = `delete it to resume from ${ptFile} without it (the weights and .optim are unaffected; the seed check and the running loss average start afresh)`;
  const fail = (what: string): Error => new Error(`${f}: ${what}; ${fix}`);
  let text: string;
  try {
    const st = fs.statSync(f);
    if (!st.isFile()) throw fail("not a regular file");
    if (st.size > STATE_FILE_MAX_BYTES) throw fail(`${st.size} bytes, too large for a training state file`);
    text = fs.readFileSync(f, "utf8");
  } catch (err) {
    if ((err as Error).message.startsWith(`${f}: `)) throw err;
    throw fail(`cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let s: unknown;
  try {
    s = JSON.parse(text);
  } catch (err) {
    throw fail(`not valid JSON (${(err as Error).message}) — a damaged training state file`);
  }
  const o = (typeof s === "object" && s !== null && !Array.isArray(s) ? s : {}) as Record<string, unknown>;
  if (o.format !== "hypernet-lab/train-state") throw fail(`not a training state file (format ${JSON.stringify(o.format) ?? "missing"})`);
  const wholeNumber = (k: string): boolean => Number.isSafeInteger(o[k]) && (o[k] as number) >= 0;
  for (const k of ["step", "seed", "stepsInAverage"]) if (!wholeNumber(k)) throw fail(`"${k}" is ${JSON.stringify(o[k]) ?? "missing"}, not a whole number ≥ 0`);
  if (o.lossAverage !== null && !Number.isFinite(o.lossAverage)) throw fail(`"lossAverage" is ${JSON.stringify(o.lossAverage) ?? "missing"}, not a number or null`);
  return o as unknown as CheckpointState;
}

/** True when every weight in `params` is finite (one asynchronous read-back, so any backend works). */
async function weightsFinite(params: readonly Param[]): Promise<boolean> {
  if (params.length === 0) return true;
  const ok = tf.tidy(() => params.map((p) => tf.all(tf.isFinite(p.value.flatten()))).reduce((a, b) => tf.logicalAnd(a, b)));
  const v = (await ok.data())[0];
  ok.dispose();
  return v === 1;
}

// ---- the trainer -----------------------------------------------------------------------------------

/**
 * Train `net` on `base` (frozen) with the images in `opts.dataDir`; see the module comment.
 * Returns at once with a handle: `await run.done` for the result, `run.stop()` to end early.
 *
 * @example
 *   const run = train(base, net, { dataDir: "data/watery", maxSteps: 2000, learningRate: "5e-5:100, 5e-6:-1",
 *                                  saveEvery: 250, previewEvery: 250, onStep: (e) => chart.push(e.step, e.loss) });
 *   const result = await run.done;   // result.reason, result.message, result.lastCheckpoint
 */
export function train(base: BaseModel, net: Hypernetwork, opts: TrainOptions): TrainingRun {
  const control = { stop: false };
  const done = runTraining(base, net, opts, control);
  return { done, stop: () => void (control.stop = true) };
}

/** Load the network from a checkpoint and continue training it (`train` with `resumeFrom`). */
export function resumeTraining(base: BaseModel, checkpoint: string, opts: Omit<TrainOptions, "resumeFrom">): TrainingRun & { network: Hypernetwork } {
  const network = toNetwork(readHypernetworkFile(checkpoint), { trainable: true, where: checkpoint });
  return { ...train(base, network, { ...opts, resumeFrom: checkpoint }), network };
}

async function runTraining(base: BaseModel, net: Hypernetwork, opts: TrainOptions, control: { stop: boolean }): Promise<TrainResult> {
  const log = opts.onLog ?? ((m: string) => console.log(m));
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    log(`warning: ${m}`);
  };
  const name = net.name;
  // Files are named after a plain-file-name form of the network's name (it comes from a file and
  // must not choose the folder); messages show the name with control characters escaped.
  const shownName = printable(name);
  const safe = safeFileStem(name);
  const stem = safe.stem;
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`train: seed must be a non-negative integer, got ${seed}`);
  const maxSteps = positiveInt(opts.maxSteps, NaN, "maxSteps");
  const saveEvery = positiveInt(opts.saveEvery, 500, "saveEvery", 0);
  const csvEvery = positiveInt(opts.csvEvery, 1, "csvEvery", 0);
  const previewEvery = positiveInt(opts.previewEvery, 0, "previewEvery", 0);
  const prediction = opts.prediction ?? "epsilon";
  const clipMode = opts.gradientClipping ?? "disabled";
  const [tMin, tMax] = checkTimesteps(opts.timesteps, sd15Schedule().numTimesteps);
  if (!["disabled", "value", "norm"].includes(clipMode)) throw new Error(`train: gradientClipping must be "disabled", "value" or "norm", got ${JSON.stringify(clipMode)}`);
  const logDir = opts.logDir ?? insideFolder("textual_inversion", path.join("textual_inversion", today(), stem), "the run folder");
  if (safe.changed) warn(`the network's name "${shownName}" is not a plain file name (${safe.problems.join("; ")}); its files are named "${stem}-<step>.pt" instead`);
  const startStep = net.info.step;
  const lrText = String(opts.learningRate ?? "0.00001");
  const clipText = String(opts.clipValue ?? "0.1");

  // Frozen base model: only the hypernetwork may be trained.
  const frozenLeak = [...base.unet.trainableVariables(), ...base.textEncoder.trainableVariables(), ...(base.vae?.trainableVariables() ?? [])];
  if (frozenLeak.length) throw new Error(`train: the base model has ${frozenLeak.length} trainable variables (e.g. ${frozenLeak[0]!.name}); build it with trainable: false (the default) so only the hypernetwork is trained`);
  const params = net.namedParameters().map(([, p]) => p);
  if (params.some((p) => !p.value.trainable)) throw new Error(`train: ${shownName} was loaded for inference; load it with loadHypernetwork(file, { trainable: true })`);

  const result = (reason: StopReason, message: string, extra: Partial<TrainResult> = {}): TrainResult => ({ reason, message, startStep, step: net.info.step, losses: [], logDir, warnings, ...extra });
  if (startStep >= maxSteps) {
    const m = `${shownName} has already been trained to step ${startStep}, beyond Max steps ${maxSteps}; raise maxSteps to train further`;
    log(m);
    return result("already-trained", m);
  }
  const lrSchedule = new Schedule(lrText, maxSteps, startStep, "learning rate");
  lrSchedule.warnings.forEach(warn);
  const clipSchedule = clipMode === "disabled" ? undefined : new Schedule(clipText, maxSteps, startStep, "gradient clipping");
  clipSchedule?.warnings.forEach(warn);

  // Resume: the network must be the checkpoint's; bring back AdamW and the loss average.
  let resumeState: CheckpointState | undefined;
  let optimState: ReturnType<typeof readOptimizerFile> | undefined;
  if (opts.resumeFrom) {
    const hf = readHypernetworkFile(opts.resumeFrom);
    if (hf.info.step !== startStep) throw new Error(`train: resumeFrom ${opts.resumeFrom} is at step ${hf.info.step} but the network passed in is at step ${startStep}; load the network from that file (resumeTraining does this)`);
    resumeState = readCheckpointState(opts.resumeFrom);
    if (resumeState && resumeState.seed !== seed) warn(`${opts.resumeFrom} was trained with seed ${resumeState.seed}, this run uses ${seed}: the loss curve will not continue the original one`);
    try {
      optimState = readOptimizerFile(opts.resumeFrom);
    } catch (err) {
      // An unreadable side file is treated like a missing one: the weights are what matters.
      optimState = { state: undefined, reason: `${opts.resumeFrom}.optim cannot be used: ${(err as Error).message}` };
    }
    if ("reason" in optimState) warn(`${printable(optimState.reason)}; AdamW starts fresh, which can make a resumed run jump`);
  }
  // A network that is already non-finite cannot be trained, and must not become the checkpoint a
  // NaN stop rolls back to.
  if (!(await weightsFinite(params))) {
    throw new Error(
      opts.resumeFrom
        ? `train: ${opts.resumeFrom} holds NaN or infinite weights, so training cannot continue from it; resume from an earlier checkpoint (listCheckpoints(logDir)) or start afresh`
        : `train: the network ${shownName} holds NaN or infinite weights; create or load one with finite weights`,
    );
  }

  // Dataset: images → UNet space once; all its randomness from our per-step seeds.
  const dsRng = new SwitchableRng();
  dsRng.reseed(deriveSeed(seed, PURPOSE.load));
  const vae = base.vae;
  const encode: EncodeFn | undefined = vae
    ? (pixels, shape) => {
        const img = tf.tensor4d(pixels, [1, ...shape]);
        const dist = vae.encode(img);
        img.dispose();
        const s = vae.config.scaleFactor;
        const mean = tf.tidy(() => tf.mul(dist.mean, s).squeeze([0]));
        const std = tf.tidy(() => tf.mul(tf.exp(tf.mul(dist.logvar, 0.5)), s).squeeze([0]));
        const out = { shape: mean.shape as [number, number, number], mean: mean.dataSync() as Float32Array, std: std.dataSync() as Float32Array };
        for (const t of [dist.mean, dist.logvar, mean, std]) t.dispose();
        return out;
      }
    : undefined;
  const width = opts.width ?? base.imageSize;
  const height = opts.height ?? base.imageSize;
  const ds = await TrainingDataset.load(opts.dataDir, {
    name,
    rng: dsRng,
    width,
    height,
    doNotResize: opts.doNotResize,
    template: opts.template,
    shuffle: opts.shuffleTags,
    keepTokens: opts.keepTokens,
    dropout: opts.tagDropout,
    repeats: opts.repeats,
    encode,
    latentSampling: opts.latentSampling,
    alphaWeights: opts.alphaWeights,
    latentDownscale: base.downscale,
    limitInputPixels: opts.limitInputPixels,
    maxCaptionChars: opts.maxCaptionChars,
  });
  for (const s of ds.skipped) log(`dataset: skipped ${s.file}: ${s.reason}`);
  for (const n of ds.notes) log(`dataset: ${n}`);
  let batchSize = positiveInt(opts.batchSize, 1, "batchSize");
  if (batchSize > ds.length) {
    warn(`batch size ${batchSize} is larger than the dataset (${ds.length}); using ${ds.length}`);
    batchSize = ds.length;
  }
  let accum = positiveInt(opts.gradientAccumulation, 1, "gradientAccumulation");
  const batchesPerEpoch = Math.floor(ds.length / batchSize);
  if (accum > batchesPerEpoch) {
    warn(`gradient accumulation ${accum} needs more batches than an epoch has (${batchesPerEpoch}); using ${batchesPerEpoch}`);
    accum = batchesPerEpoch;
  }
  const stepsPerEpoch = Math.floor(batchesPerEpoch / accum);
  const cacheText = !opts.shuffleTags && !(opts.tagDropout && opts.tagDropout > 0);

  // Output folder, settings, CSV (rows past the start step belong to an abandoned run and go).
  fs.mkdirSync(path.join(logDir, "hypernetworks"), { recursive: true });
  const stale = removeStaleTempFiles(path.join(logDir, "hypernetworks"));
  if (stale.length) log(`removed ${stale.length} temp file(s) left by an interrupted save`);
  const csvFile = path.join(logDir, "hypernetwork_loss.csv");
  if (csvEvery > 0) {
    if (fs.existsSync(csvFile)) {
      const lines = fs.readFileSync(csvFile, "utf8").split("\n").filter((l) => l.trim());
      const keep = lines.filter((l, i) => i === 0 || Number(l.split(",")[0]) <= startStep);
      if (keep.length !== lines.length) writeFileAtomic(csvFile, [Buffer.from(keep.join("\n") + "\n")], { overwrite: true });
    } else {
      fs.writeFileSync(csvFile, "step,epoch,epoch_step,loss,learn_rate\n");
    }
  }
  if (opts.saveSettings ?? true) {
    const settings = {
      datetime: new Date().toISOString(),
      model_name: base.name,
      model_hash: base.checkpointHash,
      num_of_dataset_images: ds.imageCount,
      dataset_size: ds.length,
      hypernetwork_name: name,
      layer_structure: net.info.layerStructure,
      activation_func: net.info.activation,
      weight_init: net.info.weightInit,
      add_layer_norm: net.info.layerNorm,
      use_dropout: net.info.useDropout,
      dropout_structure: net.info.dropoutStructure,
      initial_step: startStep,
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => typeof v !== "function")),
      batch_size_used: batchSize,
      gradient_accumulation_used: accum,
      steps_per_epoch: stepsPerEpoch,
    };
    writeFileAtomic(path.join(logDir, `settings-${stamp()}.json`), [Buffer.from(JSON.stringify(settings, null, 2))], { overwrite: true });
  }

  // Model: the network attached in training mode; AdamW over its parameters only.
  const attachment: Attachment = attachHypernetworks(base.unet, [{ network: net, multiplier: 1 }]);
  attachment.training = true;
  const optimizer = new AdamW(params, { lr: lrSchedule.at(startStep), weightDecay: opts.weightDecay });
  const textCache = new Map<string, tf.Tensor3D>();
  const schedule = sd15Schedule();
  const startSnapshot = await fromNetworkAsync(net);
  let lastCheckpoint = opts.resumeFrom;
  let lossAvg: number | null = resumeState?.lossAverage ?? null;
  let avgCount = resumeState?.stepsInAverage ?? 0;
  const losses: number[] = [];
  const onSigint = (): void => {
    control.stop = true;
    log("interrupt: stopping after the current step, then saving");
  };
  if (opts.handleSigint ?? true) process.on("SIGINT", onSigint);
  const showProgress = opts.progress ?? Boolean(process.stderr.isTTY);
  let lastProgress = 0;

  try {
    if (optimState && "file" in optimState) {
      // The file passed its own checks; these add the network's parameter count and shapes.
      const problem = optimizer.checkState(optimState.state);
      if (problem) warn(`${optimState.file}: not usable AdamW state: ${printable(problem)}; AdamW starts fresh, which can make a resumed run jump`);
      else {
        optimizer.importState(optimState.state, optimState.file);
        log(`resuming AdamW state from ${optimState.file}`);
      }
    }

    const encodePrompts = (prompts: string[]): tf.Tensor3D => {
      if (!cacheText) return base.encodeText(prompts);
      const rows = prompts.map((p) => {
        let c = textCache.get(p);
        if (!c) {
          c = base.encodeText([p]);
          if (textCache.size < 4096) textCache.set(p, c);
          else return { c, own: true };
        }
        return { c, own: false };
      });
      const out = stackConds(rows.map((r) => r.c));
      for (const r of rows) if (r.own) r.c.dispose();
      return out;
    };

    let epochCache: { epoch: number; batches: number[][] } | undefined;
    const batchesOf = (epoch: number): number[][] => {
      if (epochCache?.epoch !== epoch) {
        dsRng.reseed(deriveSeed(seed, PURPOSE.epoch, epoch));
        epochCache = { epoch, batches: ds.epochBatches(batchSize) };
      }
      return epochCache.batches;
    };

    const toTensor = (items: DatasetItem[]): { x0: tf.Tensor4D; weight?: tf.Tensor4D } => {
      const [h, w, c] = items[0]!.shape;
      const data = new Float32Array(items.length * h * w * c);
      items.forEach((it, i) => data.set((it.latent ?? it.pixels)!, i * h * w * c));
      const x0 = tf.tensor4d(data, [items.length, h, w, c]);
      if (!items[0]!.weight) return { x0 };
      const [wh, ww] = items[0]!.weightShape!;
      const wd = new Float32Array(items.length * wh * ww);
      items.forEach((it, i) => wd.set(it.weight!, i * wh * ww));
      return { x0, weight: tf.tensor4d(wd, [items.length, wh, ww, 1]) };
    };

    let lrIndex = -1;
    let step = startStep;
    let lastTime = Date.now();
    let rate = 0;
    let reason: StopReason = "max-steps";
    let unsafe: string | undefined;
    let lastPrompt = "";
    const vars = params.map((p) => p.value);

    // Only called with finite weights (checked by the callers), so `lastCheckpoint` is always a
    // checkpoint a NaN stop may roll back to. `checkpointPath` keeps the .pt (and so its .optim and
    // .state.json beside it) inside logDir.
    const saveCheckpoint = async (final: boolean): Promise<string> => {
      const file = checkpointPath(logDir, name, step);
      net.info.sdCheckpoint = base.checkpointHash;
      net.info.sdCheckpointName = base.name;
      // A file at this step from an abandoned run (killed after it) is stale: replace it.
      await saveHypernetworkAsync(net, file, { overwrite: true });
      let optimFile: string | undefined;
      if (opts.saveOptimizer ?? true) optimFile = writeOptimizerFile(file, await optimizer.exportState(), { overwrite: true });
      const state: CheckpointState = {
        format: "hypernet-lab/train-state",
        version: 1,
        name,
        step,
        seed,
        learningRate: lrText,
        lrEntry: Math.max(0, lrSchedule.indexAt(step)),
        lr: optimizer.lr,
        clipValue: clipText,
        gradientClipping: clipMode,
        batchSize,
        gradientAccumulation: accum,
        stepsPerEpoch,
        datasetSize: ds.length,
        lossAverage: lossAvg,
        stepsInAverage: avgCount,
        rng: "derived-from-seed-and-step",
        savedAt: new Date().toISOString(),
      };
      writeFileAtomic(`${file}.state.json`, [Buffer.from(JSON.stringify(state, null, 2))], { overwrite: true });
      lastCheckpoint = file;
      opts.onCheckpoint?.({ step, file, optimFile, final });
      return file;
    };

    const makePreview = async (prompt: string): Promise<void> => {
      const p = opts.preview ?? {};
      const { prompts, images, png } = await previewImages(base, attachment, p, prompt, { width, height });
      let file: string | undefined;
      if (p.save ?? true) {
        file = previewFile(logDir, name, step);
        writeFileAtomic(file, [png[0]!], { overwrite: true });
      }
      await opts.onPreview?.({ step, prompts, png, images, file });
    };

    try {
      while (step < maxSteps && !control.stop) {
        // Yield to the event loop once per step: on CPU backends every await resolves as a
        // microtask, and without this a SIGINT (or a notebook interrupt, or a display update)
        // would not be handled until training ended.
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (control.stop) break;
        const idx = lrSchedule.indexAt(step);
        if (idx < 0) {
          reason = "schedule-end";
          break;
        }
        const lr = lrSchedule.entries[idx]!.rate;
        if (idx !== lrIndex) {
          log(`Training at rate of ${lr} until step ${lrSchedule.entries[idx]!.end}`);
          lrIndex = idx;
        }
        const epoch = Math.floor(step / stepsPerEpoch);
        const epochStep = step % stepsPerEpoch;
        const batches = batchesOf(epoch).slice(epochStep * accum, (epochStep + 1) * accum);

        // Accumulate ∂(L/accum)/∂θ over the micro-batches.
        let grads: tf.Tensor[] | undefined;
        let loss = 0;
        for (let j = 0; j < batches.length; j++) {
          dsRng.reseed(deriveSeed(seed, PURPOSE.data, step, j));
          const items = batches[j]!.map((i) => ds.get(i));
          if (j === 0) lastPrompt = items[0]!.prompt;
          const rng = new Rng(deriveSeed(seed, PURPOSE.noise, step, j));
          const t = Array.from(randint(items.length, tMin, tMax, rng));
          const { x0, weight } = toTensor(items);
          const noise = randn(x0.shape, rng) as tf.Tensor4D;
          const cond = encodePrompts(items.map((it) => it.prompt));
          attachment.setSeed(deriveSeed(seed, PURPOSE.dropout, step, j) >>> 2);
          const { value, grads: g } = tf.variableGrads(() => tf.div(diffusionLoss(base.unet, { x0, noise, t, cond, weight }, prediction, schedule), batches.length) as tf.Scalar, vars);
          for (const tt of [x0, noise, cond, weight]) tt?.dispose();
          loss += (await value.data())[0]!;
          value.dispose();
          const list = vars.map((v) => g[v.name]!);
          if (!grads) grads = list;
          else {
            const sum = grads.map((a, k) => tf.add(a, list[k]!));
            for (const tt of [...grads, ...list]) tt.dispose();
            grads = sum;
          }
        }
        if (opts.debugPoisonStep === step + 1) loss = NaN;

        // Safety: the update is applied only if the loss and the gradient are sane.
        const normT = globalNorm(grads!);
        const gradNorm = (await normT.data())[0]!;
        normT.dispose();
        if (!Number.isFinite(loss)) unsafe = `the loss became ${loss} at step ${step + 1}`;
        else if (!Number.isFinite(gradNorm)) unsafe = `the gradient became non-finite at step ${step + 1} (loss ${loss.toFixed(6)})`;
        else if ((opts.blowUpFactor ?? 20) > 0 && lossAvg !== null && avgCount >= (opts.blowUpWarmup ?? 20) && loss > (opts.blowUpFactor ?? 20) * lossAvg) {
          unsafe = `the loss jumped to ${loss.toPrecision(4)} at step ${step + 1}, ${(loss / lossAvg).toFixed(1)}× its running average ${lossAvg.toPrecision(4)}`;
        }
        if (unsafe) {
          for (const g of grads!) g.dispose();
          reason = "unsafe";
          break;
        }

        // Clip the true (unscaled) gradient, then step.
        if (clipSchedule) {
          const clipped = clipGradients(grads!, clipMode as Exclude<ClipMode, "disabled">, clipSchedule.at(step), gradNorm);
          for (const g of grads!) g.dispose();
          grads = clipped;
        }
        optimizer.step(grads!, lr);
        for (const g of grads!) g.dispose();
        step += 1;
        net.info.step = step;
        losses.push(loss);
        lossAvg = lossAvg === null ? loss : lossAvg + (loss - lossAvg) / Math.min(avgCount + 1, 20);
        avgCount += 1;

        const now = Date.now();
        const dt = Math.max(1e-3, (now - lastTime) / 1000);
        lastTime = now;
        rate = rate === 0 ? 1 / dt : 0.9 * rate + 0.1 / dt;
        const end = Math.min(maxSteps, lrSchedule.end);
        const eta = (end - step) / rate;
        const e0 = Math.floor((step - 1) / stepsPerEpoch);
        const es0 = (step - 1) % stepsPerEpoch;
        if (csvEvery > 0 && step % csvEvery === 0) fs.appendFileSync(csvFile, `${step},${e0},${es0},${loss.toFixed(7)},${lr}\n`);
        opts.onStep?.({ step, maxSteps, loss, lossAverage: lossAvg, lr, epoch: e0, epochStep: es0, stepsPerEpoch, gradNorm, stepsPerSecond: rate, etaSeconds: eta, prompt: lastPrompt });
        if (showProgress && (process.stderr.isTTY || now - lastProgress > 2000 || step === end)) {
          lastProgress = now;
          const line = `[Epoch ${e0}: ${es0 + 1}/${stepsPerEpoch}] step ${step}/${end} loss ${loss.toFixed(4)} (avg ${lossAvg.toFixed(4)}) lr ${lr} ${rate.toFixed(2)} step/s ETA ${formatDuration(eta)}`;
          process.stderr.write(process.stderr.isTTY ? `\r${line}\x1b[K` : `${line}\n`);
        }
        if (saveEvery > 0 && step % saveEvery === 0) {
          // A finite loss can still come with an update that made the weights non-finite; such
          // weights are never saved (nor rolled back to, nor recommended).
          if (!(await weightsFinite(params))) {
            unsafe = `the weights became non-finite in the update of step ${step} (its loss was ${loss.toPrecision(4)})`;
            reason = "unsafe";
            break;
          }
          await saveCheckpoint(false);
        }
        if (previewEvery > 0 && step % previewEvery === 0) await makePreview(lastPrompt);
      }
      if (control.stop && reason === "max-steps" && step < maxSteps) reason = "stopped";
      if (reason === "max-steps" && lrSchedule.exhausted(step) && step < maxSteps) reason = "schedule-end";
    } catch (err) {
      // Save what we have (if it is finite), then report the error.
      if (step > startStep && (!lastCheckpoint || readCheckpointState(lastCheckpoint)?.step !== step)) {
        try {
          if (!(await weightsFinite(params))) throw new Error("non-finite weights are not saved");
          const file = await saveCheckpoint(true);
          (err as Error).message += ` (training state at step ${step} saved to ${file})`;
        } catch {
          /* keep the original error */
        }
      }
      throw err;
    } finally {
      if (showProgress && process.stderr.isTTY) process.stderr.write("\n");
    }

    if (reason !== "unsafe" && step > startStep && !(await weightsFinite(params))) {
      unsafe = `the weights became non-finite by step ${step}`;
      reason = "unsafe";
    }
    if (reason === "unsafe") {
      // Roll the network back to the last good checkpoint (or the start); every checkpoint this run
      // wrote, and the one it resumed from, was checked finite.
      let rolledTo: string;
      if (lastCheckpoint) {
        assignWeights(net, readHypernetworkFile(lastCheckpoint), lastCheckpoint);
        net.info.step = readHypernetworkFile(lastCheckpoint).info.step;
        rolledTo = lastCheckpoint;
      } else {
        assignWeights(net, startSnapshot, "the starting weights");
        net.info.step = startStep;
        rolledTo = `the starting weights (step ${startStep}; no checkpoint was written yet)`;
      }
      const message =
        `training stopped: ${unsafe}. The network was rolled back to ${rolledTo}. ` +
        `Try a lower learning rate (e.g. a tenth: good hypernetwork rates are often 5e-6 or less), gradient clipping ` +
        `(gradientClipping: "norm", clipValue: "1"), a larger batch or gradient accumulation; then resume from ${lastCheckpoint ?? "the start"}.`;
      log(message);
      return result("unsafe", message, { losses, lastCheckpoint, step: net.info.step });
    }

    // Final save (normal end, schedule end, interrupt).
    if (step > startStep && !(lastCheckpoint && readCheckpointState(lastCheckpoint)?.step === step && lastCheckpoint !== opts.resumeFrom)) await saveCheckpoint(true);
    let finalFile: string | undefined;
    if (opts.finalFile) {
      if (opts.resumeFrom && path.resolve(opts.finalFile) === path.resolve(opts.resumeFrom) && !opts.overwrite) {
        warn(`finalFile ${opts.finalFile} is the file training resumed from; not replacing it (pass overwrite: true). The result is in ${lastCheckpoint}`);
      } else {
        await saveHypernetworkAsync(net, opts.finalFile, { overwrite: opts.overwrite });
        if (opts.saveOptimizer ?? true) writeOptimizerFile(opts.finalFile, await optimizer.exportState(), { overwrite: true });
        finalFile = opts.finalFile;
      }
    }
    const why =
      reason === "stopped" ? `stopped at step ${step}` : reason === "schedule-end" ? `the learning-rate schedule ended at step ${step}` : `reached Max steps ${maxSteps}`;
    const message = `training ${why}; saved ${lastCheckpoint ?? "nothing (no step was taken)"}${finalFile ? ` and ${finalFile}` : ""}`;
    log(message);
    return result(reason, message, { losses, lastCheckpoint, finalFile, step });
  } finally {
    if (opts.handleSigint ?? true) process.removeListener("SIGINT", onSigint);
    attachment.detach();
    optimizer.dispose();
    for (const t of textCache.values()) t.dispose();
  }
}
