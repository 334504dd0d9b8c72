/**
 * Child process for test/trainer-kill.test.ts: trains the toy network (test/helpers/train-setup.ts)
 * on the wasm backend, writing every step's loss as a JSON line to LOSSES, checkpoints every SAVE
 * steps into LOGDIR. With RESUME set it continues from that checkpoint instead of starting fresh.
 *
 * usage: node -r ts-node/register/transpile-only train-child.ts DATADIR LOGDIR LOSSES MAXSTEPS SAVE [RESUME]
 *
 * For the kill harness (scripts/kill-test.ts), opt in with environment variables:
 *   KILLTEST_MARKERS=1    print `S <step>` after each step and `B <file>` / `E <file>` around each
 *                         checkpoint file write (.pt, .optim, .state.json) on stdout, synchronously;
 *   KILLTEST_PAUSE_MS=N   sleep N ms after the first chunk of those writes and before the rename, so a
 *                         kill lands inside the write window (temp file open, .pt without its state).
 * Both wrap `writeFileAtomic` from this process only; the trainer itself is unchanged.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as atomic from "../../src/io/atomic";
import { useBackend } from "../../src/backend/backend";
import { resumeTraining, train, type TrainOptions } from "../../src/train";
import { TOY_TEMPLATE, makeToyBase, makeToyNet } from "../helpers/train-setup";

const markers = process.env.KILLTEST_MARKERS === "1";
const pauseMs = Number(process.env.KILLTEST_PAUSE_MS ?? 0);
const mark = (line: string): void => {
  if (markers) fs.writeSync(1, line + "\n");
};
const sleep = (ms: number): void => {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
};

if (markers || pauseMs > 0) {
  // CommonJS: the trainer and file writers call `atomic_1.writeFileAtomic(...)`, looked up at call time.
  const original = atomic.writeFileAtomic;
  (atomic as { writeFileAtomic: typeof original }).writeFileAtomic = (file, chunks, opts) => {
    if (path.basename(path.dirname(path.resolve(file))) !== "hypernetworks") return original(file, chunks, opts);
    // Pause once after the temp file is open and part-written, and once before the rename.
    function* slow(): Generator<Uint8Array> {
      let n = 0;
      for (const c of chunks) {
        if (n++ === 1) sleep(pauseMs);
        yield c;
      }
      sleep(pauseMs);
    }
    mark(`B ${path.basename(file)}`);
    original(file, slow(), opts);
    mark(`E ${path.basename(file)}`);
  };
}

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
    onStep: (e) => {
      fs.appendFileSync(lossFile!, JSON.stringify({ step: e.step, loss: e.loss, lr: e.lr }) + "\n");
      mark(`S ${e.step}`);
    },
  };
  const run = resume ? resumeTraining(base, resume, opts) : train(base, makeToyNet(), opts);
  const res = await run.done;
  process.stdout.write(JSON.stringify({ reason: res.reason, step: res.step }) + "\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
