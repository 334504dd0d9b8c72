/**
 * Resume after a hard kill: a real child process trains, is killed with SIGKILL once a checkpoint
 * exists, and a second process resumes from the newest complete checkpoint. Its losses must equal
 * the uninterrupted run's step for step from that checkpoint on (same seed, same backend: wasm).
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listCheckpoints } from "../src/train";
import { readHypernetworkFile } from "../src/hypernet/file";
import { makeToyDataset } from "./helpers/train-setup";

const SCRIPT = path.join(__dirname, "scripts", "train-child.ts");
const ROOT = path.join(__dirname, "..");
let tmp: string;
let dataDir: string;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-kill-"));
  dataDir = path.join(tmp, "data");
  await makeToyDataset(dataDir);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function child(args: string[]): ChildProcess {
  return spawn(process.execPath, ["-r", "ts-node/register/transpile-only", SCRIPT, ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: "1" },
  });
}

function finish(p: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }> {
  let out = "";
  let err = "";
  p.stdout!.on("data", (d) => (out += d));
  p.stderr!.on("data", (d) => (err += d));
  return new Promise((resolve) => p.on("exit", (code, signal) => resolve({ code, signal, out, err })));
}

const readLosses = (f: string): Array<{ step: number; loss: number; lr: number }> =>
  fs.existsSync(f)
    ? fs
        .readFileSync(f, "utf8")
        .trim()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { step: number; loss: number; lr: number })
    : [];

describe("kill -9 and resume", () => {
  it("the resumed run reproduces the uninterrupted losses from the last checkpoint on", async () => {
    const MAX = 14;
    // Uninterrupted reference run.
    const refLog = path.join(tmp, "ref");
    const refLosses = path.join(tmp, "ref.jsonl");
    const ref = await finish(child([dataDir, refLog, refLosses, String(MAX), "4"]));
    expect(ref.code, ref.err).toBe(0);
    const want = readLosses(refLosses);
    expect(want.map((l) => l.step)).toEqual(Array.from({ length: MAX }, (_, i) => i + 1));

    // Interrupted run: SIGKILL as soon as the step-4 checkpoint is complete and a later step ran.
    const runLog = path.join(tmp, "run");
    const runLosses = path.join(tmp, "run.jsonl");
    const p = child([dataDir, runLog, runLosses, String(MAX), "4"]);
    const killed = finish(p);
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(() => {
        if (listCheckpoints(runLog).length > 0 && readLosses(runLosses).length >= 5) {
          clearInterval(timer);
          p.kill("SIGKILL");
          resolve();
        }
      }, 20);
      p.on("exit", () => {
        clearInterval(timer);
        reject(new Error("the child finished before it could be killed; make the run longer"));
      });
    });
    const k = await killed;
    expect(k.signal).toBe("SIGKILL");
    const done = readLosses(runLosses);
    expect(done.length).toBeLessThan(MAX);
    const last = listCheckpoints(runLog).at(-1)!;
    expect(last.step).toBeGreaterThanOrEqual(4);

    // Resume from the newest complete checkpoint in a fresh process.
    const resLosses = path.join(tmp, "resumed.jsonl");
    const res = await finish(child([dataDir, runLog, resLosses, String(MAX), "4", last.file]));
    expect(res.code, res.err).toBe(0);
    const got = readLosses(resLosses);
    expect(got.map((l) => l.step)).toEqual(want.slice(last.step).map((l) => l.step));
    got.forEach((g, i) => {
      const w = want[last.step + i]!;
      expect(g.lr).toBe(w.lr);
      expect(Math.abs(g.loss - w.loss), `step ${g.step}: resumed ${g.loss} vs uninterrupted ${w.loss}`).toBeLessThanOrEqual(
        1e-6 * Math.abs(w.loss),
      );
    });
    // The CSV of the interrupted folder holds each step once, as if never interrupted.
    const rows = fs.readFileSync(path.join(runLog, "hypernetwork_loss.csv"), "utf8").trim().split("\n").slice(1);
    expect(rows.map((r) => Number(r.split(",")[0]))).toEqual(Array.from({ length: MAX }, (_, i) => i + 1));
  }, 120_000);
});

describe("Ctrl-C (SIGINT) during training", () => {
  it("ends after the current step, saves a checkpoint holding exactly the steps done, and exits normally", async () => {
    const logDir = path.join(tmp, "sigint");
    const losses = path.join(tmp, "sigint-losses.jsonl");
    // saveEvery 0: no periodic checkpoints, so the only file is the save the interrupt triggers
    const p = child([dataDir, logDir, losses, "500", "0"]);
    const done = finish(p);
    const deadline = Date.now() + 90_000;
    while (readLosses(losses).length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(readLosses(losses).length).toBeGreaterThanOrEqual(3);
    p.kill("SIGINT");
    const r = await done;
    expect(r.signal, r.err).toBeNull();
    expect(r.code, r.err).toBe(0);
    const res = JSON.parse(r.out.trim().split("\n").pop()!) as { reason: string; step: number };
    expect(res.reason).toBe("stopped");
    expect(res.step).toBeLessThan(500);
    expect(readLosses(losses).length).toBe(res.step); // the step in flight finished, none after it
    const pt = path.join(logDir, "hypernetworks", `toy-${res.step}.pt`);
    expect(readHypernetworkFile(pt).info.step).toBe(res.step);
    expect(fs.existsSync(`${pt}.optim`)).toBe(true);
  }, 150_000);
});
