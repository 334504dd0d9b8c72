/**
 * The optimizer side file `<network>.pt.optim` (spec §2.5): AdamW state saved next to a
 * hypernetwork so that training can resume where it stopped.
 *
 * Layout (a `torch.save`d dict, as A1111 writes it): `optimizer_name`, `hash` (first 10 hex digits
 * of the SHA-256 of the `.pt` it belongs to) and `optimizer_state_dict` — PyTorch's standard
 * `{state: {i: {step, exp_avg, exp_avg_sq}}, param_groups: [{lr, betas, eps, weight_decay, …, params}]}`
 * with parameters indexed in the network's `weights()` order (dims in order, k then v, Sequential
 * order inside). Moments are in PyTorch layout (`[out, in]` for Linear weights).
 *
 * A1111 hashes the file the network was *loaded from* rather than the file just written, so the
 * `.optim` beside an intermediate `<name>-<step>.pt` never matches and resuming from it silently
 * drops the optimizer state. Here the hash is always that of the `.pt` being paired, so every
 * checkpoint resumes with its own state.
 */
import * as fs from "node:fs";
import type { WriteOptions } from "../io/atomic";
import { shortHash } from "../io/hash";
import type { HostTensor } from "../io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyValue, isHostTensor, isTorchTensor, pyNumber, pySequence } from "../io/pyvalue";
import { readTorchFile, writeTorchFile } from "../io/torch-file";
import type { OptimizerState, ParamMoments } from "../train/optimizer-state";

/** Write `<ptFile>.optim` for the `.pt` file that already exists at `ptFile`. */
export function writeOptimizerFile(ptFile: string, state: OptimizerState, opts: WriteOptions = {}): string {
  if (!fs.existsSync(ptFile)) throw new Error(`${ptFile}: save the hypernetwork before its optimizer state (the .optim is keyed to the .pt's hash)`);
  const stateDict = new PyDict("dict");
  state.params.forEach((p, i) => {
    stateDict.set(
      i,
      new PyDict("dict", [
        ["step", { dtype: "F32", shape: [], data: new Float32Array([p.step]) }],
        ["exp_avg", p.expAvg],
        ["exp_avg_sq", p.expAvgSq],
      ]),
    );
  });
  const group = new PyDict("dict", [
    ["lr", new PyFloat(state.lr)],
    ["betas", new PyTuple([new PyFloat(state.betas[0]), new PyFloat(state.betas[1])])],
    ["eps", new PyFloat(state.eps)],
    ["weight_decay", new PyFloat(state.weightDecay)],
    ["amsgrad", false],
    ["foreach", null],
    ["maximize", false],
    ["capturable", false],
    ["params", state.params.map((_, i) => i)],
  ]);
  const root = new PyDict("dict", [
    ["optimizer_name", state.name],
    ["hash", shortHash(ptFile)],
    ["optimizer_state_dict", new PyDict("dict", [["state", stateDict], ["param_groups", [group]]])],
  ]);
  const out = `${ptFile}.optim`;
  writeTorchFile(out, root, { overwrite: opts.overwrite });
  return out;
}

/** What `readOptimizerFile` found. */
export type OptimizerFileResult = { state: OptimizerState; file: string } | { state: undefined; reason: string };

/**
 * Read `<ptFile>.optim` if it exists and belongs to `ptFile` (hash match). Otherwise return the
 * reason it is not used — a fresh optimizer is then the right thing, as in A1111 — so the caller
 * can tell the user.
 */
export function readOptimizerFile(ptFile: string): OptimizerFileResult {
  const file = `${ptFile}.optim`;
  if (!fs.existsSync(file)) return { state: undefined, reason: `no optimizer state file ${file}` };
  const root = readTorchFile(file);
  const bad = (what: string): Error => new Error(`${file}: not a valid optimizer state file: ${what}`);
  if (!(root instanceof PyDict)) throw bad("top level is not a dict");
  const hash = root.get("hash");
  const expected = shortHash(ptFile);
  if (hash !== expected) return { state: undefined, reason: `${file} belongs to another file (hash ${String(hash)}, ${ptFile} has ${expected}); starting with a fresh optimizer` };
  const sd = root.get("optimizer_state_dict");
  if (!(sd instanceof PyDict)) throw bad("optimizer_state_dict missing");
  const groups = pySequence(sd.get("param_groups"));
  const g = groups?.[0];
  if (!(g instanceof PyDict)) throw bad("param_groups missing");
  const num = (v: PyValue | undefined, what: string): number => {
    const n = pyNumber(v);
    if (n === undefined) throw bad(`${what} is not a number`);
    return n;
  };
  const betas = pySequence(g.get("betas"));
  if (!betas || betas.length !== 2) throw bad("betas is not a pair");
  const ids = pySequence(g.get("params")) ?? [];
  const st = sd.get("state");
  if (!(st instanceof PyDict)) throw bad("state missing");
  const tensor = (v: PyValue | undefined, what: string): HostTensor => {
    if (isTorchTensor(v)) return v.read();
    if (isHostTensor(v)) return v;
    throw bad(`${what} is not a tensor`);
  };
  const params: ParamMoments[] = ids.map((idv, i) => {
    const id = num(idv, "param id");
    const e = st.get(id);
    if (!(e instanceof PyDict)) throw bad(`no state for parameter ${id}`);
    const stepT = e.get("step");
    const step = isTorchTensor(stepT) || isHostTensor(stepT) ? tensor(stepT, "step").data[0]! : num(stepT, "step");
    return { step, expAvg: tensor(e.get("exp_avg"), `exp_avg of parameter ${i}`), expAvgSq: tensor(e.get("exp_avg_sq"), `exp_avg_sq of parameter ${i}`) };
  });
  const name = root.get("optimizer_name");
  return {
    file,
    state: {
      name: typeof name === "string" ? name : "AdamW",
      lr: num(g.get("lr"), "lr"),
      betas: [num(betas[0], "beta1"), num(betas[1], "beta2")],
      eps: num(g.get("eps"), "eps"),
      weightDecay: num(g.get("weight_decay"), "weight_decay"),
      params,
    },
  };
}
