/**
 * Issue 18 class 4 (and issue 23 bug 2): a `.optim` whose hash matches is still checked before
 * AdamW continues from it, and its hash is checked before any of its tensors is read; the NaN guard
 * never keeps, rolls back to or recommends a non-finite checkpoint. Issue 18 class 6 (part): a
 * damaged `.pt.state.json` gives an error that names it and says what to do.
 *
 * The resume cases train the toy model 2 steps, copy the checkpoint (so its `.optim` still matches),
 * poison the copy's `.optim` and resume one step. Each poisoned resume must warn (naming the file
 * and the problem) and reproduce, bit for bit, a resume whose `.optim` was deleted (a fresh AdamW);
 * an intact `.optim` gives different weights, so that comparison can fail.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromNetwork, readHypernetworkFile, writeHypernetworkFile } from "../src/hypernet/file";
import { createHypernetwork } from "../src/hypernet/network";
import { readOptimizerFile, writeOptimizerFile } from "../src/hypernet/optim-file";
import type { HostTensor } from "../src/io/host-tensor";
import { type PyDict, PyFloat, type PyValue } from "../src/io/pyvalue";
import { readTorchFile, writeTorchFile } from "../src/io/torch-file";
import type { BaseModel } from "../src/pipeline/base-model";
import { AdamW, type TrainResult, listCheckpoints, readCheckpointState, resumeTraining, train } from "../src/train";
import type { OptimizerState } from "../src/train/optimizer-state";
import { expectNoLeak, setupBackend } from "./helpers/tf";
import { makeToyBase, makeToyDataset, makeToyNet, toyTrainOptions } from "./helpers/train-setup";

let tmp: string;
beforeAll(async () => {
  await setupBackend();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-optim-validate-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Rewrite `<pt>.optim` with `edit` applied to its (materialised) root; the stored hash is kept unless edited. */
function rewriteOptim(pt: string, edit: (root: PyDict, state: PyDict, group: PyDict) => void): void {
  const f = `${pt}.optim`;
  const root = readTorchFile(f) as PyDict;
  const sd = root.get("optimizer_state_dict") as PyDict;
  edit(root, sd.get("state") as PyDict, (sd.get("param_groups") as PyValue[])[0] as PyDict);
  writeTorchFile(f, root, { overwrite: true });
}
const entry = (state: PyDict, i: number): PyDict => state.get(i) as PyDict;
const f32 = (shape: number[], values: number[]): HostTensor => ({ dtype: "F32", shape, data: Float32Array.from(values) });

/** The poisoned files of issue 18 (each keeps the matching hash) and the words the warning must hold. */
const POISONS: Array<[string, (root: PyDict, state: PyDict, group: PyDict) => void, RegExp]> = [
  [
    "negative exp_avg_sq",
    (_r, s) => void ((entry(s, 0).get("exp_avg_sq") as HostTensor).data[0] = -1e-3),
    /exp_avg_sq of parameter 0 holds -0\.00100000\d* at index 0; a second moment cannot be negative/,
  ],
  ["NaN step", (_r, s) => void entry(s, 0).set("step", f32([], [NaN])), /the step of parameter 0 is NaN, not a whole number ≥ 0/],
  [
    "empty step",
    (_r, s) => void entry(s, 0).set("step", f32([0], [])),
    /the step of parameter 0 is a tensor of shape \[0\], not one number/,
  ],
  ["NaN lr", (_r, _s, g) => void g.set("lr", new PyFloat(NaN)), /its learning rate lr is NaN, not a finite number ≥ 0/],
  ['optimizer_name "SGD"', (r) => void r.set("optimizer_name", "SGD"), /holds the state of the optimizer "SGD", not AdamW/],
];

describe("readOptimizerFile checks a hash-matching .optim before trusting it", () => {
  let pt: string;
  let good: OptimizerState;
  beforeAll(() => {
    const net = createHypernetwork({ name: "o", dims: [8], layerStructure: [1, 2, 1], activation: "relu" });
    pt = path.join(tmp, "unit", "o-10.pt");
    fs.mkdirSync(path.dirname(pt), { recursive: true });
    writeHypernetworkFile(fromNetwork(net), pt);
    good = {
      name: "AdamW",
      lr: 1e-4,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0.01,
      params: net.namedParameters().map(([, p], i) => {
        const n = p.torchShape.reduce((a, b) => a * b, 1);
        return {
          step: 10,
          expAvg: f32(
            [...p.torchShape],
            Array.from({ length: n }, (_, j) => Math.sin(i + j) * 1e-3),
          ),
          expAvgSq: f32(
            [...p.torchShape],
            Array.from({ length: n }, (_, j) => 1e-6 * (j + 1)),
          ),
        };
      }),
    };
    net.dispose();
  });
  const fresh = (): void => void writeOptimizerFile(pt, good, { overwrite: true });
  const reasonOf = (): string => {
    const r = readOptimizerFile(pt);
    expect(r.state).toBeUndefined();
    return "reason" in r ? r.reason : "";
  };

  it("an intact file is read, as before", () => {
    fresh();
    const r = readOptimizerFile(pt);
    expect(r.state?.params.length).toBe(good.params.length);
    expect(r.state?.params[0]?.step).toBe(10);
  });

  it.each(POISONS)("%s → not used, with a reason naming the file and the problem", (_label, edit, words) => {
    fresh();
    rewriteOptim(pt, edit);
    const reason = reasonOf();
    expect(reason).toContain(`${pt}.optim`);
    expect(reason).toMatch(words);
  });

  it.each<[string, (root: PyDict, state: PyDict, group: PyDict) => void, RegExp]>([
    [
      "+Inf exp_avg",
      (_r, s) => void ((entry(s, 1).get("exp_avg") as HostTensor).data[2] = Infinity),
      /exp_avg of parameter 1 holds Infinity at index 2/,
    ],
    [
      "NaN exp_avg_sq",
      (_r, s) => void ((entry(s, 0).get("exp_avg_sq") as HostTensor).data[0] = NaN),
      /exp_avg_sq of parameter 0 holds NaN/,
    ],
    ["negative step", (_r, s) => void entry(s, 0).set("step", -3), /the step of parameter 0 is -3/],
    ["fractional step", (_r, s) => void entry(s, 0).set("step", f32([], [2.5])), /the step of parameter 0 is 2\.5/],
    [
      "a state key AdamW does not keep (SGD's momentum_buffer)",
      (_r, s) => void entry(s, 0).set("momentum_buffer", f32([1], [0])),
      /parameter 0 has state "momentum_buffer", which AdamW does not keep/,
    ],
    ["amsgrad", (_r, _s, g) => void g.set("amsgrad", true), /it uses amsgrad/],
    ["beta2 = 1", (_r, _s, g) => void g.set("betas", [new PyFloat(0.9), new PyFloat(1)]), /beta2 is 1, not in \[0, 1\)/],
    ["a parameter listed twice", (_r, _s, g) => void g.set("params", [0, 0, 2, 3]), /parameter id 0 is listed twice/],
    [
      "optimizer_name not a string",
      (r) => void r.set("optimizer_name", 3),
      /holds the state of the optimizer a number as its name, not AdamW/,
    ],
  ])("also refused: %s", (_label, edit, words) => {
    fresh();
    rewriteOptim(pt, edit);
    expect(reasonOf()).toMatch(words);
  });

  it("a file without optimizer_name is AdamW (A1111's default when it reads one)", () => {
    fresh();
    rewriteOptim(pt, (r) => void r.map.delete("optimizer_name"));
    expect(readOptimizerFile(pt).state?.name).toBe("AdamW");
  });

  it("checks the hash before reading any tensor: a damaged tensor in another file's .optim is not even read", () => {
    const marked: OptimizerState = {
      ...good,
      params: good.params.map((p, i) =>
        i === 0
          ? {
              ...p,
              expAvg: f32(
                p.expAvg.shape,
                Array.from(p.expAvg.data, () => 1234.5678),
              ),
            }
          : p,
      ),
    };
    writeOptimizerFile(pt, marked, { overwrite: true });
    const damage = (): void => {
      const bytes = fs.readFileSync(`${pt}.optim`);
      const at = bytes.indexOf(Buffer.from(new Float32Array([1234.5678]).buffer));
      expect(at).toBeGreaterThan(0);
      bytes[at]! ^= 0x01; // the zip's CRC for that storage no longer matches
      fs.writeFileSync(`${pt}.optim`, bytes);
    };
    damage();
    // With the matching hash the damaged tensor is read, and the CRC check refuses it (naming the file)…
    expect(() => readOptimizerFile(pt)).toThrow(`${pt}.optim`);
    // …with another file's hash it is never read: the answer is "belongs to another file".
    writeOptimizerFile(pt, marked, { overwrite: true });
    rewriteOptim(pt, (r) => void r.set("hash", "0123456789"));
    damage();
    expect(reasonOf()).toMatch(/belongs to another file \(hash 0123456789/);
  });

  it("AdamW.checkState adds the parameter count and shapes; importState refuses what checkState refuses, creating no tensors", async () => {
    const net = createHypernetwork({ name: "o", dims: [8], layerStructure: [1, 2, 1], activation: "relu" });
    const params = net.namedParameters().map(([, p]) => p);
    const opt = new AdamW(params, { lr: 1e-3 });
    expect(opt.checkState(good)).toBeUndefined();
    const wrongShape: OptimizerState = { ...good, params: good.params.map((p, i) => (i === 1 ? { ...p, expAvg: f32([2], [0, 0]) } : p)) };
    expect(opt.checkState(wrongShape)).toBe(`exp_avg of parameter 1 is [2] but the parameter is [${params[1]!.torchShape.join(", ")}]`);
    expect(opt.checkState({ ...good, params: good.params.slice(1) })).toMatch(
      new RegExp(`holds ${params.length - 1} parameters but the network has ${params.length};`),
    );
    const negative: OptimizerState = {
      ...good,
      params: good.params.map((p, i) =>
        i === 0
          ? {
              ...p,
              expAvgSq: f32(
                p.expAvgSq.shape,
                Array.from(p.expAvgSq.data, (v) => -v),
              ),
            }
          : p,
      ),
    };
    await expectNoLeak(() => expect(() => opt.importState(negative, "x.optim")).toThrow(/^x\.optim: exp_avg_sq of parameter 0 holds -/));
    opt.dispose();
    net.dispose();
  });
});

describe("resuming with a poisoned .optim starts a fresh AdamW, with a warning", () => {
  let base: BaseModel;
  let dataDir: string;
  let src: string;
  beforeAll(async () => {
    base = makeToyBase();
    dataDir = path.join(tmp, "data");
    await makeToyDataset(dataDir);
    src = path.join(tmp, "src-run");
    const net = makeToyNet();
    await train(base, net, toyTrainOptions(dataDir, src, { maxSteps: 2, saveEvery: 2, learningRate: "1e-2" })).done;
    net.dispose();
  }, 60_000);
  afterAll(() => base.dispose());

  /** A copy of the step-2 checkpoint (bytes kept, so its .optim still matches) in a new run folder. */
  const copyRun = (name: string): string => {
    const dir = path.join(tmp, name);
    fs.mkdirSync(path.join(dir, "hypernetworks"), { recursive: true });
    for (const f of ["toy-2.pt", "toy-2.pt.optim", "toy-2.pt.state.json"])
      fs.copyFileSync(path.join(src, "hypernetworks", f), path.join(dir, "hypernetworks", f));
    return dir;
  };
  const resume = async (dir: string): Promise<{ res: TrainResult; weights: number[]; logs: string[] }> => {
    const logs: string[] = [];
    const run = resumeTraining(
      base,
      path.join(dir, "hypernetworks", "toy-2.pt"),
      toyTrainOptions(dataDir, dir, { maxSteps: 3, saveEvery: 1, learningRate: "1e-2", onLog: (m) => logs.push(m) }),
    );
    const res = await run.done;
    run.network.dispose();
    const hf = readHypernetworkFile(res.lastCheckpoint!);
    const weights = [...hf.weights.values()].flatMap((pair) => pair.flatMap((sd) => [...sd.values()].flatMap((t) => [...t.data])));
    return { res, weights, logs };
  };

  let freshRun: { res: TrainResult; weights: number[] };
  it("controls: deleting the .optim (fresh AdamW) and keeping it intact give different weights", async () => {
    const a = copyRun("resume-fresh");
    fs.rmSync(path.join(a, "hypernetworks", "toy-2.pt.optim"));
    freshRun = await resume(a);
    const intact = await resume(copyRun("resume-intact"));
    expect(intact.logs.some((l) => l.startsWith("resuming AdamW state from"))).toBe(true);
    expect(freshRun.res.lastCheckpoint).toMatch(/toy-3\.pt$/);
    expect(intact.weights).not.toEqual(freshRun.weights);
    expect(freshRun.weights.every(Number.isFinite)).toBe(true);
  }, 60_000);

  it.each(POISONS)(
    "%s: the resumed step is the fresh-AdamW step, finite, and a warning names the file and the problem",
    async (label, edit, words) => {
      const dir = copyRun(`resume-${label.replace(/\W+/g, "-")}`);
      const pt = path.join(dir, "hypernetworks", "toy-2.pt");
      rewriteOptim(pt, edit);
      const { res, weights } = await resume(dir);
      expect(res.reason).toBe("max-steps");
      const warning = res.warnings.find((w) => w.includes(`${pt}.optim`));
      expect(warning, res.warnings.join("\n")).toMatch(words);
      expect(warning).toMatch(/AdamW starts fresh/);
      expect(weights.every(Number.isFinite)).toBe(true);
      expect(res.losses).toEqual(freshRun.res.losses);
      expect(weights).toEqual(freshRun.weights);
    },
    60_000,
  );

  it("a .optim of another structure (hash matching) and an unreadable one also start fresh with a warning", async () => {
    const dir = copyRun("resume-other-shape");
    const pt = path.join(dir, "hypernetworks", "toy-2.pt");
    rewriteOptim(
      pt,
      (_r, s) =>
        void entry(s, 0)
          .set("exp_avg", f32([3], [0, 0, 0]))
          .set("exp_avg_sq", f32([3], [0, 0, 0])),
    );
    const other = await resume(dir);
    expect(other.res.warnings.join("\n")).toMatch(
      /toy-2\.pt\.optim: not usable AdamW state: exp_avg of parameter 0 is \[3\] but the parameter is/,
    );
    expect(other.weights).toEqual(freshRun.weights);

    const dir2 = copyRun("resume-damaged");
    const bytes = fs.readFileSync(path.join(dir2, "hypernetworks", "toy-2.pt.optim"));
    fs.writeFileSync(path.join(dir2, "hypernetworks", "toy-2.pt.optim"), bytes.subarray(0, bytes.length >> 1));
    const damaged = await resume(dir2);
    expect(damaged.res.warnings.join("\n")).toMatch(/toy-2\.pt\.optim cannot be used: .*toy-2\.pt\.optim.*AdamW starts fresh/);
    expect(damaged.weights).toEqual(freshRun.weights);
  }, 60_000);

  it("a checkpoint whose weights are not finite is refused up front, pointing to an earlier one", async () => {
    const hf = readHypernetworkFile(path.join(src, "hypernetworks", "toy-2.pt"));
    [...hf.weights.values()][0]![0]!.values().next().value!.data[1] = NaN;
    const bad = path.join(tmp, "nan-weights", "toy-2.pt");
    writeHypernetworkFile(hf, bad);
    const run = resumeTraining(base, bad, toyTrainOptions(dataDir, path.join(tmp, "nan-weights-run"), { maxSteps: 3 }));
    await expect(run.done).rejects.toThrow(
      `train: ${bad} holds NaN or infinite weights, so training cannot continue from it; resume from an earlier checkpoint`,
    );
    run.network.dispose();
    expect(fs.existsSync(path.join(tmp, "nan-weights-run"))).toBe(false);
  }, 60_000);
});

describe("the NaN guard never keeps or recommends a non-finite checkpoint", () => {
  let base: BaseModel;
  let dataDir: string;
  beforeAll(async () => {
    base = makeToyBase();
    dataDir = path.join(tmp, "data-nan");
    await makeToyDataset(dataDir);
  });
  afterAll(() => base.dispose());

  // From step 4 the rate is 1e39: the step's loss (computed before its update) is still finite, but
  // the update overflows float32, so the weights after step 4 are ±Inf/NaN. The old guard saved
  // them as toy-4.pt, stopped on step 5's NaN loss, rolled back to toy-4.pt and recommended it.
  const lr = "1e-3:3, 1e39:-1";

  it("with a checkpoint every step: stops at step 4, never writes toy-4.pt, rolls back to and recommends toy-3.pt", async () => {
    const logDir = path.join(tmp, "nan-guard");
    const net = makeToyNet();
    const res = await train(base, net, toyTrainOptions(dataDir, logDir, { maxSteps: 8, saveEvery: 1, learningRate: lr })).done;
    const good = path.join(logDir, "hypernetworks", "toy-3.pt");
    expect(res.reason).toBe("unsafe");
    expect(res.message).toMatch(/the weights became non-finite in the update of step 4/);
    expect(res.message).toContain(`rolled back to ${good}`);
    expect(res.message).toMatch(new RegExp(`resume from ${good.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}\\.$`));
    expect(res.lastCheckpoint).toBe(good);
    expect(fs.existsSync(path.join(logDir, "hypernetworks", "toy-4.pt"))).toBe(false);
    expect(listCheckpoints(logDir).map((c) => c.step)).toEqual([1, 2, 3]);
    for (const c of listCheckpoints(logDir)) {
      for (const pair of readHypernetworkFile(c.file).weights.values())
        for (const sd of pair) for (const t of sd.values()) expect(t.data.every(Number.isFinite), c.file).toBe(true);
    }
    // the live network holds toy-3's (finite) weights again
    const live = fromNetwork(net);
    const disk = readHypernetworkFile(good);
    for (const [dim, pair] of live.weights)
      pair.forEach((sd, j) => sd.forEach((t, k) => expect([...t.data]).toEqual([...disk.weights.get(dim)![j]!.get(k)!.data])));
    expect(net.info.step).toBe(3);
    net.dispose();
  }, 60_000);

  it("without periodic checkpoints: the end-of-run check refuses to save the non-finite network and rolls back to the start", async () => {
    const logDir = path.join(tmp, "nan-guard-final");
    const net = makeToyNet();
    const start = fromNetwork(net);
    const res = await train(base, net, toyTrainOptions(dataDir, logDir, { maxSteps: 4, saveEvery: 0, learningRate: lr })).done;
    expect(res.reason).toBe("unsafe");
    expect(res.message).toMatch(/the weights became non-finite by step 4.*the starting weights.*resume from the start/s);
    expect(res.lastCheckpoint).toBeUndefined();
    expect(fs.readdirSync(path.join(logDir, "hypernetworks"))).toEqual([]);
    for (const [dim, pair] of fromNetwork(net).weights)
      pair.forEach((sd, j) => sd.forEach((t, k) => expect([...t.data]).toEqual([...start.weights.get(dim)![j]!.get(k)!.data])));
    net.dispose();
  }, 60_000);
});

describe("a damaged .pt.state.json gives a clear error naming it", () => {
  const stateFile = (name: string, text: string | null): string => {
    const pt = path.join(tmp, "state", `${name}.pt`);
    fs.mkdirSync(path.dirname(pt), { recursive: true });
    if (text !== null) fs.writeFileSync(`${pt}.state.json`, text);
    return pt;
  };
  const valid = { format: "hypernet-lab/train-state", version: 1, name: "toy", step: 2, seed: 5, lossAverage: 0.5, stepsInAverage: 2 };

  it.each<[string, string, RegExp]>([
    ["truncated JSON", JSON.stringify(valid).slice(0, 30), /not valid JSON \(.+\) — a damaged training state file/],
    ["not JSON at all", "\u0000\u0000garbage", /not valid JSON/],
    ["a JSON array", "[1, 2]", /not a training state file \(format missing\)/],
    ["another format", JSON.stringify({ ...valid, format: "x" }), /not a training state file \(format "x"\)/],
    ["a step that is text", JSON.stringify({ ...valid, step: "2" }), /"step" is "2", not a whole number ≥ 0/],
    ["a negative seed", JSON.stringify({ ...valid, seed: -1 }), /"seed" is -1, not a whole number ≥ 0/],
    ["a loss average that is text", JSON.stringify({ ...valid, lossAverage: "abc" }), /"lossAverage" is "abc", not a number or null/],
  ])("%s", (label, text, words) => {
    const pt = stateFile(label.replace(/\W+/g, "-"), text);
    let err: unknown;
    try {
      readCheckpointState(pt);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).constructor).toBe(Error); // not a raw SyntaxError/TypeError
    expect((err as Error).message.startsWith(`${pt}.state.json: `)).toBe(true);
    expect((err as Error).message).toMatch(words);
    expect((err as Error).message).toContain(`delete it to resume from ${pt} without it`);
  });

  it("a folder in its place, and a valid file (read as before)", () => {
    const pt = stateFile("folder", null);
    fs.mkdirSync(`${pt}.state.json`);
    expect(() => readCheckpointState(pt)).toThrow(`${pt}.state.json: not a regular file; delete it`);
    expect(readCheckpointState(stateFile("ok", JSON.stringify(valid)))).toEqual(valid);
    expect(readCheckpointState(stateFile("none", null))).toBeUndefined();
  });

  it("resuming with a damaged state file fails with that error before training; deleting it, as advised, resumes", async () => {
    await setupBackend();
    const base = makeToyBase();
    const dataDir = path.join(tmp, "data-state");
    await makeToyDataset(dataDir);
    const logDir = path.join(tmp, "state-run");
    const net = makeToyNet();
    await train(base, net, toyTrainOptions(dataDir, logDir, { maxSteps: 2, saveEvery: 2 })).done;
    net.dispose();
    const pt = path.join(logDir, "hypernetworks", "toy-2.pt");
    fs.writeFileSync(`${pt}.state.json`, '{"format": "hypernet-lab/train-state", "step": 2, "se');
    const r1 = resumeTraining(base, pt, toyTrainOptions(dataDir, logDir, { maxSteps: 3 }));
    await expect(r1.done).rejects.toThrow(`${pt}.state.json: not valid JSON`);
    r1.network.dispose();
    fs.rmSync(`${pt}.state.json`);
    const r2 = resumeTraining(base, pt, toyTrainOptions(dataDir, logDir, { maxSteps: 3 }));
    const res = await r2.done;
    r2.network.dispose();
    expect(res.reason).toBe("max-steps");
    expect(res.step).toBe(3);
    base.dispose();
  }, 60_000);
});
