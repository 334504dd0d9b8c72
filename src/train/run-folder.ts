/**
 * The run folder (A1111: `textual_inversion/<date>/<name>`) and everything training writes in it:
 *
 *   hypernetworks/<name>-<step>.pt                 the network after exactly <step> steps
 *   hypernetworks/<name>-<step>.pt.optim           its AdamW state (keyed to that .pt's hash)
 *   hypernetworks/<name>-<step>.pt.state.json      seed, step, schedule position, loss average
 *   images/<name>-<step>.png                       previews
 *   hypernetwork_loss.csv                          step, epoch, epoch_step, loss, learn_rate
 *   settings-YYYY-MM-DD-HH-MM-SS.json              everything the run was started with
 *
 * The paths come from `run-files.ts` (a name read from a file never chooses the folder). Every file
 * is written atomically, and the state file last, so a checkpoint whose state file exists is complete.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { TrainingDataset } from "../data/dataset";
import { type HypernetworkFile, readHypernetworkFile, saveHypernetworkAsync } from "../hypernet/file";
import type { Hypernetwork } from "../hypernet/network";
import { writeOptimizerFile } from "../hypernet/optim-file";
import { removeStaleTempFiles, writeFileAtomic } from "../io/atomic";
import { loadStateDict } from "../nn/module";
import type { BaseModel } from "../pipeline/base-model";
import type { AdamW } from "./adamw";
import { type ClipMode, type RunConfig, type TrainOptions, today } from "./options";
import { checkpointFile, previewFile } from "./run-files";

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
  for (const k of ["step", "seed", "stepsInAverage"])
    if (!wholeNumber(k)) throw fail(`"${k}" is ${JSON.stringify(o[k]) ?? "missing"}, not a whole number ≥ 0`);
  if (o.lossAverage !== null && !Number.isFinite(o.lossAverage))
    throw fail(`"lossAverage" is ${JSON.stringify(o.lossAverage) ?? "missing"}, not a number or null`);
  return o as unknown as CheckpointState;
}

/** Copy a file's weights into a live network of the same structure. */
export function assignWeights(net: Hypernetwork, hf: HypernetworkFile, where: string): void {
  for (const [dim, pair] of hf.weights) {
    const mods = net.pair(dim);
    if (!mods) throw new Error(`${where}: has dim ${dim}, which the network does not`);
    pair.forEach((sd, j) => {
      loadStateDict(
        mods[j]!,
        { keys: () => sd.keys(), get: (k) => sd.get(k)!, shapeOf: (k) => sd.get(k)?.shape },
        { where: `${where}: dim ${dim} ${j === 0 ? "k" : "v"}` },
      );
    });
  }
}

/** `YYYY-MM-DD-HH-MM-SS` of a date, for the settings file's name. */
function stamp(d = new Date()): string {
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${today(d)}-${p(d.getHours())}-${p(d.getMinutes())}-${p(d.getSeconds())}`;
}

/** What a run's settings JSON records besides the options: the model, the data and the network. */
export interface RunSettings {
  base: BaseModel;
  net: Hypernetwork;
  dataset: TrainingDataset;
  opts: TrainOptions;
  startStep: number;
  batchSize: number;
  gradientAccumulation: number;
  stepsPerEpoch: number;
}

/** The fields of a checkpoint's state file that the loop knows (the rest come from the run config). */
export type CheckpointProgress = Pick<
  CheckpointState,
  "step" | "lrEntry" | "lr" | "batchSize" | "gradientAccumulation" | "stepsPerEpoch" | "datasetSize" | "lossAverage" | "stepsInAverage"
>;

/** A run folder opened for writing; see the module comment. */
export class RunFolder {
  /** `hypernetwork_loss.csv` (written only when `csvEvery` > 0). */
  readonly csvFile: string;

  private constructor(private readonly cfg: RunConfig) {
    this.csvFile = path.join(cfg.logDir, "hypernetwork_loss.csv");
  }

  /**
   * Create the folder, remove temp files an interrupted save left behind, and start the loss CSV —
   * rows past the start step belong to an abandoned run and go.
   */
  static open(cfg: RunConfig, log: (m: string) => void): RunFolder {
    const folder = new RunFolder(cfg);
    fs.mkdirSync(path.join(cfg.logDir, "hypernetworks"), { recursive: true });
    const stale = removeStaleTempFiles(path.join(cfg.logDir, "hypernetworks"));
    if (stale.length) log(`removed ${stale.length} temp file(s) left by an interrupted save`);
    const csv = folder.csvFile;
    if (cfg.csvEvery > 0) {
      if (fs.existsSync(csv)) {
        const lines = fs
          .readFileSync(csv, "utf8")
          .split("\n")
          .filter((l) => l.trim());
        const keep = lines.filter((l, i) => i === 0 || Number(l.split(",")[0]) <= cfg.startStep);
        if (keep.length !== lines.length) writeFileAtomic(csv, [Buffer.from(keep.join("\n") + "\n")], { overwrite: true });
      } else {
        fs.writeFileSync(csv, "step,epoch,epoch_step,loss,learn_rate\n");
      }
    }
    return folder;
  }

  /** Write `settings-<date-time>.json`: the options as given plus what they resolved to. */
  writeSettings(s: RunSettings): void {
    const { base, net, dataset: ds, opts } = s;
    const settings = {
      datetime: new Date().toISOString(),
      model_name: base.name,
      model_hash: base.checkpointHash,
      num_of_dataset_images: ds.imageCount,
      dataset_size: ds.length,
      hypernetwork_name: net.name,
      layer_structure: net.info.layerStructure,
      activation_func: net.info.activation,
      weight_init: net.info.weightInit,
      add_layer_norm: net.info.layerNorm,
      use_dropout: net.info.useDropout,
      dropout_structure: net.info.dropoutStructure,
      initial_step: s.startStep,
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => typeof v !== "function")),
      batch_size_used: s.batchSize,
      gradient_accumulation_used: s.gradientAccumulation,
      steps_per_epoch: s.stepsPerEpoch,
    };
    writeFileAtomic(path.join(this.cfg.logDir, `settings-${stamp()}.json`), [Buffer.from(JSON.stringify(settings, null, 2))], {
      overwrite: true,
    });
  }

  /** Append one CSV row (A1111's columns) when this step is a multiple of `csvEvery`. */
  appendLoss(step: number, epoch: number, epochStep: number, loss: number, lr: number): void {
    if (this.cfg.csvEvery > 0 && step % this.cfg.csvEvery === 0)
      fs.appendFileSync(this.csvFile, `${step},${epoch},${epochStep},${loss.toFixed(7)},${lr}\n`);
  }

  /**
   * Save the checkpoint of `progress.step`: the `.pt`, its `.optim` (unless `saveOptimizer` is off)
   * and then the `.state.json`. Call it only with finite weights, so every checkpoint is one a NaN
   * stop may roll back to. A file at this step from an abandoned run (killed after it) is stale and
   * replaced.
   */
  async saveCheckpoint(
    net: Hypernetwork,
    base: BaseModel,
    optimizer: AdamW,
    progress: CheckpointProgress,
  ): Promise<{ file: string; optimFile?: string }> {
    const { cfg } = this;
    const file = checkpointPath(cfg.logDir, cfg.name, progress.step);
    net.info.sdCheckpoint = base.checkpointHash;
    net.info.sdCheckpointName = base.name;
    await saveHypernetworkAsync(net, file, { overwrite: true });
    let optimFile: string | undefined;
    if (cfg.saveOptimizer) optimFile = writeOptimizerFile(file, await optimizer.exportState(), { overwrite: true });
    const state: CheckpointState = {
      format: "hypernet-lab/train-state",
      version: 1,
      name: cfg.name,
      step: progress.step,
      seed: cfg.seed,
      learningRate: cfg.lrText,
      lrEntry: progress.lrEntry,
      lr: progress.lr,
      clipValue: cfg.clipText,
      gradientClipping: cfg.clipMode,
      batchSize: progress.batchSize,
      gradientAccumulation: progress.gradientAccumulation,
      stepsPerEpoch: progress.stepsPerEpoch,
      datasetSize: progress.datasetSize,
      lossAverage: progress.lossAverage,
      stepsInAverage: progress.stepsInAverage,
      rng: "derived-from-seed-and-step",
      savedAt: new Date().toISOString(),
    };
    writeFileAtomic(`${file}.state.json`, [Buffer.from(JSON.stringify(state, null, 2))], { overwrite: true });
    return optimFile ? { file, optimFile } : { file };
  }

  /** Write the preview of `step` as `images/<name>-<step>.png`; returns its path. */
  savePreview(step: number, png: Buffer): string {
    const file = previewFile(this.cfg.logDir, this.cfg.name, step);
    writeFileAtomic(file, [png], { overwrite: true });
    return file;
  }
}

/**
 * Put `net` back to the last good state after an unsafe stop: the checkpoint `lastCheckpoint`
 * (every one the run wrote, and the one it resumed from, was checked finite), or else `start`, the
 * weights it started with. Returns what it rolled back to, in words.
 */
export function rollBack(net: Hypernetwork, lastCheckpoint: string | undefined, start: HypernetworkFile, startStep: number): string {
  if (lastCheckpoint) {
    const hf = readHypernetworkFile(lastCheckpoint);
    assignWeights(net, hf, lastCheckpoint);
    net.info.step = hf.info.step;
    return lastCheckpoint;
  }
  assignWeights(net, start, "the starting weights");
  net.info.step = startStep;
  return `the starting weights (step ${startStep}; no checkpoint was written yet)`;
}
