import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { saveHypernetwork } from "../src/hypernet/file";
import { createHypernetwork } from "../src/hypernet/network";
import { shortHash } from "../src/io/hash";
import { readOptimizerFile, writeOptimizerFile } from "../src/hypernet/optim-file";
import type { OptimizerState } from "../src/train/optimizer-state";
import { expectClose, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

function stateFor(net: ReturnType<typeof createHypernetwork>): OptimizerState {
  return {
    name: "AdamW",
    lr: 5e-5,
    betas: [0.9, 0.999],
    eps: 1e-8,
    weightDecay: 0.01,
    params: net.namedParameters().map(([, p], i) => {
      const n = p.torchShape.reduce((a, b) => a * b, 1);
      return {
        step: 7,
        expAvg: { dtype: "F32" as const, shape: [...p.torchShape], data: new Float32Array(n).map((_, j) => Math.sin(i + j)) },
        expAvgSq: { dtype: "F32" as const, shape: [...p.torchShape], data: new Float32Array(n).map((_, j) => (i + 1) * 1e-3 + j * 1e-6) },
      };
    }),
  };
}

describe(".optim side file", () => {
  it("round-trips, keyed to the exact .pt it sits beside", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "optim-"));
    const net = createHypernetwork({ name: "o", dims: [8, 12], activation: "relu", layerNorm: true });
    const pt = path.join(dir, "o-100.pt");
    saveHypernetwork(net, pt);
    const st = stateFor(net);
    writeOptimizerFile(pt, st);
    const back = readOptimizerFile(pt);
    expect(back.state).toBeDefined();
    expect(back.state!.lr).toBe(5e-5);
    expect(back.state!.betas).toEqual([0.9, 0.999]);
    expect(back.state!.params.length).toBe(net.namedParameters().length);
    back.state!.params.forEach((p, i) => {
      expect(p.step).toBe(7);
      expect([...p.expAvg.data]).toEqual([...st.params[i]!.expAvg.data]);
      expect(p.expAvgSq.shape).toEqual(st.params[i]!.expAvgSq.shape);
    });
    // an intermediate copy of the same network gets its own matching state (A1111's quirk fixed)
    const copy = path.join(dir, "o-200.pt");
    net.info.step = 200;
    saveHypernetwork(net, copy);
    expect(readOptimizerFile(copy).state).toBeUndefined();
    writeOptimizerFile(copy, st);
    expect(readOptimizerFile(copy).state).toBeDefined();
    // a .optim that belongs to another file is not used, and says why
    fs.copyFileSync(`${pt}.optim`, `${copy}.optim.tmp`);
    fs.renameSync(`${copy}.optim.tmp`, `${copy}.optim`);
    const mismatch = readOptimizerFile(copy);
    expect(mismatch.state).toBeUndefined();
    expect("reason" in mismatch && mismatch.reason).toMatch(/belongs to another file/);
    expect(shortHash(pt)).toMatch(/^[0-9a-f]{10}$/);
    net.dispose();
  });

  const haveTorch = spawnSync("/usr/bin/python3", ["-c", "import torch"]).status === 0;
  if (!haveTorch)
    console.warn("[optim-file] real-PyTorch check SKIPPED: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
  it.runIf(haveTorch)("torch.optim.AdamW loads the state and steps with it", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "optim-"));
    const net = createHypernetwork({ name: "t", dims: [8, 12], activation: "relu", layerNorm: true });
    const pt = path.join(dir, "t.pt");
    saveHypernetwork(net, pt);
    const st = stateFor(net);
    writeOptimizerFile(pt, st);
    const r = spawnSync("/usr/bin/python3", [path.join(__dirname, "scripts", "optim_check.py"), pt], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      hash_ok: boolean;
      name: string;
      group: { lr: number; betas: number[]; weight_decay: number };
      params: Array<{ shape: number[]; step: number; sum_avg: number; sum_sq: number }>;
    };
    expect(out.hash_ok).toBe(true);
    expect(out.name).toBe("AdamW");
    expect(out.group).toMatchObject({ lr: 5e-5, betas: [0.9, 0.999], weight_decay: 0.01 });
    expect(out.params.map((p) => p.shape)).toEqual(net.namedParameters().map(([, p]) => [...p.torchShape]));
    const sum = (a: Float32Array): number => a.reduce((s, v) => s + v, 0);
    expectClose(
      out.params.map((p) => p.sum_avg),
      st.params.map((p) => sum(p.expAvg.data as Float32Array)),
      1e-3,
      1e-5,
    );
    expect(out.params.every((p) => p.step === 7)).toBe(true);
    net.dispose();
  });
});
