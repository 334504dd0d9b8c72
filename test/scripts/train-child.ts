/**
 * Child process for test/trainer-kill.test.ts: trains the toy network (test/helpers/train-setup.ts)
 * on the wasm backend, writing every step's loss as a JSON line to LOSSES, checkpoints every SAVE
 * steps into LOGDIR. With RESUME set it continues from that checkpoint instead of starting fresh.
 *
 * usage: node -r ts-node/register/transpile-only train-child.ts DATADIR LOGDIR LOSSES MAXSTEPS SAVE [RESUME]
 */
import * as fs from "node:fs";
import { useBackend } from "../../src/kernel-helpers/backend";
import { resumeTraining, train, type TrainOptions } from "../../src/train";
import { TOY_TEMPLATE, makeToyBase, makeToyNet } from "../helpers/train-setup";

async function main(): Promise<void> {
  const [dataDir, logDir, lossFile, maxSteps, save, resume] = process.argv.slice(2);
  await useBackend("wasm", { quiet: true });
  const base = makeToyBase();
  const opts: TrainOptions = {
    dataDir: dataDir!,
    template: TOY_TEMPLATE,
    maxSteps: Number(maxSteps),
    saveEvery: Number(save),
    batchSize: 2,
    learningRate: "1e-2:6, 5e-3:-1",
    seed: 21,
    logDir: logDir!,
    onLog: () => {},
    progress: false,
    onStep: (e) => fs.appendFileSync(lossFile!, JSON.stringify({ step: e.step, loss: e.loss, lr: e.lr }) + "\n"),
  };
  const run = resume ? resumeTraining(base, resume, opts) : train(base, makeToyNet(), opts);
  const res = await run.done;
  process.stdout.write(JSON.stringify({ reason: res.reason, step: res.step }) + "\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
