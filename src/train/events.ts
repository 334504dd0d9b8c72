/**
 * What a training run tells its caller: one event per optimizer step, per checkpoint and per
 * preview, and the result when it ends. The trainer renders nothing itself; the notebook verb
 * `train`, the demo and the progress line (`progress.ts`) turn these into charts and text.
 */
/** Payload of `onStep`. */
export interface StepEvent {
  /** Optimizer steps done (1-based; the step just finished). */
  step: number;
  /** Max steps of the run (training may end earlier if the schedule ends). */
  maxSteps: number;
  /** The step training will end at: Max steps, or earlier where the learning-rate schedule ends. */
  endStep: number;
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

/** One sample of the validation batch (`validation.ts`): which image, its timestep, its loss. */
export interface ValidationSample {
  /** Index of the image in the validation batch, and its file. */
  image: number;
  file: string;
  t: number;
  loss: number;
}

/** Payload of `onValidation`: the loss on the fixed validation batch after `step` steps (the run's start step: before training). */
export interface ValidationEvent {
  step: number;
  /** Mean over the batch. */
  loss: number;
  samples: ValidationSample[];
}

/** Payload of `onNorms` (`module-norms.ts`): per-module norms at `step`, keyed like "768 k". */
export interface NormsEvent {
  step: number;
  /** ‖g‖₂ of each trained module's gradient in this step (before clipping). */
  gradient: Record<string, number>;
  /** Mean ‖m(c) − c‖₂ per token of each module, after this step's update, on the fixed batch. */
  output: Record<string, number>;
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
