/**
 * A network with a width the model never uses (MonkeyPatch ticks 1024 by default, which SD 1.x
 * never calls): training trains the widths the model has, warns once through the trainer's warning
 * channel, leaves the other modules bit for bit as they were, and writes a `.optim` that keeps no
 * state for parameters that never had a gradient — as torch's AdamW does — which resumes here and
 * loads in real torch.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readHypernetworkFile } from "../src/hypernet/file";
import { createHypernetwork, type Hypernetwork } from "../src/hypernet/network";
import { readOptimizerFile } from "../src/hypernet/optim-file";
import { openTorchFile } from "../src/io/torch-file";
import { type PyDict, pyNumber, pySequence } from "../src/io/pyvalue";
import type { BaseModel } from "../src/pipeline/base-model";
import { AdamW } from "../src/train/adamw";
import { resumeTraining, train } from "../src/train";
import { makeToyBase, makeToyDataset, toyTrainOptions } from "./helpers/train-setup";
import { setupBackend } from "./helpers/tf";
import { skipWithoutTorch } from "./helpers/torch";

/** Every parameter of `net` as host data, by name. */
async function weights(net: Hypernetwork): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, p] of net.namedParameters()) out.set(name, (await p.value.data()) as Float32Array);
  return out;
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return (
    a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))
  );
}

describe("training a network with widths the model never uses", () => {
  let tmp: string;
  let base: BaseModel;
  beforeAll(async () => {
    await setupBackend();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-unused-"));
    await makeToyDataset(path.join(tmp, "data"));
    base = makeToyBase();
  });
  afterAll(() => {
    base?.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const makeNet = (): Hypernetwork =>
    createHypernetwork({
      name: "toy",
      dims: [...base.contextDims, 1024],
      layerStructure: [1, 2, 1],
      activation: "tanh",
      layerNorm: true,
      weightInit: "XavierNormal",
      seed: 3,
    });

  it("trains the model's widths, warns once, leaves the 1024 modules bit-identical, and its .optim resumes", async () => {
    expect(base.contextDims).not.toContain(1024);
    const net = makeNet();
    const before = await weights(net);
    const logDir = path.join(tmp, "run");
    const messages: string[] = [];
    const r = await train(
      base,
      net,
      toyTrainOptions(path.join(tmp, "data"), logDir, { maxSteps: 3, saveEvery: 3, onLog: (m) => messages.push(m) }),
    ).done;
    expect(r.reason, r.message).toBe("max-steps");
    expect(r.losses.every(Number.isFinite)).toBe(true);

    // One warning, through the trainer's channel (in the result and in onLog), naming the width.
    const unusedWarnings = r.warnings.filter((w) => w.includes("1024"));
    expect(unusedWarnings).toHaveLength(1);
    expect(unusedWarnings[0]).toMatch(/widths \[1024\] are never used .*not trained/);
    expect(messages.filter((m) => m.includes("[1024]"))).toEqual([`warning: ${unusedWarnings[0]}`]);

    // The 1024 modules are untouched (no update, no weight decay); every other tensor moved.
    const after = await weights(net);
    let unusedCount = 0;
    for (const [name, w] of before) {
      if (name.startsWith("1024.")) {
        unusedCount++;
        expect(sameBits(after.get(name)!, w), `${name} changed`).toBe(true);
      } else {
        expect(sameBits(after.get(name)!, w), `${name} did not change`).toBe(false);
      }
    }
    expect(unusedCount).toBeGreaterThan(0);
    const saved = readHypernetworkFile(path.join(logDir, "hypernetworks", "toy-3.pt"));
    expect([...saved.weights.keys()].sort((a, b) => a - b)).toEqual([...base.contextDims, 1024].sort((a, b) => a - b));

    // The .optim has state only for parameters that were stepped, as torch writes it.
    const pt = path.join(logDir, "hypernetworks", "toy-3.pt");
    const names = net.namedParameters().map(([n]) => n);
    const torchFile = openTorchFile(`${pt}.optim`);
    try {
      const sd = (torchFile.root as PyDict).get("optimizer_state_dict") as PyDict;
      const state = sd.get("state") as PyDict;
      const ids = [...state.map.keys()].map((k) => pyNumber(k)!).sort((a, b) => a - b);
      expect(ids).toEqual(names.flatMap((n, i) => (n.startsWith("1024.") ? [] : [i])));
      const group = pySequence(sd.get("param_groups"))![0] as PyDict;
      expect(pySequence(group.get("params"))!.map((v) => pyNumber(v))).toEqual(names.map((_, i) => i));
    } finally {
      torchFile.close();
    }
    // Read back with the network's shapes: zero moments and step 0 for the never-stepped ones.
    const shapes = net.namedParameters().map(([, p]) => [...p.torchShape]);
    const back = readOptimizerFile(pt, { shapes });
    expect(back.state, "reason" in back ? back.reason : "").toBeDefined();
    back.state!.params.forEach((p, i) => {
      const unused = names[i]!.startsWith("1024.");
      expect(p.step, names[i]).toBe(unused ? 0 : 3);
      if (unused) expect(p.expAvgSq.data.every((v) => v === 0) && p.expAvg.data.every((v) => v === 0)).toBe(true);
    });
    // Without shapes the reader cannot size the missing moments, and says so.
    const blind = readOptimizerFile(pt);
    expect("reason" in blind && blind.reason).toMatch(/no state for parameter \d+ .*shapes/);

    // Resuming restores AdamW (no fresh-optimizer warning) and trains on.
    const resumed = resumeTraining(base, pt, toyTrainOptions(path.join(tmp, "data"), logDir, { maxSteps: 5, saveEvery: 5 }));
    const r2 = await resumed.done;
    expect(r2.reason, r2.message).toBe("max-steps");
    expect(r2.warnings.filter((w) => /AdamW starts fresh/.test(w))).toEqual([]);
    const resumedAfter = await weights(resumed.network);
    for (const [name, w] of before)
      if (name.startsWith("1024.")) expect(sameBits(resumedAfter.get(name)!, w), `${name} changed on resume`).toBe(true);
    resumed.network.dispose();
    net.dispose();
  });

  it("real torch loads the .optim into torch.optim.AdamW (no state for the 1024 modules) and steps", (ctx) => {
    skipWithoutTorch(ctx, "the torch check of a .optim with never-stepped parameters");
    const pt = path.join(tmp, "run", "hypernetworks", "toy-3.pt");
    expect(fs.existsSync(pt), "the checkpoint the test above trains").toBe(true);
    const out = JSON.parse(
      execFileSync("/usr/bin/python3", [path.join(__dirname, "scripts", "optim_check.py"), pt], { encoding: "utf8" }),
    ) as {
      hash_ok: boolean;
      params: Array<{ shape: number[]; step: number | null }>;
    };
    expect(out.hash_ok).toBe(true);
    const net = readHypernetworkFile(pt);
    const dims = [...net.weights.keys()];
    expect(dims).toContain(1024);
    const names = makeNet()
      .namedParameters()
      .map(([n]) => n);
    expect(out.params).toHaveLength(names.length);
    out.params.forEach((p, i) => expect(p.step, names[i]).toBe(names[i]!.startsWith("1024.") ? null : 3));
  });

  it("AdamW skips a parameter with no gradient entirely (no decay, no step), as torch does for grad None", () => {
    const net = createHypernetwork({ name: "two", dims: [16, 1024], layerStructure: [1, 1], seed: 1 });
    const params = net.namedParameters().map(([, p]) => p);
    const opt = new AdamW(params, { lr: 0.1, weightDecay: 0.5 });
    const before = params.map((p) => p.value.dataSync().slice());
    const grads: Array<tf.Tensor | null> = params.map((p, i) => (i % 2 === 0 ? tf.onesLike(p.value as tf.Tensor) : null));
    opt.step(grads, 0.1);
    params.forEach((p, i) =>
      expect(sameBits(p.value.dataSync() as Float32Array, before[i] as Float32Array), `param ${i}`).toBe(i % 2 !== 0),
    );
    tf.dispose(grads.filter((g): g is tf.Tensor => g !== null));
    opt.dispose();
    net.dispose();
  });
});
