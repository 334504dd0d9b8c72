/**
 * Evaluate the tiny base model: does it draw what the prompt names?
 *
 *     npm run eval-base -- [--model models/tiny] [--n 64] [--seed 1234] [--sampler "Euler a"]
 *                          [--steps 24] [--cfg 4] [--json models/tiny/eval.json] [--grid out/tiny-eval.png]
 *                          [--workers N]   (sampling threads, default one per core; the images are
 *                                           bit-identical for any N — see src/tiny/sample-pool.ts)
 *
 * The prompts are the captions of dataset samples 0…n−1 drawn with the held-out data seed 2024 (the
 * model trained on seed 7's stream). Each generated image goes through `classifyImage` — the same
 * pixel-statistics classifier the tests check against ground-truth dataset images — and counts as
 * right for colour when its dominant shape colour is the one the prompt names, and right for shape
 * when its largest object best matches the named shape's template. Also reported: the
 * classifier's accuracy on the ground-truth images of the same prompts (should be ~100%), and
 * background and count accuracy of the samples.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import sharp from "sharp";
import * as tf from "@tensorflow/tfjs";
import { useBackend, type BackendChoice } from "../src/backend/backend";
import { TinySamplerPool, defaultSamplerWorkers } from "../src/tiny/sample-pool";
import { encodePngFrom } from "../src/io/png";
import type { SamplerName } from "../src/diffusion/sampler-names";
import { loadTinyModel, TINY_MODEL_DIR } from "../src/tiny/model";
import { classifyImage, contentAccuracy } from "../src/tiny/shapes-data/classify";
import { sampleTiny } from "../src/tiny/sample";
import { TINY_SIZE, shapeSamples } from "../src/tiny/shapes-data/shapes";

/** Held-out data seed for the eval prompts. */
const EVAL_DATA_SEED = 2024;

interface Args {
  model: string;
  n: number;
  seed: number;
  sampler: SamplerName;
  steps: number;
  cfg: number;
  json: string;
  grid: string;
  backend: BackendChoice;
  /** Sampling worker threads (1 = the main thread). */
  workers: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    model: TINY_MODEL_DIR,
    n: 64,
    seed: 1234,
    sampler: "Euler a",
    steps: 24,
    cfg: 4,
    json: "",
    grid: "out/tiny-eval.png",
    backend: "wasm",
    workers: defaultSamplerWorkers(),
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!.replace(/^--/, "");
    const v = argv[++i];
    if (v === undefined) throw new Error(`--${k} needs a value`);
    if (k === "model" || k === "json" || k === "grid") a[k] = v;
    else if (k === "sampler") a.sampler = v as SamplerName;
    else if (k === "backend") a.backend = v as BackendChoice;
    else if (k === "n" || k === "seed" || k === "steps" || k === "cfg" || k === "workers") {
      const x = Number(v);
      if (!Number.isFinite(x)) throw new Error(`--${k} needs a number, got ${v}`);
      a[k] = x;
    } else throw new Error(`unknown option --${k} (see the header of scripts/eval-base.ts)`);
  }
  if (!a.json) a.json = path.join(a.model, "eval.json");
  return a;
}

/** Write images side by side as a PNG grid (8 per row), upscaled 3× for viewing. */
async function writeGrid(file: string, images: Uint8Array[]): Promise<void> {
  const cols = 8;
  const rows = Math.ceil(images.length / cols);
  const s = TINY_SIZE;
  const buf = Buffer.alloc(cols * s * rows * s * 3);
  images.forEach((img, k) => {
    const gx = k % cols;
    const gy = Math.floor(k / cols);
    for (let y = 0; y < s; y++) buf.set(img.subarray(y * s * 3, (y + 1) * s * 3), ((gy * s + y) * cols * s + gx * s) * 3);
  });
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(
    file,
    await encodePngFrom(
      sharp(buf, { raw: { width: cols * s, height: rows * s, channels: 3 } }).resize(cols * s * 3, rows * s * 3, { kernel: "nearest" }),
    ),
  );
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  await useBackend(a.backend);
  const base = loadTinyModel(a.model);
  const samples = shapeSamples(EVAL_DATA_SEED, 0, a.n);
  const prompts = samples.map((s) => s.caption);
  const t0 = Date.now();
  const opts = { seed: a.seed, sampler: a.sampler, steps: a.steps, guidanceScale: a.cfg };
  let images: Uint8Array[];
  if (a.workers > 1 && (tf.getBackend() === "wasm" || tf.getBackend() === "cpu")) {
    const pool = await TinySamplerPool.start({ modelDir: a.model, workers: a.workers });
    try {
      images = await pool.sample(prompts, opts);
    } finally {
      await pool.close();
    }
  } else images = await sampleTiny(base, prompts, opts);
  const seconds = (Date.now() - t0) / 1000;
  base.dispose();

  const score = contentAccuracy(
    samples.map((s) => s.scene),
    images,
  );
  const per = samples.map((s, i) => {
    const got = score.perImage[i]!;
    const truth = classifyImage(s.pixels);
    return {
      prompt: s.caption,
      color: got.color,
      shape: got.shape,
      shapeIoU: Number(got.shapeIoU.toFixed(3)),
      background: got.background,
      count: got.count,
      colorOk: got.colorOk,
      shapeOk: got.shapeOk,
      backgroundOk: got.backgroundOk,
      countOk: got.countOk,
      truthOk: truth.color === s.scene.color && truth.shape === s.scene.shape,
    };
  });
  const frac = (f: (r: (typeof per)[number]) => boolean): number => Number((per.filter(f).length / per.length).toFixed(4));
  const config = JSON.parse(fs.readFileSync(path.join(a.model, "config.json"), "utf8")) as { training?: Record<string, unknown> };
  const result = {
    model: path.relative(process.cwd(), a.model) || ".",
    modelSteps: config.training?.steps ?? null,
    prompts: a.n,
    dataSeed: EVAL_DATA_SEED,
    seed: a.seed,
    sampler: a.sampler,
    steps: a.steps,
    cfg: a.cfg,
    colorAccuracy: frac((r) => r.colorOk),
    shapeAccuracy: frac((r) => r.shapeOk),
    backgroundAccuracy: frac((r) => r.backgroundOk),
    countAccuracy: frac((r) => r.countOk),
    classifierOnGroundTruth: frac((r) => r.truthOk),
    samplingSeconds: Number(seconds.toFixed(1)),
    perPrompt: per,
  };
  fs.mkdirSync(path.dirname(a.json), { recursive: true });
  fs.writeFileSync(a.json, JSON.stringify(result, null, 2) + "\n");
  await writeGrid(a.grid, images);
  console.log(
    `tiny model (${result.modelSteps} steps), ${a.n} prompts, ${a.sampler} ${a.steps} steps, CFG ${a.cfg}: ` +
      `colour ${(result.colorAccuracy * 100).toFixed(1)}%, shape ${(result.shapeAccuracy * 100).toFixed(1)}%, ` +
      `background ${(result.backgroundAccuracy * 100).toFixed(1)}%, count ${(result.countAccuracy * 100).toFixed(1)}% ` +
      `(classifier on ground truth: ${(result.classifierOnGroundTruth * 100).toFixed(1)}%); ${seconds.toFixed(0)} s sampling`,
  );
  console.log(`results → ${a.json}; samples → ${a.grid}`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exit(1);
});
