/**
 * AdamW against real torch.optim.AdamW (1.13): the same parameters, gradients and per-step learning
 * rates give the same parameters and moments (1e-6), including Linear weights stored transposed in
 * tfjs; state export/import round-trips; no leaks.
 */
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../src/diffusion/random";
import { Param } from "../src/nn/module";
import { AdamW } from "../src/train/adamw";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { skipWithoutTorch } from "./helpers/torch";

beforeAll(setupBackend);

/** A linear weight [out=3, in=4] (tfjs [4, 3]), a bias [3] and a LayerNorm-like vector [5]. */
function makeParams(rng: Rng): { params: Param[]; torch: Array<{ shape: number[]; data: number[] }> } {
  const specs: Array<[number[], "linear" | "plain"]> = [
    [[3, 4], "linear"],
    [[3], "plain"],
    [[5], "plain"],
  ];
  const torch = specs.map(([shape]) => ({ shape, data: Array.from(rng.normal(shape.reduce((a, b) => a * b, 1))) }));
  const params = specs.map(([shape, layout], i) => {
    const t = tf.tensor(torch[i]!.data, shape);
    const init = layout === "linear" ? t.transpose([1, 0]) : t.clone();
    t.dispose();
    return new Param(shape, layout, init, true);
  });
  return { params, torch };
}

describe("AdamW vs PyTorch", () => {
  it("matches torch.optim.AdamW over 6 steps with a changing learning rate (1e-6)", async (ctx) => {
    skipWithoutTorch(ctx, "AdamW vs torch.optim.AdamW");
    const rng = new Rng(7);
    const { params, torch } = makeParams(rng);
    const steps = [1e-2, 1e-2, 5e-3, 5e-3, 1e-1, 1e-3].map((lr) => ({
      lr,
      grads: torch.map((p) => Array.from(rng.normal(p.data.length)).map((g) => g * 0.5)),
    }));
    const py = spawnSync("/usr/bin/python3", [path.join(__dirname, "scripts", "adamw_ref.py")], {
      input: JSON.stringify({ params: torch, steps, weight_decay: 0.01 }),
      encoding: "utf8",
    });
    if (py.status !== 0) throw new Error(`PyTorch reference failed: ${py.stderr}`);
    const ref = JSON.parse(py.stdout) as { params: number[][]; exp_avg: number[][]; exp_avg_sq: number[][]; step: number[] };

    const opt = new AdamW(params, { lr: 1e-2 });
    await expectNoLeak(() => {
      for (const st of steps) {
        const grads = params.map((p, i) => {
          const g = tf.tensor(st.grads[i]!, [...p.torchShape]);
          const out = p.layout === "linear" ? g.transpose([1, 0]) : g.clone();
          g.dispose();
          return out;
        });
        opt.step(grads, st.lr);
        grads.forEach((g) => g.dispose());
      }
    });
    params.forEach((p, i) => expectClose(p.toTorchSync().data, ref.params[i]!, 1e-6));
    const state = await opt.exportState();
    state.params.forEach((s, i) => {
      expect(s.step).toBe(ref.step[i]);
      expect(s.expAvg.shape).toEqual(torch[i]!.shape);
      expectClose(s.expAvg.data, ref.exp_avg[i]!, 1e-6);
      expectClose(s.expAvgSq.data, ref.exp_avg_sq[i]!, 1e-7);
    });
    expect(state.lr).toBe(1e-3);
    expect(state.weightDecay).toBe(0.01);
    opt.dispose();
    params.forEach((p) => p.value.dispose());
  });

  it("export → import continues exactly like the uninterrupted optimizer", async () => {
    const a = makeParams(new Rng(3)).params;
    const b = makeParams(new Rng(3)).params;
    const optA = new AdamW(a, { lr: 1e-2 });
    const gradsFor = (ps: Param[], k: number): tf.Tensor[] => ps.map((p, i) => tf.fill(p.value.shape, 0.1 * (k + 1) * (i + 1) - 0.25));
    const step = (opt: AdamW, ps: Param[], k: number): void => {
      const g = gradsFor(ps, k);
      opt.step(g);
      g.forEach((t) => t.dispose());
    };
    step(optA, a, 0);
    step(optA, a, 1);
    // b: same two steps, then a fresh optimizer importing a's state
    const optB0 = new AdamW(b, { lr: 1e-2 });
    step(optB0, b, 0);
    step(optB0, b, 1);
    const optB = new AdamW(b, { lr: 1 });
    optB.importState(await optA.exportState());
    expect(optB.lr).toBe(1e-2);
    step(optA, a, 2);
    step(optB, b, 2);
    a.forEach((p, i) => expectClose(p.toTorchSync().data, b[i]!.toTorchSync().data, 0));
    const exported = await optA.exportState();
    expect(() => optB.importState({ ...exported, params: [] })).toThrow(/holds 0 parameters but the network has 3/);
    for (const o of [optA, optB0, optB]) o.dispose();
    [...a, ...b].forEach((p) => p.value.dispose());
  });
});
