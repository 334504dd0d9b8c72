/**
 * The trainer's options (A1111's Train tab, plus this project's), checked and resolved into one
 * run configuration before anything is read or written: every mistake in the options is an error
 * naming the option and what it accepts, raised before the dataset is loaded.
 */
import * as path from "node:path";
import { sd15Schedule } from "../diffusion/schedule";
import type { LatentSampling } from "../data/dataset";
import type { Hypernetwork } from "../hypernet/network";
import { insideFolder, printable, safeFileStem } from "../io/safe-name";
import type { Param } from "../nn/module";
import type { BaseModel } from "../pipeline/base-model";
import { type CaptionSyntax, resolveCaptionSyntax } from "./captions";
import type { CheckpointEvent, NormsEvent, PreviewEvent, StepEvent, ValidationEvent } from "./events";
import type { Prediction } from "./loss";
import { Schedule } from "./lr-schedule";
import { type CosineRestarts, LearningRatePlan, type SchedulerConfig, resolveSchedulerConfig } from "./lr-scheduler";
import type { ValidationOptions } from "./validation";

/** Gradient clipping mode (A1111's "Gradient Clipping" dropdown). */
export type ClipMode = "disabled" | "value" | "norm";

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
  /**
   * How captions are encoded (captions.ts): "a1111" (default, what A1111's training does:
   * `(word:1.2)`, `[word]`, escapes and BREAK read as in prompts) or "literal" (the characters as
   * written, brackets and all, no weights: A1111 with Emphasis mode "None").
   */
  captionSyntax?: CaptionSyntax;

  // -- the run (spec §4.2–§4.4, §4.7) --
  /** Max steps: the absolute number of optimizer steps to reach (a network at step 500 trained to 2000 does 1500 more). */
  maxSteps: number;
  /**
   * Learning-rate schedule string or number (default "0.00001"), stepped exactly as A1111 steps it
   * (once per micro-batch; see lr-schedule.ts), shaped by `warmupSteps` and `cosineRestarts` when set.
   */
  learningRate?: string | number;
  /** Images per micro-batch (default 1; clamped to the dataset size). */
  batchSize?: number;
  /** Micro-batches per optimizer step (default 1; clamped to ⌊dataset / batch⌋). */
  gradientAccumulation?: number;
  /** Gradient clipping (default "disabled"). */
  gradientClipping?: ClipMode;
  /** Clip value or max norm, a schedule string like the learning rate (default "0.1"). */
  clipValue?: string | number;
  /**
   * The p of the norm `gradientClipping: "norm"` limits (default 2, A1111's): ‖g‖_p = (Σ|g|^p)^(1/p)
   * over every gradient element of the network, or the largest |g| for `Infinity` (or "inf"), as
   * `torch.nn.utils.clip_grad_norm_(norm_type=p)`. Not an A1111 option.
   */
  clipNormType?: number | "inf";
  /** Prediction target (default "epsilon"). */
  prediction?: Prediction;
  /** Seed of all training randomness (default 0). The same seed gives the same run. */
  seed?: number;
  /** AdamW's decoupled weight decay λ (default 0.01, PyTorch's and so A1111's). */
  weightDecay?: number;
  /** AdamW's (β₁, β₂), each in [0, 1) (default [0.9, 0.999], PyTorch's; A1111 fixes them). */
  adamBetas?: readonly [number, number];
  /** AdamW's ε, added to the denominator (default 1e-8, PyTorch's; A1111 fixes it). */
  adamEps?: number;
  /**
   * Linear warm-up over the first N steps of the network (default 0: none): the step from s steps
   * done uses (s + 1)/N of the schedule's rate. Composes with the schedule string and with
   * `cosineRestarts` (whose cycles start after the warm-up). See lr-scheduler.ts.
   */
  warmupSteps?: number;
  /**
   * Cosine annealing with warm restarts on top of the schedule string (default: off): each cycle
   * falls from its peak (γ^cycle × the string's rate) to `minLr` along half a cosine, then restarts;
   * cycle lengths grow by `cycleMult`. Optionally saves and previews at every cycle end. With
   * gamma 1 it is PyTorch's `CosineAnnealingWarmRestarts`. See lr-scheduler.ts.
   */
  cosineRestarts?: CosineRestarts;
  /**
   * Noise offset (kohya's `--noise_offset`; default 0: off, A1111's loss): ε ← ε + offset · n with
   * one n ~ N(0, 1) per image and channel, so the network also learns to shift an image's mean
   * brightness and colour (kohya uses about 0.05–0.1). The target (ε or v) uses the shifted noise.
   */
  noiseOffset?: number;
  /**
   * Min-SNR-γ loss weighting (Hang et al. 2023; kohya's `--min_snr_gamma`, diffusers'
   * `snr_gamma`; default off, A1111's plain mean). Each image's mean squared error is weighted by
   * min(SNR_t, γ)/SNR_t for ε-prediction or min(SNR_t, γ)/(SNR_t + 1) for v-prediction, SNR_t =
   * ᾱ_t/(1 − ᾱ_t): low-noise timesteps stop dominating. γ = 5 is the paper's choice.
   */
  minSnrGamma?: number;
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

  // -- measurements (not A1111 options; all off by default, and none changes what training draws) --
  /** Measure the loss on a fixed validation batch every N steps and once before the first (default 0 = never; see validation.ts). */
  validationEvery?: number;
  /** How the validation batch is made (held-out folder, images, timesteps, seed). */
  validation?: ValidationOptions;
  /** Measure per-module gradient and output norms every N steps (default 0 = never; see module-norms.ts). */
  normsEvery?: number;
  /** Called with every validation loss. */
  onValidation?: (e: ValidationEvent) => void;
  /** Called with every norms measurement. */
  onNorms?: (e: NormsEvent) => void;

  // -- reporting --
  /** Called after every optimizer step. */
  onStep?: (e: StepEvent) => void;
  /** Called after every checkpoint (and the final save). */
  onCheckpoint?: (e: CheckpointEvent) => void;
  /** Called with every preview. */
  onPreview?: (e: PreviewEvent) => void | Promise<void>;
  /** Messages (schedule changes, warnings, the stop reason). Default: console.log. */
  onLog?: (message: string) => void;
  /** Print a progress line with step/s and ETA on stderr (default: when stderr is a terminal); rendered by `progress.ts` from the step events. */
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

/** Everything a run uses, checked and with the defaults filled in. */
export interface RunConfig {
  /** The network's name as stored; `shownName` with control characters escaped, for messages. */
  name: string;
  shownName: string;
  /** The plain file-name stem checkpoints and previews are named after. */
  stem: string;
  seed: number;
  /** Step the network is at (its file's step), and the step to reach. */
  startStep: number;
  maxSteps: number;
  saveEvery: number;
  csvEvery: number;
  previewEvery: number;
  prediction: Prediction;
  clipMode: ClipMode;
  /** Timesteps the loss is drawn from, `[min, max)`. */
  timesteps: [number, number];
  /** Warm-up and cosine restarts on top of the schedule string. */
  scheduler: SchedulerConfig;
  /** AdamW's hyper-parameters. */
  adamw: { betas: [number, number]; eps: number; weightDecay: number };
  /** The p of the clipping norm (2 unless asked; Infinity for the max norm). */
  clipNormType: number;
  /** Noise offset (0: off). */
  noiseOffset: number;
  /** Min-SNR-γ (undefined: off). */
  minSnrGamma: number | undefined;
  logDir: string;
  /** The schedules as the user wrote them (for the state file). */
  lrText: string;
  clipText: string;
  /** How captions are encoded. */
  captionSyntax: CaptionSyntax;
  /** Training image size (the dataset's resize target and the previews' default). */
  width: number;
  height: number;
  saveOptimizer: boolean;
  blowUpFactor: number;
  blowUpWarmup: number;
  /** The network's parameters, in `.optim` order. */
  params: Param[];
  /**
   * Per parameter: whether it is trained — its module's width is one the model's attention layers
   * use. Modules for other widths are never called, get no gradient, and are left as they are.
   */
  trained: boolean[];
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

/** A finite number option in a range (default `fallback`), or an error naming it and the range. */
function numberIn(v: number | undefined, fallback: number, what: string, ok: (x: number) => boolean, range: string): number {
  const x = v ?? fallback;
  if (typeof x !== "number" || !Number.isFinite(x) || !ok(x)) throw new Error(`train: ${what} must be ${range}, got ${String(x)}`);
  return x;
}

/** The options of this project's additions to A1111's training (AdamW's, clipping's norm, noise offset, min-SNR, schedulers), checked. */
function resolveExtras(opts: TrainOptions): Pick<RunConfig, "scheduler" | "adamw" | "clipNormType" | "noiseOffset" | "minSnrGamma"> {
  const betas = opts.adamBetas ?? [0.9, 0.999];
  if (!Array.isArray(betas) || betas.length !== 2)
    throw new Error(`train: adamBetas must be two numbers [β₁, β₂] in [0, 1), got ${JSON.stringify(betas)}`);
  const b = betas.map((x, i) => numberIn(x, NaN, `adamBetas[${i}]`, (y) => y >= 0 && y < 1, "in [0, 1)")) as [number, number];
  const eps = numberIn(opts.adamEps, 1e-8, "adamEps", (y) => y > 0, "a number > 0");
  const weightDecay = numberIn(opts.weightDecay, 0.01, "weightDecay", (y) => y >= 0, "a number ≥ 0");
  const p = opts.clipNormType === "inf" ? Infinity : (opts.clipNormType ?? 2);
  if (typeof p !== "number" || !(p === Infinity || (Number.isFinite(p) && p > 0)))
    throw new Error(`train: clipNormType must be a number > 0 (1, 2, …) or Infinity ("inf"), got ${JSON.stringify(opts.clipNormType)}`);
  const noiseOffset = numberIn(opts.noiseOffset, 0, "noiseOffset", (y) => y >= 0, "a number ≥ 0 (0: off; kohya uses about 0.05–0.1)");
  const minSnrGamma =
    opts.minSnrGamma === undefined ? undefined : numberIn(opts.minSnrGamma, NaN, "minSnrGamma", (y) => y > 0, "a number > 0 (5 is usual)");
  return {
    scheduler: resolveSchedulerConfig(opts.warmupSteps, opts.cosineRestarts),
    adamw: { betas: b, eps, weightDecay },
    clipNormType: p,
    noiseOffset,
    minSnrGamma,
  };
}

/** An integer option ≥ `min` (default `fallback`), or an error naming it. */
export function positiveInt(v: number | undefined, fallback: number, what: string, min = 1): number {
  const x = v ?? fallback;
  if (!Number.isSafeInteger(x) || x < min) throw new Error(`train: ${what} must be an integer ≥ ${min}, got ${x}`);
  return x;
}

/** `YYYY-MM-DD` of a date (A1111's run folders are named by day). */
export function today(d = new Date()): string {
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

/**
 * Check the options and fill in the defaults. Also refuses a base model with trainable weights
 * (only the hypernetwork may change) and a network loaded for inference. `warn` hears about a
 * network name that could not be used as a file name.
 */
export function resolveRunConfig(base: BaseModel, net: Hypernetwork, opts: TrainOptions, warn: (m: string) => void): RunConfig {
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
  const timesteps = checkTimesteps(opts.timesteps, sd15Schedule().numTimesteps);
  if (!["disabled", "value", "norm"].includes(clipMode))
    throw new Error(`train: gradientClipping must be "disabled", "value" or "norm", got ${JSON.stringify(clipMode)}`);
  const logDir = opts.logDir ?? insideFolder("textual_inversion", path.join("textual_inversion", today(), stem), "the run folder");
  if (safe.changed)
    warn(
      `the network's name "${shownName}" is not a plain file name (${safe.problems.join("; ")}); its files are named "${stem}-<step>.pt" instead`,
    );

  // Frozen base model: only the hypernetwork may be trained.
  const frozenLeak = [
    ...base.unet.trainableVariables(),
    ...base.textEncoder.trainableVariables(),
    ...(base.vae?.trainableVariables() ?? []),
  ];
  if (frozenLeak.length)
    throw new Error(
      `train: the base model has ${frozenLeak.length} trainable variables (e.g. ${frozenLeak[0]!.name}); build it with trainable: false (the default) so only the hypernetwork is trained`,
    );
  const named = net.namedParameters();
  const params = named.map(([, p]) => p);
  const modelDims = new Set(base.contextDims);
  // Parameter names start with their module's width ("768.0.linear.0.weight").
  const trained = named.map(([n]) => modelDims.has(Number(n.slice(0, n.indexOf(".")))));
  if (params.some((p) => !p.value.trainable))
    throw new Error(`train: ${shownName} was loaded for inference; load it with loadHypernetwork(file, { trainable: true })`);

  const extras = resolveExtras(opts);
  const lrText = String(opts.learningRate ?? "0.00001");
  const clipText = String(opts.clipValue ?? "0.1");
  // Schedule strings are checked here, before the dataset is read; they are stepped once the
  // gradient accumulation is known (resolveSchedules).
  new Schedule(lrText, maxSteps, net.info.step < maxSteps ? net.info.step : 0, "learning rate");
  if (clipMode !== "disabled") new Schedule(clipText, maxSteps, net.info.step < maxSteps ? net.info.step : 0, "gradient clipping");
  return {
    ...extras,
    name,
    shownName,
    stem,
    seed,
    startStep: net.info.step,
    maxSteps,
    saveEvery,
    csvEvery,
    previewEvery,
    prediction,
    clipMode,
    timesteps,
    logDir,
    lrText,
    clipText,
    captionSyntax: resolveCaptionSyntax(opts.captionSyntax),
    width: opts.width ?? base.imageSize,
    height: opts.height ?? base.imageSize,
    saveOptimizer: opts.saveOptimizer ?? true,
    blowUpFactor: opts.blowUpFactor ?? 20,
    blowUpWarmup: opts.blowUpWarmup ?? 20,
    params,
    trained,
  };
}

/**
 * The learning-rate plan (the schedule string stepped as A1111 steps it with `accumulation`
 * micro-batches per step, shaped by the warm-up and cosine restarts) and, when clipping, the
 * clip-value schedule, from the start step on; `warn` hears their warnings.
 */
export function resolveSchedules(
  cfg: RunConfig,
  warn: (m: string) => void,
  accumulation = 1,
): { lr: LearningRatePlan; clip: Schedule | undefined } {
  const base = new Schedule(cfg.lrText, cfg.maxSteps, cfg.startStep, "learning rate", accumulation);
  base.warnings.forEach(warn);
  const clip =
    cfg.clipMode === "disabled" ? undefined : new Schedule(cfg.clipText, cfg.maxSteps, cfg.startStep, "gradient clipping", accumulation);
  clip?.warnings.forEach(warn);
  return { lr: new LearningRatePlan(base, cfg.scheduler), clip };
}
