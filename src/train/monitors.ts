/**
 * The trainer's optional measurements, behind two calls in the loop: the validation loss on a
 * fixed batch (`validation.ts`) and the per-module gradient and output norms (`module-norms.ts`).
 * Both are off unless `validationEvery` / `normsEvery` are set; when off, nothing is built and
 * the calls return at once. Neither draws from the training's generators, so the losses of a run
 * are the same with them on or off.
 */
import type * as tf from "@tensorflow/tfjs";
import type { TrainingDataset } from "../data/dataset";
import type { NoiseSchedule } from "../diffusion/schedule";
import type { Attachment } from "../hypernet/attach";
import type { Hypernetwork } from "../hypernet/network";
import type { BaseModel } from "../pipeline/base-model";
import { gradientNormsByModule, outputNormsByModule, parameterModules } from "./module-norms";
import { type RunConfig, type TrainOptions, positiveInt } from "./options";
import { ValidationBatch } from "./validation";

/** What the measurements need from a run being set up. */
export interface MonitoredRun {
  base: BaseModel;
  net: Hypernetwork;
  opts: TrainOptions;
  cfg: RunConfig;
  feed: { dataset: TrainingDataset };
  attachment: Attachment;
  noise: NoiseSchedule;
}

/** The measurements of one run; see the module comment. */
export class TrainingMonitors {
  /** Gradient norms of the step being taken, kept until its output norms are measured. */
  private pendingGradients: Record<string, number> | undefined;

  private constructor(
    private readonly run: MonitoredRun,
    private readonly batch: ValidationBatch | undefined,
    private readonly validationEvery: number,
    private readonly normsEvery: number,
    /** The module label of each trained parameter, in the gradients' order. */
    private readonly labels: string[],
  ) {}

  /**
   * Check the options, build the validation batch when either measurement is on, and report the
   * validation loss of the network as it starts (step = the run's start step).
   */
  static async open(run: MonitoredRun): Promise<TrainingMonitors> {
    const validationEvery = positiveInt(run.opts.validationEvery, 0, "validationEvery", 0);
    const normsEvery = positiveInt(run.opts.normsEvery, 0, "normsEvery", 0);
    const labels = parameterModules(run.net).filter((_, i) => run.cfg.trained[i]);
    let batch: ValidationBatch | undefined;
    if (validationEvery > 0 || normsEvery > 0) {
      batch = await ValidationBatch.build(run.base, run.cfg, run.opts, run.opts.validation ?? {}, run.feed.dataset, run.noise);
    }
    const monitors = new TrainingMonitors(run, batch, validationEvery, normsEvery, labels);
    if (validationEvery > 0) await monitors.validate(run.cfg.startStep);
    return monitors;
  }

  /** With the gradients of the step that will make `step` steps done: keep their per-module norms on a norms step. */
  async gradients(step: number, grads: readonly tf.Tensor[]): Promise<void> {
    if (this.normsEvery > 0 && step % this.normsEvery === 0) this.pendingGradients = await gradientNormsByModule(grads, this.labels);
  }

  /** After the update of step `step`: the validation loss and the norms, when due. */
  async afterStep(step: number): Promise<void> {
    const norms = this.normsEvery > 0 && step % this.normsEvery === 0;
    const validate = this.validationEvery > 0 && step % this.validationEvery === 0;
    if (!norms) {
      if (validate) await this.validate(step);
      return;
    }
    // One pass over the fixed batch gives the output norms, and the validation loss when that is due too.
    const { base, net } = this.run;
    let loss: Awaited<ReturnType<ValidationBatch["evaluate"]>> | undefined;
    const output = await outputNormsByModule(base.unet, net, async () => {
      loss = await this.batch!.evaluate(base.unet, this.run.attachment);
    });
    this.run.opts.onNorms?.({ step, gradient: this.pendingGradients ?? {}, output });
    this.pendingGradients = undefined;
    if (validate && loss) this.run.opts.onValidation?.({ step, ...loss });
  }

  private async validate(step: number): Promise<void> {
    const result = await this.batch!.evaluate(this.run.base.unet, this.run.attachment);
    this.run.opts.onValidation?.({ step, ...result });
  }

  /** Free the validation batch. */
  dispose(): void {
    this.batch?.dispose();
  }
}
