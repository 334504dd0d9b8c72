/**
 * One training step of the embedded tiny base model on wasm: mean time of 3 steps after 2 warm-up steps
 * at the batch given as the first argument (default 8), then the per-kernel totals of one more step
 * (`tf.profile`; nested kernels are counted inside their callers too).
 *
 *     npx ts-node --transpile-only bench/profile-tiny-step.ts 8
 */
import * as tf from "@tensorflow/tfjs";
import { useBackend } from "../src/backend/backend";
import { Rng } from "../src/diffusion/random";
import { sd15Schedule } from "../src/diffusion/schedule";
import { buildTinyModel, defaultTinyConfig } from "../src/tiny/model";
import { registerWasmUnsortedSegmentSum } from "../src/backend/wasm-segment-sum";
import { batchGradients, drawBatch } from "../scripts/train-base-batch";

async function main(): Promise<void> {
  await useBackend("wasm");
  registerWasmUnsortedSegmentSum();
  const batch = Number(process.argv[2] ?? 8);
  const parts = buildTinyModel(defaultTinyConfig(), { trainable: true });
  const vars = [...parts.unet.namedParameters(""), ...parts.textEncoder.namedParameters("")].map(([, p]) => p.value);
  const rng = new Rng(1);
  const schedule = sd15Schedule();
  const opts = { batch, dropout: 0.1, highT: 0.5, snrCap: 20, offsetNoise: 0.1, dataSeed: 7, meanLoss: 0, meanCap: 100 };
  const step = async (): Promise<void> => {
    const { grads } = await batchGradients(parts, vars, drawBatch(opts, 0, rng, schedule, parts.tokenizer), opts.dataSeed, schedule);
    tf.dispose(grads);
  };
  await step();
  await step();
  const t = Date.now();
  for (let i = 0; i < 3; i++) await step();
  console.log(JSON.stringify({ batch, msPerStep: (Date.now() - t) / 3 }));
  const prof = await tf.profile(step);
  const agg = new Map<string, [number, number]>();
  for (const k of prof.kernels) {
    const e = agg.get(k.name) ?? [0, 0];
    e[0] += Number(k.kernelTimeMs) || 0;
    e[1]++;
    agg.set(k.name, e);
  }
  for (const [k, v] of [...agg.entries()].sort((a, b) => b[1][0] - a[1][0]).slice(0, 20))
    console.log(k.padEnd(28), v[0].toFixed(1).padStart(8), String(v[1]).padStart(6));
}

void main();
