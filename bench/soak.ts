/**
 * `npm run soak`: a long hypernetwork training run that checks memory stays flat — the
 * `tf.memory().numTensors` count must not move and RSS must stay within 10% of its value at step
 * 100 (after warm-up, when the allocator and wasm heap have reached their working size).
 *
 *   npm run soak -- [--steps 1000] [--config …] [--batch 1] [--size 16] [--backend auto|wasm|…]
 *
 * Prints one JSON line every 100 steps and a final verdict line; exits 1 if memory grew.
 * RSS is compared at those checkpoints, each taken right after a full V8 garbage collection: between
 * collections RSS swings by ±15% with the JS garbage of ~3,000 kernel calls per step, which is
 * not growth (`rss_max_between_gc_mb` reports the swing).
 * The training step is `bench/harness.ts`'s (the same ops as `train()`'s step).
 */
import * as v8 from "node:v8";
import * as vm from "node:vm";
import * as tf from "@tensorflow/tfjs";
import { buildModel, loadConfig, parseArgs, selectBackend, trainStep } from "./harness";

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2), { steps: 1000, batch: 1, size: 16, contextLen: 16, noMicro: true });
  const report = await selectBackend(args.backend);
  const { config, contextLen, name } = loadConfig(args.config, args.contextLen);
  const m = buildModel(config, args.batch, args.size, contextLen, !args.noCache);
  const rssMb = (): number => Math.round(process.memoryUsage().rss / 2 ** 20);
  // A full collection before each checkpoint, so RSS compares live memory, not pending garbage.
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  const settledRssMb = (): number => {
    gc();
    return rssMb();
  };
  let swing = 0;
  let at100: { tensors: number; rss: number } | undefined;
  let worstRss = 0;
  let tensorDrift = 0;
  const t0 = performance.now();
  let loss = NaN;
  for (let step = 1; step <= args.steps; step++) {
    loss = trainStep(m);
    swing = Math.max(swing, rssMb());
    if (at100) tensorDrift = Math.max(tensorDrift, Math.abs(tf.memory().numTensors - at100.tensors));
    if (step % 100 === 0 || step === args.steps) {
      const rss = settledRssMb();
      if (!at100) at100 = { tensors: tf.memory().numTensors, rss };
      worstRss = Math.max(worstRss, rss);
      console.log(
        JSON.stringify({
          step,
          loss: Number(loss.toFixed(5)),
          tensors: tf.memory().numTensors,
          rss_mb: rss,
          ms_per_step: Math.round((performance.now() - t0) / step),
        }),
      );
    }
  }
  const growth = at100 ? (worstRss - at100.rss) / at100.rss : NaN;
  const ok = tensorDrift === 0 && growth <= 0.1 && Number.isFinite(loss);
  console.log(
    JSON.stringify({
      case: "soak",
      backend: report.backend,
      device: report.device,
      config: name,
      batch: args.batch,
      size: args.size,
      steps: args.steps,
      tensors_at_100: at100?.tensors,
      tensors_end: tf.memory().numTensors,
      max_tensor_drift: tensorDrift,
      rss_at_100_mb: at100?.rss,
      max_rss_after_100_mb: worstRss,
      rss_max_between_gc_mb: swing,
      rss_growth_pct: Math.round(growth * 1000) / 10,
      ok,
    }),
  );
  m.dispose();
  if (!ok) process.exit(1);
}

main().catch((e: unknown) => {
  console.error((e as Error).message);
  process.exit(1);
});
