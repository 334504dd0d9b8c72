/**
 * Disk errors while saving: a full disk (ENOSPC) or a read-only folder gives an error that says what
 * happened and what to do, and the file that was there before is unchanged, byte for byte.
 *
 * Two ways to make the disk fail:
 *   - real: a 64 KiB–1 MiB tmpfs (full → ENOSPC; remounted read-only → EROFS). Needs permission to
 *     mount (root in a container that allows it); where mounting is refused that variant warns and
 *     the injected variant below still runs.
 *   - injected: `fs.writeSync` replaced by one that throws ENOSPC/EROFS, as the kernel would. Tests
 *     run as root here, where chmod 0555 does not stop writes, so a chmod test would prove nothing.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { writeFileAtomic } from "../src/io/atomic";
import { readHypernetworkFile, saveHypernetwork } from "../src/hypernet/file";
import { readOptimizerFile } from "../src/hypernet/optim-file";
import type { BaseModel } from "../src/pipeline/base-model";
import { listCheckpoints, readCheckpointState, train } from "../src/train";
import { setupBackend } from "./helpers/tf";
import { TOY_TEMPLATE, makeToyBase, makeToyDataset, makeToyNet } from "./helpers/train-setup";

// Injected failures: `node:fs` as every module of this test sees it, with a `writeSync` that throws
// the given error code while `inject.code` is set.
const inject = vi.hoisted(() => ({ code: undefined as "ENOSPC" | "EROFS" | undefined }));
vi.mock("node:fs", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:fs")>();
  const writeSync = ((...args: unknown[]) => {
    if (inject.code) throw Object.assign(new Error(`${inject.code}: simulated, write`), { code: inject.code });
    return (real.writeSync as (...a: unknown[]) => number)(...args);
  }) as typeof real.writeSync;
  return { ...real, writeSync, default: { ...real, writeSync } };
});

let tmp: string;
let dataDir: string;
let base: BaseModel;
const mounts: string[] = [];

beforeAll(async () => {
  await setupBackend();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-disk-"));
  dataDir = path.join(tmp, "data");
  await makeToyDataset(dataDir);
  base = makeToyBase();
});
afterEach(() => healWrites());
afterAll(() => {
  for (const m of mounts) spawnSync("umount", [m]);
  base.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Mount a tmpfs of `size` at a new folder; undefined (with a warning) where mounting is not allowed. */
function tmpfs(size: string): string | undefined {
  const dir = fs.mkdtempSync(path.join(tmp, "mnt-"));
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { encoding: "utf8" });
  if (r.status !== 0) {
    console.warn(
      `disk-errors: cannot mount a tmpfs here (${(r.stderr || String(r.error)).trim()}); the real-disk variant is not run, the injected one is`,
    );
    return undefined;
  }
  mounts.push(dir);
  return dir;
}

function remountReadOnly(dir: string): void {
  const r = spawnSync("mount", ["-o", "remount,ro", dir], { encoding: "utf8" });
  expect(r.status, r.stderr).toBe(0);
}

/** Make every `fs.writeSync` fail with `code` until `healWrites()`. */
function failWrites(code: "ENOSPC" | "EROFS"): void {
  inject.code = code;
}
function healWrites(): void {
  inject.code = undefined;
}

const tempFiles = (dir: string): string[] => fs.readdirSync(dir).filter((f) => f.endsWith(".tmp"));

describe("writeFileAtomic on a failing disk", () => {
  it("injected ENOSPC and EROFS: clear message, previous file unchanged, no temp file left", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "inj-"));
    const file = path.join(dir, "a.bin");
    fs.writeFileSync(file, "previous contents");
    failWrites("ENOSPC");
    expect(() => writeFileAtomic(file, [Buffer.alloc(1000, 7)], { overwrite: true })).toThrow(
      /disk full while writing; the previous file \(if any\) is unchanged\. Free some space/,
    );
    healWrites();
    failWrites("EROFS");
    expect(() => writeFileAtomic(file, [Buffer.alloc(1000, 7)], { overwrite: true })).toThrow(
      /cannot write there \(EROFS\).*Choose a writable folder/,
    );
    healWrites();
    expect(fs.readFileSync(file, "utf8")).toBe("previous contents");
    expect(tempFiles(dir)).toEqual([]);
    // the message names the file
    failWrites("ENOSPC");
    expect(() => writeFileAtomic(file, [Buffer.alloc(10)], { overwrite: true })).toThrow(file);
  });

  it("real tmpfs: a write that does not fit fails with ENOSPC's message and keeps the previous file", () => {
    const dir = tmpfs("64k");
    if (!dir) return;
    const file = path.join(dir, "a.bin");
    const before = Buffer.alloc(20_000, 1);
    writeFileAtomic(file, [before]);
    // 60 KB more: the temp file cannot be completed while the old 20 KB file still exists.
    expect(() => writeFileAtomic(file, [Buffer.alloc(60_000, 2)], { overwrite: true })).toThrow(/disk full while writing/);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(tempFiles(dir)).toEqual([]);
  });

  it("real read-only mount: EROFS message, previous file unchanged", () => {
    const dir = tmpfs("64k");
    if (!dir) return;
    const file = path.join(dir, "a.bin");
    writeFileAtomic(file, [Buffer.from("kept")]);
    remountReadOnly(dir);
    expect(() => writeFileAtomic(file, [Buffer.from("new")], { overwrite: true })).toThrow(
      /cannot write there \(EROFS\); the previous file \(if any\) is unchanged/,
    );
    expect(fs.readFileSync(file, "utf8")).toBe("kept");
  });
});

describe("saveHypernetwork on a failing disk", () => {
  it("keeps the previous .pt loadable and unchanged (injected and, where allowed, a read-only mount)", () => {
    const net = makeToyNet();
    for (const variant of ["injected", "mount"] as const) {
      const dir = variant === "injected" ? fs.mkdtempSync(path.join(tmp, "hn-")) : tmpfs("1m");
      if (!dir) continue;
      const file = path.join(dir, "toy.pt");
      saveHypernetwork(net, file);
      const before = fs.readFileSync(file);
      net.info.step = 123; // a different file would be written
      if (variant === "injected") failWrites("EROFS");
      else remountReadOnly(dir);
      expect(() => saveHypernetwork(net, file, { overwrite: true }), variant).toThrow(/toy\.pt: cannot write there \(EROFS\)/);
      healWrites();
      net.info.step = 0;
      expect(fs.readFileSync(file).equals(before), variant).toBe(true);
      expect(readHypernetworkFile(file).info.step).toBe(0);
      expect(tempFiles(dir)).toEqual([]);
    }
    net.dispose();
  });
});

describe("a checkpoint save that fails during training", () => {
  /** Train 6 steps, checkpoint every 2, on `logDir`; the disk fails somewhere after the first checkpoint. */
  async function failingRun(logDir: string, arm: () => void): Promise<Error> {
    const net = makeToyNet();
    let armed = false;
    const run = train(base, net, {
      dataDir,
      template: TOY_TEMPLATE,
      maxSteps: 6,
      saveEvery: 2,
      batchSize: 2,
      learningRate: "1e-3",
      seed: 5,
      logDir,
      onLog: () => {},
      progress: false,
      handleSigint: false,
      onCheckpoint: () => {
        if (!armed) {
          armed = true;
          arm();
        }
      },
    });
    const err = await run.done.then(
      () => new Error("training finished although its checkpoint could not be written"),
      (e: unknown) => e as Error,
    );
    healWrites();
    net.dispose();
    return err;
  }

  function expectStep2Intact(logDir: string): void {
    const list = listCheckpoints(logDir);
    expect(list.map((c) => c.step)).toEqual([2]);
    expect(readHypernetworkFile(list[0]!.file).info.step).toBe(2);
    expect(readCheckpointState(list[0]!.file)!.step).toBe(2);
    expect(readOptimizerFile(list[0]!.file).state).toBeDefined();
  }

  it("injected ENOSPC: training stops with the disk-full message and the step-2 checkpoint intact", async () => {
    const logDir = path.join(tmp, "run-inj");
    const err = await failingRun(logDir, () => failWrites("ENOSPC"));
    expect(err.message).toMatch(
      /toy-4\.pt: disk full while writing; the previous file \(if any\) is unchanged\. Free some space and save again\./,
    );
    expectStep2Intact(logDir);
  });

  it("real full tmpfs: training stops at the next checkpoint with ENOSPC, the previous one intact", async () => {
    // One checkpoint (.pt ≈ 150 KB, .optim ≈ 310 KB) fits in 700 KiB; a second does not.
    const logDir = tmpfs("700k");
    if (!logDir) return;
    const err = await failingRun(logDir, () => {});
    expect(err.message).toMatch(/toy-4\.pt(\.optim)?: disk full while writing; the previous file \(if any\) is unchanged/);
    expectStep2Intact(logDir);
  });
});
