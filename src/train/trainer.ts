/**
 * Training a hypernetwork on a frozen base model (spec §4.6–§4.10), with A1111's options and
 * files, and with the faults users reported fixed (spec §6). This file is the loop; its parts live
 * in files named for them:
 *
 *     options.ts     the options, checked and resolved into one run config
 *     feed.ts        the dataset and each step's micro-batches (x₀, ε, t, c)
 *     loss.ts        the diffusion loss and the text contexts
 *     seeds.ts       per-step seeds: a resumed run draws what the uninterrupted one drew
 *     step.ts        gradient accumulation, the NaN guard, clipping, the AdamW update
 *     run-folder.ts  checkpoints (.pt, .optim, .state.json), the loss CSV, the settings JSON, rollback
 *     preview.ts     preview images through the shared sampling path
 *     events.ts      what a run reports (it prints nothing; progress.ts renders on a terminal)
 *
 * One optimizer step, from `s` steps done to `s + 1`:
 *
 *     lr   = schedule(s)                     (§4.3 and lr-scheduler.ts; training ends when it runs out)
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
 * Reproducibility: every random number of step `s` is drawn from generators seeded by (seed, s)
 * (`seeds.ts`); with the weights and AdamW moments restored from a checkpoint, a resumed run
 * reproduces the uninterrupted run's loss curve step for step. Previews draw from their own fixed
 * seed and cannot shift the training noise.
 */
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { type NoiseSchedule, sd15Schedule } from "../diffusion/schedule";
import { type Attachment, attachHypernetworks } from "../hypernet/attach";
import { fromNetworkAsync, readHypernetworkFile, saveHypernetworkAsync, toNetwork, type HypernetworkFile } from "../hypernet/file";
import type { Hypernetwork } from "../hypernet/network";
import { readOptimizerFile, writeOptimizerFile } from "../hypernet/optim-file";
import { printable } from "../io/safe-name";
import type { BaseModel } from "../pipeline/base-model";
import { AdamW } from "./adamw";
import type { StopReason, TrainResult, TrainingRun } from "./events";
import { TrainingFeed } from "./feed";
import type { Schedule } from "./lr-schedule";
import type { LearningRatePlan } from "./lr-scheduler";
import { type RunConfig, type TrainOptions, resolveRunConfig, resolveSchedules } from "./options";
import type { OptimizerState } from "./optimizer-state";
import { previewImages } from "./preview";
import { StepClock, withTerminalOutput } from "./progress";
import { type CheckpointState, RunFolder, readCheckpointState, rollBack } from "./run-folder";
import { TrainingMonitors } from "./monitors";
import { RunningLoss, accumulateGradients, applyUpdate, gradientNorm, unsafeStep, weightsFinite } from "./step";

export * from "./events";
export type { ClipMode, PreviewOptions, TrainOptions } from "./options";
export { type CaptionSyntax, captionEncoder } from "./captions";
export { type LossBatch, type Prediction, diffusionLoss, stackConds } from "./loss";
export { deriveSeed } from "./seeds";
export { clipGradients } from "./step";
export { type CheckpointState, assignWeights, checkpointPath, listCheckpoints, readCheckpointState } from "./run-folder";

/**
 * Train `net` on `base` (frozen) with the images in `opts.dataDir`; see the module comment.
 * Returns at once with a handle: `await run.done` for the result, `run.stop()` to end early.
 * Messages go to `opts.onLog` (default: printed), and with `progress` a progress line is printed
 * on stderr (`progress.ts`).
 *
 * @example
 *   const run = train(base, net, { dataDir: "data/watery", maxSteps: 2000, learningRate: "5e-5:100, 5e-6:-1",
 *                                  saveEvery: 250, previewEvery: 250, onStep: (e) => chart.push(e.step, e.loss) });
 *   const result = await run.done;   // result.reason, result.message, result.lastCheckpoint
 */
export function train(base: BaseModel, net: Hypernetwork, opts: TrainOptions): TrainingRun {
  const control = { stop: false };
  const terminal = withTerminalOutput(opts);
  const done = runTraining(base, net, terminal.opts, control).finally(() => terminal.finish());
  return { done, stop: () => void (control.stop = true) };
}

/** Load the network from a checkpoint and continue training it (`train` with `resumeFrom`). */
export function resumeTraining(
  base: BaseModel,
  checkpoint: string,
  opts: Omit<TrainOptions, "resumeFrom">,
): TrainingRun & { network: Hypernetwork } {
  const network = toNetwork(readHypernetworkFile(checkpoint), { trainable: true, where: checkpoint });
  return { ...train(base, network, { ...opts, resumeFrom: checkpoint }), network };
}

/** Where a run's messages go: `log` for news, `warn` for warnings (also kept for the result). */
interface Reporter {
  log(message: string): void;
  warn(message: string): void;
  warnings: string[];
}

/** A run under way: what the loop and its parts share. */
interface Run {
  base: BaseModel;
  net: Hypernetwork;
  opts: TrainOptions;
  cfg: RunConfig;
  out: Reporter;
  lr: LearningRatePlan;
  clip: Schedule | undefined;
  feed: TrainingFeed;
  folder: RunFolder;
  attachment: Attachment;
  optimizer: AdamW;
  noise: NoiseSchedule;
  /** The network as it started (the rollback target before any checkpoint). */
  start: HypernetworkFile;
  step: number;
  losses: number[];
  average: RunningLoss;
  /** The newest complete checkpoint: this run's, or the one it resumed from. */
  lastCheckpoint: string | undefined;
}

/** How the loop ended. */
interface LoopEnd {
  reason: StopReason;
  /** For an unsafe stop: what went wrong, in words. */
  unsafe?: string;
}

async function runTraining(base: BaseModel, net: Hypernetwork, opts: TrainOptions, control: { stop: boolean }): Promise<TrainResult> {
  const log = opts.onLog ?? ((): void => {});
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    log(`warning: ${m}`);
  };
  const out: Reporter = { log, warn, warnings };
  const cfg = resolveRunConfig(base, net, opts, out.warn);
  if (cfg.startStep >= cfg.maxSteps) {
    const message = `${cfg.shownName} has already been trained to step ${cfg.startStep}, beyond Max steps ${cfg.maxSteps}; raise maxSteps to train further`;
    log(message);
    return { reason: "already-trained", message, startStep: cfg.startStep, step: net.info.step, losses: [], logDir: cfg.logDir, warnings };
  }
  const run = await setUpRun(base, net, opts, cfg, out);
  const onSigint = (): void => {
    control.stop = true;
    log("interrupt: stopping after the current step, then saving");
  };
  if (opts.handleSigint ?? true) process.on("SIGINT", onSigint);
  try {
    return await finishRun(run, await trainLoop(run, control));
  } finally {
    if (opts.handleSigint ?? true) process.removeListener("SIGINT", onSigint);
    run.attachment.detach();
    run.optimizer.dispose();
    run.feed.dispose();
  }
}

/**
 * Everything before the first step: the schedules, the resume files (a checkpoint's AdamW state and
 * loss average), the dataset, the run folder, and the network attached in training mode with AdamW
 * over its parameters only.
 */
async function setUpRun(base: BaseModel, net: Hypernetwork, opts: TrainOptions, cfg: RunConfig, out: Reporter): Promise<Run> {
  const resumed = readResumeFiles(cfg, opts.resumeFrom, out.warn);
  // A network that is already non-finite cannot be trained, and must not become the checkpoint a
  // NaN stop rolls back to.
  if (!(await weightsFinite(cfg.params))) {
    throw new Error(
      opts.resumeFrom
        ? `train: ${opts.resumeFrom} holds NaN or infinite weights, so training cannot continue from it; resume from an earlier checkpoint (listCheckpoints(logDir)) or start afresh`
        : `train: the network ${cfg.shownName} holds NaN or infinite weights; create or load one with finite weights`,
    );
  }
  const feed = await TrainingFeed.open(base, cfg, opts, out);
  // A1111 steps its schedules once per micro-batch (it matters for out-of-order entries).
  const { lr, clip } = resolveSchedules(cfg, out.warn, feed.accumulation);
  const folder = RunFolder.open(cfg, out.log);
  const { batchSize, accumulation: gradientAccumulation, stepsPerEpoch } = feed;
  if (opts.saveSettings ?? true)
    folder.writeSettings({
      base,
      net,
      dataset: feed.dataset,
      opts,
      startStep: cfg.startStep,
      batchSize,
      gradientAccumulation,
      stepsPerEpoch,
    });
  const start = await fromNetworkAsync(net);
  // Modules for widths the model never uses are warned about (once) and left out of training.
  const attachment = attachHypernetworks(base.unet, [{ network: net, multiplier: 1 }], { onWarning: out.warn });
  attachment.training = true;
  const optimizer = new AdamW(cfg.params, { lr: lr.at(cfg.startStep), ...cfg.adamw });
  const optim = resumed.optim;
  if (optim) {
    // The file passed its own checks; these add the network's parameter count and shapes.
    const problem = optimizer.checkState(optim.state);
    if (problem)
      out.warn(`${optim.file}: not usable AdamW state: ${printable(problem)}; AdamW starts fresh, which can make a resumed run jump`);
    else {
      try {
        optimizer.importState(optim.state, optim.file);
      } catch (err) {
        attachment.detach();
        optimizer.dispose();
        throw err;
      }
      out.log(`resuming AdamW state from ${optim.file}`);
    }
  }
  const average = new RunningLoss(resumed.state?.lossAverage ?? null, resumed.state?.stepsInAverage ?? 0);
  return {
    base,
    net,
    opts,
    cfg,
    out,
    lr,
    clip,
    feed,
    folder,
    attachment,
    optimizer,
    noise: sd15Schedule(),
    start,
    step: cfg.startStep,
    losses: [],
    average,
    lastCheckpoint: opts.resumeFrom,
  };
}

/**
 * Resuming: the network passed in must be the checkpoint's (same step). Its `.state.json` brings
 * back the loss average (and the seed it was trained with); its `.optim` AdamW's moments. A side
 * file that cannot be used is warned about and training goes on without it.
 */
function readResumeFiles(
  cfg: RunConfig,
  resumeFrom: string | undefined,
  warn: (m: string) => void,
): { state?: CheckpointState; optim?: { state: OptimizerState; file: string } } {
  if (!resumeFrom) return {};
  const hf = readHypernetworkFile(resumeFrom);
  if (hf.info.step !== cfg.startStep)
    throw new Error(
      `train: resumeFrom ${resumeFrom} is at step ${hf.info.step} but the network passed in is at step ${cfg.startStep}; load the network from that file (resumeTraining does this)`,
    );
  const state = readCheckpointState(resumeFrom);
  if (state && state.seed !== cfg.seed)
    warn(`${resumeFrom} was trained with seed ${state.seed}, this run uses ${cfg.seed}: the loss curve will not continue the original one`);
  let optim: ReturnType<typeof readOptimizerFile>;
  try {
    optim = readOptimizerFile(resumeFrom, { shapes: cfg.params.map((p) => p.torchShape) });
  } catch (err) {
    // An unreadable side file is treated like a missing one: the weights are what matters.
    optim = { state: undefined, reason: `${resumeFrom}.optim cannot be used: ${(err as Error).message}` };
  }
  if ("reason" in optim) warn(`${printable(optim.reason)}; AdamW starts fresh, which can make a resumed run jump`);
  return { ...(state ? { state } : {}), ...("file" in optim ? { optim } : {}) };
}

/** The loop: one optimizer step per pass, until Max steps, the schedule's end, a stop request or an unsafe step. */
async function trainLoop(run: Run, control: { stop: boolean }): Promise<LoopEnd> {
  const { cfg, opts, out, feed } = run;
  const vars = cfg.params.filter((_, i) => cfg.trained[i]).map((p) => p.value);
  const grad = {
    unet: run.base.unet,
    attachment: run.attachment,
    feed,
    vars,
    prediction: cfg.prediction,
    schedule: run.noise,
    seed: cfg.seed,
    noiseOffset: cfg.noiseOffset,
    minSnrGamma: cfg.minSnrGamma,
  };
  const clock = new StepClock();
  // Validation loss and module norms (off unless asked for): they draw nothing from training's generators.
  const monitors = await TrainingMonitors.open(run);
  try {
    while (run.step < cfg.maxSteps && !control.stop) {
      // Yield to the event loop once per step: on CPU backends every await resolves as a
      // microtask, and without this a SIGINT (or a notebook interrupt, or a display update)
      // would not be handled until training ended.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (control.stop) break;

      // The learning rate of this step; the schedule may end training before Max steps.
      const lr = run.lr.rateAt(run.step);
      if (lr === undefined) return { reason: "schedule-end" };
      const news = run.lr.newsAt(run.step, cfg.startStep);
      if (news) out.log(news);

      // g = Σ_j ∂(L_j / accum)/∂θ over this step's micro-batches, and the step's loss.
      const { grads, loss: stepLoss, prompt } = await accumulateGradients(grad, run.step);
      await monitors.gradients(run.step + 1, grads);
      const loss = opts.debugPoisonStep === run.step + 1 ? NaN : stepLoss;

      // The NaN guard: a non-finite loss or gradient, or a loss far above its running average,
      // stops training before the update is applied.
      const gradNorm = await gradientNorm(grads);
      const unsafe = unsafeStep(loss, gradNorm, run.step, run.average, cfg.blowUpFactor, cfg.blowUpWarmup);
      if (unsafe) {
        tf.dispose(grads);
        return { reason: "unsafe", unsafe };
      }

      // θ ← AdamW(θ, clip(g), lr).
      const clip =
        run.clip && cfg.clipMode !== "disabled"
          ? { mode: cfg.clipMode, value: run.clip.at(run.step), normType: cfg.clipNormType }
          : undefined;
      applyUpdate(run.optimizer, grads, cfg.trained, lr, clip, gradNorm);
      run.step += 1;
      run.net.info.step = run.step;
      run.losses.push(loss);
      run.average.add(loss);

      // Report the step: a CSV row (epoch columns count from 0, as A1111's) and the step event.
      const epoch = Math.floor((run.step - 1) / feed.stepsPerEpoch);
      const epochStep = (run.step - 1) % feed.stepsPerEpoch;
      const endStep = Math.min(cfg.maxSteps, run.lr.end);
      run.folder.appendLoss(run.step, epoch, epochStep, loss, lr);
      const timing = clock.tick(endStep - run.step);
      const lossAverage = run.average.value!;
      opts.onStep?.({
        step: run.step,
        maxSteps: cfg.maxSteps,
        endStep,
        loss,
        lossAverage,
        lr,
        epoch,
        epochStep,
        stepsPerEpoch: feed.stepsPerEpoch,
        gradNorm,
        ...timing,
        prompt,
      });
      await monitors.afterStep(run.step);

      // A checkpoint every `saveEvery` steps (and at cycle ends if asked). A finite loss can still come with an update that made
      // the weights non-finite; such weights are never saved (nor rolled back to, nor recommended).
      if (run.lr.checkpointDue(run.step, cfg.saveEvery)) {
        if (!(await weightsFinite(cfg.params)))
          return {
            reason: "unsafe",
            unsafe: `the weights became non-finite in the update of step ${run.step} (its loss was ${loss.toPrecision(4)})`,
          };
        await saveCheckpoint(run, false);
      }
      // A preview every `previewEvery` steps (and at cycle ends if asked), of the first prompt of the step's batch by default.
      if (run.lr.previewDue(run.step, cfg.previewEvery)) await makePreview(run, prompt);
    }
  } catch (err) {
    await saveAfterError(run, err as Error);
    throw err;
  } finally {
    monitors.dispose();
  }
  if (control.stop && run.step < cfg.maxSteps) return { reason: "stopped" };
  if (run.lr.exhausted(run.step) && run.step < cfg.maxSteps) return { reason: "schedule-end" };
  return { reason: "max-steps" };
}

/** Save the checkpoint of the current step and report it. Only called with finite weights. */
async function saveCheckpoint(run: Run, final: boolean): Promise<string> {
  const { feed, average } = run;
  const progress = {
    step: run.step,
    lrEntry: Math.max(0, run.lr.indexAt(run.step)),
    lr: run.optimizer.lr,
    batchSize: feed.batchSize,
    gradientAccumulation: feed.accumulation,
    stepsPerEpoch: feed.stepsPerEpoch,
    datasetSize: feed.dataset.length,
    lossAverage: average.value,
    stepsInAverage: average.count,
  };
  const { file, optimFile } = await run.folder.saveCheckpoint(run.net, run.base, run.optimizer, progress);
  run.lastCheckpoint = file;
  run.opts.onCheckpoint?.({ step: run.step, file, optimFile, final });
  return file;
}

/** Sample a preview with the network as it is now, save it in the run folder (unless `save: false`) and report it. */
async function makePreview(run: Run, prompt: string): Promise<void> {
  const p = run.opts.preview ?? {};
  const { prompts, images, png } = await previewImages(run.base, run.attachment, p, prompt, run.cfg);
  const file = (p.save ?? true) ? run.folder.savePreview(run.step, png[0]!) : undefined;
  await run.opts.onPreview?.({ step: run.step, prompts, png, images, file });
}

/** After an error in the loop: save the current step (if it is new and finite) and say so in the error's message. */
async function saveAfterError(run: Run, err: Error): Promise<void> {
  if (run.step <= run.cfg.startStep || (run.lastCheckpoint && readCheckpointState(run.lastCheckpoint)?.step === run.step)) return;
  try {
    if (!(await weightsFinite(run.cfg.params))) return;
    const file = await saveCheckpoint(run, true);
    err.message += ` (training state at step ${run.step} saved to ${file})`;
  } catch {
    /* keep the original error */
  }
}

/**
 * After the loop: an unsafe end rolls the network back to the last good checkpoint and says what to
 * try; any other end saves the final checkpoint (unless the last one is of this step) and `finalFile`.
 */
async function finishRun(run: Run, end: LoopEnd): Promise<TrainResult> {
  const { cfg, opts, out, net } = run;
  let { reason, unsafe } = end;
  if (reason !== "unsafe" && run.step > cfg.startStep && !(await weightsFinite(cfg.params))) {
    unsafe = `the weights became non-finite by step ${run.step}`;
    reason = "unsafe";
  }
  const result = (message: string, extra: Partial<TrainResult>): TrainResult => ({
    reason,
    message,
    startStep: cfg.startStep,
    step: net.info.step,
    losses: run.losses,
    logDir: cfg.logDir,
    warnings: out.warnings,
    lastCheckpoint: run.lastCheckpoint,
    ...extra,
  });
  if (reason === "unsafe") {
    const rolledTo = rollBack(net, run.lastCheckpoint, run.start, cfg.startStep);
    const message =
      `training stopped: ${unsafe}. The network was rolled back to ${rolledTo}. ` +
      `Try a lower learning rate (e.g. a tenth: good hypernetwork rates are often 5e-6 or less), gradient clipping ` +
      `(gradientClipping: "norm", clipValue: "1"), a larger batch or gradient accumulation; then resume from ${run.lastCheckpoint ?? "the start"}.`;
    out.log(message);
    return result(message, { step: net.info.step });
  }

  const last = run.lastCheckpoint;
  if (run.step > cfg.startStep && !(last && readCheckpointState(last)?.step === run.step && last !== opts.resumeFrom))
    await saveCheckpoint(run, true);
  let finalFile: string | undefined;
  if (opts.finalFile) {
    if (opts.resumeFrom && path.resolve(opts.finalFile) === path.resolve(opts.resumeFrom) && !opts.overwrite) {
      out.warn(
        `finalFile ${opts.finalFile} is the file training resumed from; not replacing it (pass overwrite: true). The result is in ${run.lastCheckpoint}`,
      );
    } else {
      await saveHypernetworkAsync(net, opts.finalFile, { overwrite: opts.overwrite });
      if (cfg.saveOptimizer) writeOptimizerFile(opts.finalFile, await run.optimizer.exportState(), { overwrite: true });
      finalFile = opts.finalFile;
    }
  }
  const why =
    reason === "stopped"
      ? `stopped at step ${run.step}`
      : reason === "schedule-end"
        ? `the learning-rate schedule ended at step ${run.step}`
        : `reached Max steps ${cfg.maxSteps}`;
  const message = `training ${why}; saved ${run.lastCheckpoint ?? "nothing (no step was taken)"}${finalFile ? ` and ${finalFile}` : ""}`;
  out.log(message);
  return result(message, { finalFile, step: run.step });
}
