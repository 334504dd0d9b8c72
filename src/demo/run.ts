/**
 * `npm run demo` — the main job, start to finish, on the embedded tiny model:
 *
 *   1. pick the best backend (wasm on a plain CPU machine);
 *   2. write the "pastel chalk" style set (every colour mixed halfway to white, on black, captioned
 *      with content only) as an image folder, and preprocess it into a training folder, as a user
 *      does with their pictures;
 *   3. create a hypernetwork with a (k, v) module pair on the chosen attention widths of the tiny
 *      UNet (the settings' `dims`), starting as the identity (`zeroLastLayer`);
 *   4. sample a fixed set of prompts with the untrained network (at ×0 only when it is the
 *      identity: then every multiplier draws the base model's images);
 *   5. train it with an A1111 learning-rate schedule, printing progress (with sampling workers,
 *      step 4 runs in them while the main thread trains);
 *   6. sample the same prompts (same seed) with the trained network — in every sampling step, as
 *      A1111 applies it; with `applyTimesteps` set, only in those steps (a timestep gate), and then
 *      also in every step for comparison;
 *   7. score every image: the style (`styleScore`, how pale the drawn colours are) and the content
 *      (`contentAccuracy`: does the image still show the colour and shape the prompt names?).
 *
 * Everything goes to `out/demo/` (or `--out DIR`):
 *
 *   pastel.pt               the trained network, A1111 layout (loads in A1111 and ComfyUI)
 *   loss.csv                A1111's hypernetwork_loss.csv: step,epoch,epoch_step,loss,learn_rate
 *   loss.html, loss.png     the loss chart (Plotly page with the bundle embedded; PNG drawn as SVG)
 *   preview-before.png      the prompts × multipliers 0, 0.5, 1 with the untrained network
 *   preview-after.png       the same with the trained network
 *   summary.json            style score and colour/shape accuracy per multiplier, settings, timings
 *   style-images/ train/ run/   the style set, the preprocessed training folder, the trainer's run folder
 *
 * `--quick` runs the same pipeline in a few seconds (tiny settings) to check that it works. The
 * settings are in `settings.ts`, the scores, table and pictures in `report.ts`. Sampling is spread
 * over one worker thread per core (`TinySamplerPool`, src/tiny/sample-pool.ts): the same images as
 * one thread, sooner.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { formatBackendReport, useBackend } from "../backend/backend";
import { preprocess } from "../data/preprocess";
import { attachHypernetworks } from "../hypernet/attach";
import { createHypernetwork, type Hypernetwork } from "../hypernet/network";
import type { LossPoint } from "../kernel-helpers/charts";
import type { BaseModel } from "../pipeline/base-model";
import { loadTinyModel, readTinyConfig, TINY_MODEL_DIR } from "../tiny/model";
import { sampleTiny } from "../tiny/sample";
import { TinySamplerPool, defaultSamplerWorkers } from "../tiny/sample-pool";
import { writeSampleFolder } from "../tiny/shapes-data/image-folder";
import { TINY_SIZE } from "../tiny/shapes-data/shapes";
import { pastelStyleSet, styleScore } from "../tiny/shapes-data/style";
import { train, type TrainResult } from "../train/trainer";
import { type DemoSummary, demoChecks, previewGrid, scoreImages, summaryLines, writeLossChart } from "./report";
import { DEMO_SETTINGS, type DemoSettings, QUICK_SETTINGS, demoPrompts, demoTrainOptions } from "./settings";

export type { DemoSummary, MultiplierScore } from "./report";
export { formatSummaryTable } from "./report";
export { DEMO_SETTINGS, QUICK_SETTINGS, demoPrompts, type DemoSettings } from "./settings";

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Output folder (the CLI's `--out`, default `out/demo`). */
  out: string;
  /** Use {@link QUICK_SETTINGS} (the CLI's `--quick`). */
  quick?: boolean;
  /** Override individual settings (after `quick` is applied). */
  settings?: Partial<DemoSettings>;
  /** The base model folder (default: the embedded tiny model). */
  modelDir?: string;
  /** Print lines here (default console.log). */
  log?: (line: string) => void;
  /** The trainer's progress line on stderr (default true). */
  progress?: boolean;
  /**
   * Sampling worker threads (default one per core; 1 = sample on the main thread). Images are the
   * same for any number: the prompts are cut into `ceil(prompts / workers)`-image batches either way.
   */
  workers?: number;
}

/** One demo run in progress: its settings, where it writes, how it prints. */
interface Run {
  st: DemoSettings;
  out: string;
  file(name: string): string;
  log(line: string): void;
  /** Seconds since the start, for the `[12 s]` prefixes. */
  secs(): string;
  /** Sampling workers, when more than one core is used (see `DemoOptions.workers`). */
  pool?: TinySamplerPool;
  /** Images per UNet batch: the prompts split evenly over the workers. */
  batchSize: number;
}

/** Run the demo, printing each step; returns the summary (also written as `summary.json`). */
export async function runDemo(opts: DemoOptions): Promise<DemoSummary> {
  const t0 = Date.now();
  const st0 = { ...(opts.quick ? QUICK_SETTINGS : DEMO_SETTINGS), ...(opts.settings ?? {}) };
  const workers = opts.workers ?? defaultSamplerWorkers();
  if (!Number.isSafeInteger(workers) || workers < 1) throw new Error(`demo: workers must be a positive integer, got ${workers}`);
  const r: Run = {
    st: st0,
    batchSize: Math.ceil(st0.prompts / workers),
    out: opts.out,
    file: (name) => path.join(opts.out, name),
    log: opts.log ?? ((l: string) => console.log(l)),
    secs: () => `${((Date.now() - t0) / 1000).toFixed(0)} s`,
  };
  const { st, file, log } = r;

  const report = await useBackend("auto", { quiet: true });
  log(formatBackendReport(report));

  // The demo owns these paths inside the output folder and replaces them on every run.
  fs.mkdirSync(r.out, { recursive: true });
  for (const d of ["style-images", "train", "run"]) fs.rmSync(file(d), { recursive: true, force: true });
  for (const f of ["pastel.pt", "loss.csv", "loss.html", "loss.png", "preview-before.png", "preview-after.png", "summary.json"])
    fs.rmSync(file(f), { force: true });

  // 1. The style set as an image folder with content-only captions, then preprocessed.
  const modelDir = opts.modelDir ?? TINY_MODEL_DIR;
  const styleSet = pastelStyleSet(st.styleImages, st.styleSeed);
  await writeSampleFolder(file("style-images"), styleSet, { prefix: "pastel-" });
  const pre = await preprocess(file("style-images"), file("train"), {
    width: TINY_SIZE,
    height: TINY_SIZE,
    existingCaption: "copy",
    filenameCaption: false,
  });
  const styleSetScore = styleScore(styleSet.map((s) => s.pixels));
  log(
    `[${r.secs()}] style set: ${styleSet.length} pastel images → ${pre.made.length} training images in ${file("train")} (their style score: ${styleSetScore.toFixed(3)})`,
  );

  // 2. Base model and a new hypernetwork with one module pair per attention width; the sampling
  //    workers load their own copies meanwhile.
  const poolStart = workers > 1 ? TinySamplerPool.start({ modelDir, workers }) : undefined;
  poolStart?.catch(() => {}); // awaited below; no unhandled rejection while the model loads
  let base: BaseModel;
  try {
    base = loadTinyModel(modelDir);
  } catch (e) {
    await (await poolStart?.catch(() => undefined))?.close();
    throw e;
  }
  const widths = base.contextDims;
  const dims = st.dims === "all" ? widths : st.dims;
  const unknown = dims.filter((d) => !widths.includes(d));
  if (unknown.length) {
    base.dispose();
    await (await poolStart?.catch(() => undefined))?.close();
    throw new Error(
      `demo: settings.dims ${JSON.stringify(unknown)} are not attention widths of ${modelDir} (it has ${widths.join(", ")}); use "all" or some of those`,
    );
  }
  const net = createHypernetwork({
    name: "pastel",
    dims,
    layerStructure: st.layerStructure,
    activation: st.activation,
    layerNorm: st.layerNorm,
    weightInit: st.weightInit,
    zeroLastLayer: st.zeroLastLayer,
    seed: st.trainSeed,
  });
  try {
    if (poolStart) {
      r.pool = await poolStart;
      log(`[${r.secs()}] sampling on ${r.pool.size} worker threads (one wasm instance each), ${r.batchSize} images per batch`);
    }
    const cfg = readTinyConfig(modelDir);
    const trainedSteps = typeof cfg.training?.steps === "number" ? cfg.training.steps : null;
    log(
      `[${r.secs()}] base model ${base.name} (${trainedSteps ?? "?"} training steps${base.checkpointHash ? `, hash ${base.checkpointHash}` : ""}); hypernetwork "${net.name}": dims ${dims.join(", ")}, layers [${st.layerStructure.join(", ")}] ${st.activation}${st.layerNorm ? " + layer norm" : ""}, ${net.parameterCount().toLocaleString("en-US")} parameters`,
    );
    const summary = await trainAndScore(r, opts, base, net);
    const full: DemoSummary = {
      backend: report.backend,
      model: { dir: modelDir, name: base.name, hash: base.checkpointHash, trainedSteps },
      settings: st,
      prompts: summary.prompts,
      styleSetScore,
      ...summary.scores,
      seconds: Math.round((Date.now() - t0) / 1000),
    };
    fs.writeFileSync(file("summary.json"), JSON.stringify(full, null, 2) + "\n");
    for (const line of summaryLines(full, summary.message, r.out)) log(line);
    return full;
  } finally {
    net.dispose();
    base.dispose();
    await r.pool?.close();
  }
}

/** Steps 3–7: sample before, train, sample after (gated and every step), write the pictures, score. */
async function trainAndScore(
  r: Run,
  opts: DemoOptions,
  base: BaseModel,
  net: Hypernetwork,
): Promise<{
  prompts: string[];
  message: string;
  scores: Pick<DemoSummary, "training" | "before" | "after" | "afterEveryStep" | "checks" | "files">;
}> {
  const { st, file, log } = r;
  // 3. Before: the fixed prompts with the untrained network.
  const set = demoPrompts(st.prompts);
  const prompts = set.map((p) => p.prompt);
  const expected = set.map((p) => p.expected);
  log(
    `[${r.secs()}] sampling ${prompts.length} prompts × multipliers ${st.multipliers.join(", ")} with the untrained network (Euler a, ${st.sampleSteps} steps, CFG ${st.cfg})`,
  );
  // With workers, the untrained network's images are drawn in them while the main thread trains:
  // they sample a copy (the same seeded weights), so training cannot change what they draw.
  // With zeroLastLayer the untrained network is exactly the identity: every multiplier draws the
  // base model's images, so only ×0 is sampled and stands for all of them.
  const identity = st.zeroLastLayer;
  const sampleBefore = async (n: Hypernetwork): Promise<Map<number, Uint8Array[]>> => {
    if (!identity) return sampleAt(r, base, n, prompts, st.applyTimesteps);
    const images = (await sampleAt(r, base, n, prompts, st.applyTimesteps, undefined, [0])).get(0)!;
    return new Map(st.multipliers.map((m) => [m, images]));
  };
  if (identity) log("  (the untrained network is the identity — zeroLastLayer — so ×0 stands for every multiplier)");
  let before: Map<number, Uint8Array[]>;
  let trained: Awaited<ReturnType<typeof trainNetwork>>;
  if (r.pool) {
    const untrained = untrainedCopy(net, st);
    try {
      const sampling = sampleBefore(untrained);
      sampling.catch(() => {}); // awaited below, after training has started
      trained = await trainNetwork(r, base, net, opts.progress ?? true);
      before = await sampling;
    } finally {
      untrained.dispose();
    }
  } else {
    before = await sampleBefore(net);
    trained = await trainNetwork(r, base, net, opts.progress ?? true);
  }
  const { result, points, seconds } = trained;

  // 4. The loss chart.
  await writeLossChart(points, net.name, st.maxSteps, { html: file("loss.html"), png: file("loss.png") });

  // 5. After: the same prompts and seed with the trained network. At ×0 the network adds
  //    mlp(x)·0 = 0 to every context, so those images are the base model's, sampled once above.
  log(`[${r.secs()}] sampling with the trained network`);
  const base0 = new Map(before.has(0) ? [[0, before.get(0)!]] : []);
  const after = await sampleAt(r, base, net, prompts, st.applyTimesteps, base0);
  fs.writeFileSync(file("preview-before.png"), await previewGrid(prompts, st.multipliers, before));
  fs.writeFileSync(file("preview-after.png"), await previewGrid(prompts, st.multipliers, after));
  // For comparison: the same network applied in every step, as A1111 applies it.
  let everyStep: Map<number, Uint8Array[]> | undefined;
  if (st.applyTimesteps) {
    log(`[${r.secs()}] for comparison, the trained network applied in every step (as A1111 does)`);
    everyStep = await sampleAt(r, base, net, prompts, null, base0);
    fs.writeFileSync(file("preview-after-every-step.png"), await previewGrid(prompts, st.multipliers, everyStep));
  }

  // 6. Scores.
  const scores = (images: Map<number, Uint8Array[]>) => st.multipliers.map((m) => scoreImages(m, images.get(m)!, expected));
  const beforeScores = scores(before);
  const afterScores = scores(after);
  return {
    prompts,
    message: result.message,
    scores: {
      training: {
        steps: result.step,
        reason: result.reason,
        firstLoss: points[0]?.loss ?? null,
        lastLoss: points.length ? points.slice(-10).reduce((a, p) => a + p.loss, 0) / Math.min(10, points.length) : null,
        seconds: Math.round(seconds),
      },
      before: beforeScores,
      after: afterScores,
      afterEveryStep: everyStep ? scores(everyStep) : null,
      checks: demoChecks(afterScores, beforeScores[0]!),
      files: {
        hypernetwork: file("pastel.pt"),
        lossCsv: file("loss.csv"),
        lossHtml: file("loss.html"),
        lossPng: file("loss.png"),
        previewBefore: file("preview-before.png"),
        previewAfter: file("preview-after.png"),
        ...(everyStep ? { previewAfterEveryStep: file("preview-after-every-step.png") } : {}),
        summary: file("summary.json"),
        trainingFolder: file("train"),
        runFolder: result.logDir,
      },
    },
  };
}

/** Train `net` on the style set with the demo's settings; copies the loss CSV out of the run folder. */
async function trainNetwork(
  r: Run,
  base: BaseModel,
  net: Hypernetwork,
  progress: boolean,
): Promise<{ result: TrainResult; points: LossPoint[]; seconds: number }> {
  const { st, file, log } = r;
  log(`[${r.secs()}] training: ${st.maxSteps} steps, batch ${st.batchSize}, learning rate "${st.learningRate}"`);
  const t0 = Date.now();
  const points: LossPoint[] = [];
  const run = train(base, net, {
    ...demoTrainOptions(st, file("train"), file("run")),
    finalFile: file("pastel.pt"),
    progress,
    onStep: (e) => points.push({ step: e.step, loss: e.loss, lr: e.lr }),
    onLog: (m) => log(`  ${m}`),
  });
  const result = await run.done;
  const seconds = (Date.now() - t0) / 1000;
  if (result.reason === "unsafe") throw new Error(`demo: ${result.message}`);
  fs.copyFileSync(path.join(result.logDir, "hypernetwork_loss.csv"), file("loss.csv"));
  return { result, points, seconds };
}

/** A fresh network with `net`'s structure and the demo's seed: the untrained weights, for sampling beside training. */
function untrainedCopy(net: Hypernetwork, st: DemoSettings): Hypernetwork {
  return createHypernetwork({
    name: net.name,
    dims: net.dims,
    layerStructure: st.layerStructure,
    activation: st.activation,
    layerNorm: st.layerNorm,
    weightInit: st.weightInit,
    zeroLastLayer: st.zeroLastLayer,
    seed: st.trainSeed,
  });
}

/**
 * Sample the prompts once per multiplier with `net` attached (the same seed for every multiplier),
 * in the workers when there are any, else on the main thread — the same images either way.
 */
async function sampleAt(
  r: Run,
  base: BaseModel,
  net: Hypernetwork,
  prompts: string[],
  gate: [number, number] | null,
  reuse?: Map<number, Uint8Array[]>,
  multipliers: readonly number[] = r.st.multipliers,
): Promise<Map<number, Uint8Array[]>> {
  const { st, log } = r;
  const out = new Map<number, Uint8Array[]>();
  for (const m of multipliers) {
    const again = reuse?.get(m);
    if (again) {
      out.set(m, again);
      continue;
    }
    const t0 = Date.now();
    const entry = { network: net, multiplier: m, ...(gate ? { timesteps: gate } : {}) };
    const opts = { seed: st.sampleSeed, steps: st.sampleSteps, guidanceScale: st.cfg, batchSize: r.batchSize };
    if (r.pool) out.set(m, await r.pool.sample(prompts, { ...opts, networks: [entry] }));
    else {
      const attachment = attachHypernetworks(base.unet, [entry]);
      try {
        out.set(m, await sampleTiny(base, prompts, opts));
      } finally {
        attachment.detach();
      }
    }
    log(
      `  sampled ${prompts.length} prompts at ×${m}${gate ? ` (network at t ∈ [${gate[0]}, ${gate[1]}))` : ""} (${((Date.now() - t0) / 1000).toFixed(0)} s)`,
    );
  }
  return out;
}
