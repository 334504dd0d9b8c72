/**
 * Real-PyTorch parity checks need Debian's `python3-torch` for `/usr/bin/python3`. `.ci/run`
 * installs it; elsewhere it may be missing, and then those checks are reported as skipped by
 * vitest (with the reason), never passed silently.
 */
import * as fs from "node:fs";
import { spawnSync } from "node:child_process";

let cached: string | null | undefined;

/** Why real PyTorch cannot be used here, or null when `/usr/bin/python3 -c "import torch"` works. */
export function torchMissing(): string | null {
  if (cached !== undefined) return cached;
  if (!fs.existsSync("/usr/bin/python3")) cached = "/usr/bin/python3 not found";
  else {
    const r = spawnSync("/usr/bin/python3", ["-c", "import torch"], { encoding: "utf8" });
    cached =
      r.status === 0 ? null : `/usr/bin/python3 cannot import torch (${(r.stderr || String(r.error ?? "")).trim().split("\n").pop()})`;
  }
  return cached;
}

/** Skip the running test (shown as skipped, with the reason) when PyTorch is missing. */
export function skipWithoutTorch(ctx: { skip: (note?: string) => void }, what: string): void {
  const why = torchMissing();
  if (why === null) return;
  const note = `${what} SKIPPED: ${why}. Install it with: apt-get install python3-torch`;
  console.warn(note);
  ctx.skip(note);
}
