/**
 * AdamW's betas, ε and weight decay as options, and gradient clipping by a p-norm: one AdamW step
 * by hand, four steps against torch.optim.AdamW with non-default hyper-parameters (fixture), and
 * clip_grad_norm_ with norm_type 1, 3, inf and 2 against PyTorch (fixture) and by hand. No leaks.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { Param } from "../src/nn/module";
import { AdamW } from "../src/train/adamw";
import { globalPNorm } from "../src/train/grad-norm";
import { clipGradients } from "../src/train/step";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

const ref = JSON.parse(fs.readFileSync(fixture("train-options.json"), "utf8")) as {
  adamw: {
    betas: [number, number];
    eps: number;
    weight_decay: number;
    shapes: number[][];
    init: number[][];
    steps: Array<{ lr: number; grads: number[][] }>;
    params: number[][];
  };
  clip: {
    shapes: number[][];
    grads: number[][];
    max_norm: number;
    cases: Array<{ norm_type: number | "inf"; total_norm: number; clipped: number[][] }>;
  };
};

describe("AdamW hyper-parameters", () => {
  it("one step by hand: p=1, g=0.5, lr 0.1, betas (0.8, 0.9), eps 1e-3, weight decay 0.1", async () => {
    const p = new Param([1], "plain", tf.tensor1d([1]), true);
    const opt = new AdamW([p], { lr: 0.1, betas: [0.8, 0.9], eps: 1e-3, weightDecay: 0.1 });
    await expectNoLeak(() => {
      const g = tf.tensor1d([0.5]);
      opt.step([g]);
      g.dispose();
    });
    // p·(1 − lr·λ) = 0.99; m = 0.2·0.5 = 0.1; v = 0.1·0.25 = 0.025; m̂ = m/0.2 = 0.5; √v̂ = √(0.025/0.1) = 0.5
    // p ← 0.99 − 0.1 · 0.5 / (0.5 + 1e-3) = 0.99 − 0.0998003992…
    expectClose(p.value.dataSync(), [0.99 - (0.1 * 0.5) / 0.501], 1e-7);
    const state = await opt.exportState();
    expect(state.betas).toEqual([0.8, 0.9]);
    expect(state.eps).toBe(1e-3);
    expect(state.weightDecay).toBe(0.1);
    expectClose(state.params[0]!.expAvg.data as Float32Array, [0.1], 1e-8);
    expectClose(state.params[0]!.expAvgSq.data as Float32Array, [0.025], 1e-9);
    opt.dispose();
    p.value.dispose();
  });

  it("matches torch.optim.AdamW(betas=(0.8, 0.95), eps=1e-4, weight_decay=0.05) over 4 steps with changing lr", async () => {
    const a = ref.adamw;
    const params = a.shapes.map((s, i) => new Param(s, "plain", tf.tensor(a.init[i]!, s), true));
    const opt = new AdamW(params, { lr: a.steps[0]!.lr, betas: a.betas, eps: a.eps, weightDecay: a.weight_decay });
    await expectNoLeak(() => {
      for (const st of a.steps) {
        const grads = st.grads.map((g, i) => tf.tensor(g, a.shapes[i]!));
        opt.step(grads, st.lr);
        tf.dispose(grads);
      }
    });
    params.forEach((p, i) => expectClose(p.value.dataSync(), a.params[i]!, 2e-7));
    // the same run with PyTorch's defaults ends elsewhere: the options are not ignored
    const q = a.shapes.map((s, i) => new Param(s, "plain", tf.tensor(a.init[i]!, s), true));
    const dflt = new AdamW(q, { lr: a.steps[0]!.lr });
    for (const st of a.steps) {
      const grads = st.grads.map((g, i) => tf.tensor(g, a.shapes[i]!));
      dflt.step(grads, st.lr);
      tf.dispose(grads);
    }
    const diff = Math.max(...q.map((p, i) => Math.max(...Array.from(p.value.dataSync(), (v, k) => Math.abs(v - a.params[i]![k]!)))));
    expect(diff).toBeGreaterThan(1e-4);
    opt.dispose();
    dflt.dispose();
    for (const p of [...params, ...q]) p.value.dispose();
  });
});

describe("clipping by p-norm (torch.nn.utils.clip_grad_norm_ norm_type)", () => {
  it("by hand: ‖(3, −4, 0.5, −12)‖₁ = 19.5, ‖·‖∞ = 12; the factor is c / (‖g‖ + 1e-6)", async () => {
    await expectNoLeak(async () => {
      const g = [tf.tensor1d([3, -4]), tf.tensor2d([[0.5, -12]])];
      const n1 = globalPNorm(g, 1);
      const nInf = globalPNorm(g, Infinity);
      const n3 = globalPNorm(g, 3);
      expect((await n1.data())[0]).toBeCloseTo(19.5, 5);
      expect((await nInf.data())[0]).toBe(12);
      expect((await n3.data())[0]).toBeCloseTo((27 + 64 + 0.125 + 1728) ** (1 / 3), 4);
      const c1 = clipGradients(g, "norm", 2, undefined, 1);
      const cInf = clipGradients(g, "norm", 2, undefined, Infinity);
      expectClose(c1[1]!.dataSync(), [(0.5 * 2) / 19.500001, (-12 * 2) / 19.500001], 1e-6);
      expectClose(cInf[0]!.dataSync(), [(3 * 2) / 12.000001, (-4 * 2) / 12.000001], 1e-6);
      // a limit above the norm leaves the gradients as they are
      const same = clipGradients(g, "norm", 20, undefined, 1);
      expectClose(same[1]!.dataSync(), [0.5, -12], 0);
      tf.dispose([...g, n1, nInf, n3, ...c1, ...cInf, ...same]);
    });
  });

  it("matches PyTorch for norm_type 1, 3, inf and 2 (total norm and clipped gradients)", async () => {
    const c = ref.clip;
    for (const k of c.cases) {
      const p = k.norm_type === "inf" ? Infinity : k.norm_type;
      await expectNoLeak(async () => {
        const g = c.grads.map((d, i) => tf.tensor(d, c.shapes[i]!));
        const n = globalPNorm(g, p);
        expect((await n.data())[0]!, `norm ${k.norm_type}`).toBeCloseTo(k.total_norm, 5);
        const out = clipGradients(g, "norm", c.max_norm, undefined, p);
        out.forEach((t, i) => expectClose(t.dataSync(), k.clipped[i]!, 1e-6));
        tf.dispose([...g, n, ...out]);
      });
    }
  });

  it("refuses a norm type that is not > 0", () => {
    const one = tf.scalar(1);
    expect(() => globalPNorm([one], 0)).toThrow(/norm type must be > 0 or Infinity/);
    expect(() => globalPNorm([one], Number.NaN)).toThrow(/norm type must be > 0 or Infinity/);
    one.dispose();
  });
});
