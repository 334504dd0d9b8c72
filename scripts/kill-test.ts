/**
 * Kill harness: trains the toy network (test/helpers/train-setup.ts) in a child process, SIGKILLs it
 * at seeded random moments — many of them inside a checkpoint write — and after every kill checks the
 * run folder the way a user resuming it would see it:
 *
 *   - the newest checkpoint that has its `.state.json` loads (`readHypernetworkFile`), its `.optim`
 *     belongs to it (`readOptimizerFile` hash match) and its state's step equals the file's step;
 *   - no temp file or `.pt` without a state file is ever listed as a checkpoint;
 *   - a resume from it continues with exactly the losses of an uninterrupted reference run.
 *
 * Kill, inspect, resume, kill again… When a run reaches its last step a new round starts in a fresh
 * folder. Each round's CSV must hold every step exactly once.
 *
 * usage: npm run killtest -- [--kills 60] [--seed 1] [--max-steps 24] [--pause-ms 30] [--out FILE]
 * Prints one JSON object with the figures; exits 1 on the first violated check.
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Rng } from "../src/diffusion/random";
import { readHypernetworkFile } from "../src/hypernet/file";
import { readOptimizerFile } from "../src/hypernet/optim-file";
import { listCheckpoints, readCheckpointState } from "../src/train/trainer";
import { makeToyDataset } from "../test/helpers/train-setup";

const ROOT = path.join(__dirname, "..");
const CHILD = path.join(ROOT, "test", "scripts", "train-child.ts");
const SAVE_EVERY = 2;

/** Settings of one harness run. */
export interface KillHarnessOptions {
  /** Kills to perform (default 60). */
  kills?: number;
  /** Seed of the kill schedule (default 1). */
  seed?: number;
  /** Steps per round (default 24). */
  maxSteps?: number;
  /** Pause before each chunk of a checkpoint write in the child, ms (default 30). */
  pauseMs?: number;
  /** "mixed" (default: start-up, random training moments, checkpoint writes) or only "checkpoint-writes". */
  schedule?: "mixed" | "checkpoint-writes";
  /** Scratch folder (default: a new temp folder, removed at the end). */
  workDir?: string;
  /** Progress lines (default none). */
  log?: (line: string) => void;
}

/** What the harness did and saw. */
export interface KillHarnessReport {
  kills: number;
  /** Kills that landed while a checkpoint file was being written (between its `B` and `E` markers). */
  killsDuringCheckpointWrite: number;
  /** Of those, kills after the `.pt` was complete but before its `.state.json` was. */
  killsBetweenPtAndState: number;
  /** Kills before the child had taken a step (start-up). */
  killsBeforeFirstStep: number;
  /** Child starts that resumed from a checkpoint. */
  resumes: number;
  /** Child starts from scratch (no complete checkpoint yet, or a new round). */
  freshStarts: number;
  /** Rounds run to their last step. */
  roundsCompleted: number;
  /** Temp files (`.*.tmp`) seen after kills; never listed as checkpoints. */
  tempFilesSeen: number;
  /** `.pt` files without a state file seen after kills; never listed as checkpoints. */
  incompletePtSeen: number;
  /** Most steps between the last step a killed child finished and the checkpoint resumed from. */
  maxStepsLost: number;
  /** Loss comparisons against the reference run (all equal within 1e-6 relative). */
  lossesCompared: number;
  maxLossRelDiff: number;
  seconds: number;
}

interface Loss {
  step: number;
  loss: number;
  lr: number;
}

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

function startChild(args: string[], pauseMs: number): ChildProcess {
  return spawn(process.execPath, ["-r", "ts-node/register/transpile-only", CHILD, ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: "1", KILLTEST_MARKERS: "1", KILLTEST_PAUSE_MS: String(pauseMs) },
  });
}

const readLosses = (f: string): Loss[] =>
  fs.existsSync(f)
    ? fs
        .readFileSync(f, "utf8")
        .split("\n")
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as Loss)
    : [];

class HarnessFailure extends Error {}

function check(cond: boolean, what: string): void {
  if (!cond) throw new HarnessFailure(`kill harness: ${what}`);
}

/** Run the harness; throws `Error` naming the violated check. */
export async function runKillHarness(options: KillHarnessOptions = {}): Promise<KillHarnessReport> {
  const t0 = Date.now();
  const kills = options.kills ?? 60;
  const maxSteps = options.maxSteps ?? 24;
  const pauseMs = options.pauseMs ?? 30;
  const rng = new Rng(options.seed ?? 1);
  const log = options.log ?? (() => {});
  const own = !options.workDir;
  const work = options.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "hn-killtest-"));
  const report: KillHarnessReport = {
    kills: 0,
    killsDuringCheckpointWrite: 0,
    killsBetweenPtAndState: 0,
    killsBeforeFirstStep: 0,
    resumes: 0,
    freshStarts: 0,
    roundsCompleted: 0,
    tempFilesSeen: 0,
    incompletePtSeen: 0,
    maxStepsLost: 0,
    lossesCompared: 0,
    maxLossRelDiff: 0,
    seconds: 0,
  };
  try {
    const dataDir = path.join(work, "data");
    await makeToyDataset(dataDir);

    // Uninterrupted reference run (no pauses: they must not change anything but timing).
    const refLosses = path.join(work, "reference.jsonl");
    const ref = await runToEnd(startChild([dataDir, path.join(work, "reference"), refLosses, String(maxSteps), String(SAVE_EVERY)], 0));
    check(ref.code === 0, `the reference run failed: ${ref.err}`);
    const want = readLosses(refLosses);
    check(want.length === maxSteps, `the reference run logged ${want.length} steps, expected ${maxSteps}`);

    const compare = (file: string, what: string): void => {
      for (const g of readLosses(file)) {
        const w = want[g.step - 1];
        check(w !== undefined && w.step === g.step, `${what}: step ${g.step} is not in the reference run`);
        check(g.lr === w!.lr, `${what}: step ${g.step} lr ${g.lr}, reference ${w!.lr}`);
        const rel = Math.abs(g.loss - w!.loss) / Math.max(1e-12, Math.abs(w!.loss));
        report.maxLossRelDiff = Math.max(report.maxLossRelDiff, rel);
        check(rel <= 1e-6, `${what}: step ${g.step} loss ${g.loss}, uninterrupted run ${w!.loss}`);
        report.lossesCompared++;
      }
    };

    let round = 0;
    let segment = 0;
    let logDir = path.join(work, `round-${round}`);
    for (;;) {
      const newest = listCheckpoints(logDir).at(-1);
      if (newest?.step === maxSteps) {
        // Round complete: every step in the CSV exactly once.
        const rows = fs.readFileSync(path.join(logDir, "hypernetwork_loss.csv"), "utf8").trim().split("\n").slice(1);
        check(
          JSON.stringify(rows.map((r) => Number(r.split(",")[0]))) === JSON.stringify(want.map((w) => w.step)),
          `${logDir}: the CSV does not hold steps 1…${maxSteps} once each`,
        );
        report.roundsCompleted++;
        if (report.kills >= kills) break;
        fs.rmSync(logDir, { recursive: true, force: true });
        logDir = path.join(work, `round-${++round}`);
        continue;
      }
      const lossFile = path.join(work, `segment-${segment++}.jsonl`);
      const args = [dataDir, logDir, lossFile, String(maxSteps), String(SAVE_EVERY)];
      if (newest) {
        args.push(newest.file);
        report.resumes++;
      } else {
        report.freshStarts++;
      }
      const p = startChild(args, pauseMs);
      if (report.kills >= kills) {
        // Enough kills: let this one finish, then the round check above runs.
        const r = await runToEnd(p);
        check(r.code === 0, `the final run failed: ${r.err}`);
        compare(lossFile, "final run");
        continue;
      }

      // Kill schedule: 10% during start-up, 45% at a random time into training, 45% inside the
      // n-th checkpoint write after a random part of its pause window.
      const u = options.schedule === "checkpoint-writes" ? 1 : rng.nextFloat();
      const plan: { kind: "startup"; ms: number } | { kind: "step"; ms: number } | { kind: "write"; nth: number; ms: number } =
        u < 0.1
          ? { kind: "startup", ms: Math.floor(rng.nextFloat() * 3000) }
          : u < 0.55
            ? { kind: "step", ms: Math.floor(rng.nextFloat() * 1500) }
            : { kind: "write", nth: 1 + Math.floor(rng.nextFloat() * 5), ms: Math.floor(rng.nextFloat() * pauseMs * 3) };
      const state = { lastStep: 0, steps: 0, open: undefined as string | undefined, begins: 0, killed: false };
      const at: { open?: string; lastStep: number } = { lastStep: -1 };
      const kill = (): void => {
        if (state.killed || p.exitCode !== null) return;
        state.killed = true;
        at.open = state.open;
        at.lastStep = state.lastStep;
        p.kill("SIGKILL");
      };
      const result = runToEnd(p, (line) => {
        const [tag, arg] = [line[0], line.slice(2)];
        if (tag === "S") {
          state.lastStep = Number(arg);
          if (++state.steps === 1 && plan.kind === "step") setTimeout(kill, plan.ms);
        } else if (tag === "B") {
          state.open = arg;
          state.begins++;
          if (plan.kind === "write" && state.begins === plan.nth) setTimeout(kill, plan.ms);
        } else if (tag === "E") state.open = undefined;
      });
      const timer = plan.kind === "startup" ? setTimeout(kill, plan.ms) : undefined;
      const r = await result;
      if (timer) clearTimeout(timer);
      if (r.signal !== "SIGKILL") {
        // It reached the end before its kill moment: fine, but it must have ended normally.
        check(r.code === 0, `child exited with ${r.code}: ${r.err}`);
        compare(lossFile, `segment ${segment - 1}`);
        continue;
      }
      report.kills++;
      // Markers still in the pipe when the kill was sent were read after it; the state at kill time
      // is what the child had printed by then, which is at most what it did.
      if (at.open) report.killsDuringCheckpointWrite++;
      if (at.open?.endsWith(".state.json")) report.killsBetweenPtAndState++;
      if (at.lastStep === 0 && readLosses(lossFile).length === 0) report.killsBeforeFirstStep++;
      compare(lossFile, `killed segment ${segment - 1}`);
      inspect(logDir, report);
      const after = listCheckpoints(logDir).at(-1);
      const done = readLosses(lossFile).at(-1)?.step ?? newest?.step ?? 0;
      const lost = done - (after?.step ?? 0);
      check(lost >= 0, `the newest checkpoint (step ${after?.step}) is ahead of the last logged step ${done}`);
      report.maxStepsLost = Math.max(report.maxStepsLost, lost);
      log(
        `kill ${report.kills}/${kills} (${plan.kind}${at.open ? `, inside ${at.open}` : ""}): last step ${done}, resume from ${after ? `step ${after.step}` : "scratch"}`,
      );
    }
  } finally {
    report.seconds = Math.round((Date.now() - t0) / 100) / 10;
    if (own) fs.rmSync(work, { recursive: true, force: true });
  }
  return report;
}

/** The checks after a kill: newest complete checkpoint loads and is consistent; nothing partial is listed. */
function inspect(logDir: string, report: KillHarnessReport): void {
  const dir = path.join(logDir, "hypernetworks");
  const listed = listCheckpoints(logDir);
  if (!fs.existsSync(dir)) return;
  const names = fs.readdirSync(dir);
  for (const f of names) {
    if (f.endsWith(".tmp")) report.tempFilesSeen++;
    if (f.endsWith(".pt") && !names.includes(`${f}.state.json`)) report.incompletePtSeen++;
  }
  for (const c of listed) {
    const base = path.basename(c.file);
    check(!base.startsWith(".") && !base.endsWith(".tmp"), `a temp file was listed as a checkpoint: ${c.file}`);
    check(fs.existsSync(`${c.file}.state.json`) && fs.existsSync(c.file), `${c.file} is listed without its state file`);
  }
  const newest = listed.at(-1);
  if (!newest) return;
  const hf = readHypernetworkFile(newest.file);
  check(hf.info.step === newest.step, `${newest.file}: the file says step ${hf.info.step}`);
  const st = readCheckpointState(newest.file);
  check(st?.step === newest.step, `${newest.file}.state.json: step ${st?.step}, file name says ${newest.step}`);
  const opt = readOptimizerFile(newest.file);
  check(opt.state !== undefined, `${newest.file}.optim: ${opt.state === undefined ? opt.reason : ""}`);
}

function runToEnd(p: ChildProcess, onLine?: (line: string) => void): Promise<ChildResult> {
  let out = "";
  let err = "";
  let pending = "";
  p.stdout!.on("data", (d: Buffer) => {
    out += d;
    pending += d;
    const lines = pending.split("\n");
    pending = lines.pop()!;
    for (const l of lines) onLine?.(l);
  });
  p.stderr!.on("data", (d: Buffer) => (err += d));
  return new Promise((resolve) => p.on("close", (code, signal) => resolve({ code, signal, out, err })));
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (require.main === module) {
  const num = (name: string): number | undefined => (arg(name) === undefined ? undefined : Number(arg(name)));
  runKillHarness({
    kills: num("kills"),
    seed: num("seed"),
    maxSteps: num("max-steps"),
    pauseMs: num("pause-ms"),
    log: (l) => console.error(l),
  })
    .then((r) => {
      const json = JSON.stringify(r, null, 2);
      if (arg("out")) fs.writeFileSync(arg("out")!, json + "\n");
      console.log(json);
    })
    .catch((err) => {
      console.error(err instanceof HarnessFailure ? err.message : err);
      process.exit(1);
    });
}
