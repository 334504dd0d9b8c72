/**
 * One demo trial: train the demo's pastel network with some settings changed and score the demo's
 * prompts at the chosen multipliers — what `npm run demo` does, minus the untrained samples, the
 * charts and the preview of every multiplier. The ×0 scores (the base model alone) do not depend on
 * the network, so they are cached under the output folder per sampling setting.
 *
 *   npx ts-node --transpile-only scripts/demo-trial.ts '{"learningRate":"2e-3:75","maxSteps":75}' [--label NAME]
 *       [--mult 0.5,1] [--out out/trials] [--zero-last | --no-zero-last] [--dropout 0,0.1,0] [--workers 2]
 *       [--sample-batch 12]
 *
 * The JSON object overrides fields of DEMO_SETTINGS (`--zero-last` / `--no-zero-last` override its
 * `zeroLastLayer`). Prints one line per multiplier and appends a
 * JSON line to OUT/trials.jsonl (settings, scores, seconds, load average at start and end).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { useBackend } from "../src/backend/backend";
import { preprocess } from "../src/data/preprocess";
import { scoreImages, type MultiplierScore } from "../src/demo/report";
import { DEMO_SETTINGS, type DemoSettings, demoPrompts, demoTrainOptions } from "../src/demo/settings";
import { createHypernetwork } from "../src/hypernet/network";
import { TINY_MODEL_DIR, loadTinyModel } from "../src/tiny/model";
import { TinySamplerPool } from "../src/tiny/sample-pool";
import { writeSampleFolder } from "../src/tiny/shapes-data/image-folder";
import { TINY_SIZE } from "../src/tiny/shapes-data/shapes";
import { pastelStyleSet } from "../src/tiny/shapes-data/style";
import { train } from "../src/train/trainer";
import { previewGrid } from "../src/demo/report";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const over = JSON.parse(process.argv[2] ?? "{}") as Partial<DemoSettings>;
  const st: DemoSettings = { ...DEMO_SETTINGS, ...over };
  const out = arg("--out") ?? "out/trials";
  const label = arg("--label") ?? JSON.stringify(over);
  const mults = (arg("--mult") ?? "1").split(",").map(Number);
  const zeroLast = process.argv.includes("--zero-last") ? true : process.argv.includes("--no-zero-last") ? false : st.zeroLastLayer;
  const dropout = arg("--dropout")?.split(",").map(Number);
  const workers = Number(arg("--workers") ?? 2);
  const load0 = os.loadavg();
  const t0 = Date.now();
  await useBackend("wasm", { quiet: true });
  fs.mkdirSync(out, { recursive: true });

  const trainDir = path.join(out, `train-${st.styleImages}-${st.styleSeed}`);
  if (!fs.existsSync(`${trainDir}.done`)) {
    const imgDir = path.join(out, `style-${st.styleImages}-${st.styleSeed}`);
    fs.rmSync(imgDir, { recursive: true, force: true });
    fs.rmSync(trainDir, { recursive: true, force: true });
    await writeSampleFolder(imgDir, pastelStyleSet(st.styleImages, st.styleSeed), { prefix: "pastel-" });
    await preprocess(imgDir, trainDir, { width: TINY_SIZE, height: TINY_SIZE, existingCaption: "copy", filenameCaption: false });
    fs.writeFileSync(`${trainDir}.done`, "");
  }

  const poolP = TinySamplerPool.start({ workers });
  const base = loadTinyModel(TINY_MODEL_DIR);
  const net = createHypernetwork({
    name: "pastel",
    dims: st.dims === "all" ? base.contextDims : st.dims,
    layerStructure: st.layerStructure,
    activation: st.activation,
    layerNorm: st.layerNorm,
    weightInit: st.weightInit,
    seed: st.trainSeed,
    zeroLastLayer: zeroLast,
    ...(dropout ? { useDropout: true, dropoutStructure: dropout } : {}),
  });
  const set = demoPrompts(st.prompts);
  const prompts = set.map((p) => p.prompt);
  const expected = set.map((p) => p.expected);
  const batchSize = Number(arg("--sample-batch") ?? Math.ceil(st.prompts / workers));
  const sampleOpts = { seed: st.sampleSeed, steps: st.sampleSteps, guidanceScale: st.cfg, batchSize };
  const pool = await poolP;
  const scores: MultiplierScore[] = [];
  try {
    // ×0: cached per sampling setting.
    const key = `x0-${st.prompts}-${st.sampleSeed}-${st.sampleSteps}-${st.cfg}-${batchSize}.json`;
    const cache = path.join(out, key);
    let x0: MultiplierScore;
    if (fs.existsSync(cache)) x0 = JSON.parse(fs.readFileSync(cache, "utf8")) as MultiplierScore;
    else {
      const t = Date.now();
      const imgs = await pool.sample(prompts, sampleOpts);
      x0 = scoreImages(0, imgs, expected);
      fs.writeFileSync(cache, JSON.stringify(x0));
      fs.writeFileSync(path.join(out, key.replace(".json", ".png")), await previewGrid(prompts, [0], new Map([[0, imgs]])));
      console.log(`×0 sampled in ${((Date.now() - t) / 1000).toFixed(0)} s`);
    }
    scores.push(x0);

    const tt = Date.now();
    const run = train(base, net, { ...demoTrainOptions(st, trainDir, path.join(out, "run")), overwrite: true, progress: false });
    const res = await run.done;
    const trainSecs = (Date.now() - tt) / 1000;
    const images = new Map<number, Uint8Array[]>();
    const ts = Date.now();
    for (const m of mults) {
      const entry = { network: net, multiplier: m, ...(st.applyTimesteps ? { timesteps: st.applyTimesteps } : {}) };
      const imgs = await pool.sample(prompts, { ...sampleOpts, networks: [entry] });
      images.set(m, imgs);
      scores.push(scoreImages(m, imgs, expected));
    }
    const sampleSecs = (Date.now() - ts) / 1000;
    const slug = label.replace(/[^a-zA-Z0-9.-]+/g, "_").slice(0, 80);
    fs.writeFileSync(path.join(out, `grid-${slug}.png`), await previewGrid(prompts, mults, images));
    const record = {
      label,
      settings: over,
      sampleBatch: batchSize,
      zeroLast,
      dropout: dropout ?? null,
      steps: res.step,
      reason: res.reason,
      scores,
      trainSecs: Math.round(trainSecs),
      sampleSecs: Math.round(sampleSecs),
      totalSecs: Math.round((Date.now() - t0) / 1000),
      load: [load0[0], os.loadavg()[0]].map((x) => Number(x.toFixed(1))),
      at: new Date().toISOString(),
    };
    fs.appendFileSync(path.join(out, "trials.jsonl"), JSON.stringify(record) + "\n");
    const fmt = (s: MultiplierScore) =>
      `×${s.multiplier}: style ${s.styleScore.toFixed(3)} colour ${(100 * s.colorAccuracy).toFixed(0)}% shape ${(100 * s.shapeAccuracy).toFixed(0)}%`;
    console.log(
      `${label}\n  ${scores.map(fmt).join("\n  ")}\n  train ${record.trainSecs} s, sample ${record.sampleSecs} s, load ${record.load.join(" → ")}`,
    );
  } finally {
    net.dispose();
    base.dispose();
    await pool.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
