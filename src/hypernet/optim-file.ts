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
 * As in PyTorch, a parameter that has never been updated (it never had a gradient: a module for a
 * width the model never uses) has no entry in `state`, though it is listed in `params`.
 *
 * A1111 hashes the file the network was *loaded from* rather than the file just written, so the
 * `.optim` beside an intermediate `<name>-<step>.pt` never matches and resuming from it silently
 * drops the optimizer state. Here the hash is always that of the `.pt` being paired, so every
 * checkpoint resumes with its own state.
 */
import * as fs from "node:fs";
import type { WriteOptions } from "../io/atomic";
import { shortHash } from "../io/hash";
import { type HostTensor, numel } from "../io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyValue, isHostTensor, isTorchTensor, pyNumber, pySequence } from "../io/pyvalue";
import { printable } from "../io/safe-name";
import { openTorchFile, writeTorchFile } from "../io/torch-file";
import { optimizerStateProblem } from "../train/optimizer-check";
import type { OptimizerState, ParamMoments } from "../train/optimizer-state";

/** True for a parameter AdamW has never updated: step 0 and zero moments (PyTorch keeps no state for it). */
function neverStepped(p: ParamMoments): boolean {
  const zero = (t: HostTensor): boolean => Array.prototype.every.call(t.data, (v: number) => v === 0) as boolean;
  return p.step === 0 && zero(p.expAvg) && zero(p.expAvgSq);
}

/**
 * Write `<ptFile>.optim` for the `.pt` file that already exists at `ptFile`. Parameters never
 * updated get no state entry, as PyTorch writes them.
 */
export function writeOptimizerFile(ptFile: string, state: OptimizerState, opts: WriteOptions = {}): string {
  if (!fs.existsSync(ptFile))
    throw new Error(`${ptFile}: save the hypernetwork before its optimizer state (the .optim is keyed to the .pt's hash)`);
  const stateDict = new PyDict("dict");
  state.params.forEach((p, i) => {
    if (neverStepped(p)) return;
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
    [
      "optimizer_state_dict",
      new PyDict("dict", [
        ["state", stateDict],
        ["param_groups", [group]],
      ]),
    ],
  ]);
  const out = `${ptFile}.optim`;
  writeTorchFile(out, root, { overwrite: opts.overwrite });
  return out;
}

/** What `readOptimizerFile` found. */
export type OptimizerFileResult = { state: OptimizerState; file: string } | { state: undefined; reason: string };

/** Why a `.optim` whose hash matched cannot be used; `readOptimizerFile` turns it into a reason. */
class UnusableState extends Error {}

/** Per-parameter state keys AdamW keeps (PyTorch's; `max_exp_avg_sq` would mean AMSGrad). */
const ADAMW_STATE_KEYS = new Set(["step", "exp_avg", "exp_avg_sq"]);

/**
 * Read `<ptFile>.optim` if it exists, belongs to `ptFile` (hash match) and holds usable AdamW state.
 * Otherwise return the reason it is not used — a fresh AdamW is then the right thing, as in A1111 —
 * so the caller can tell the user. The hash is checked right after unpickling, before any tensor of
 * the file is read or decoded. A file whose hash matches is still not trusted: it must name AdamW
 * (or no optimizer, which A1111 reads as AdamW), have AdamW's keys, and pass
 * {@link optimizerStateProblem} (finite values, `exp_avg_sq ≥ 0`, whole-number steps). A file that
 * cannot be unpickled throws the reader's error, which names it.
 *
 * A parameter without state (never updated, as PyTorch writes it) reads as step 0 with zero
 * moments; sizing those needs `opts.shapes`, the network's parameter shapes in PyTorch layout (one
 * per parameter, in order). Without them such a file is reported as not usable.
 */
export function readOptimizerFile(ptFile: string, opts: { shapes?: ReadonlyArray<readonly number[]> } = {}): OptimizerFileResult {
  const file = `${ptFile}.optim`;
  if (!fs.existsSync(file)) return { state: undefined, reason: `no optimizer state file ${file}` };
  if (!fs.existsSync(ptFile)) return { state: undefined, reason: `${file} has no ${ptFile} beside it to belong to` };
  const torch = openTorchFile(file); // tensors stay unread until the hash matches
  try {
    const root = torch.root;
    if (!(root instanceof PyDict)) throw new Error(`${file}: not a valid optimizer state file: top level is not a dict`);
    const hash = root.get("hash");
    const expected = shortHash(ptFile);
    if (hash !== expected) {
      const shown = typeof hash === "string" ? printable(hash.slice(0, 40)) : String(typeof hash);
      return {
        state: undefined,
        reason: `${file} belongs to another file (hash ${shown}, ${ptFile} has ${expected}); starting with a fresh optimizer`,
      };
    }
    const name = root.get("optimizer_name");
    if (name !== undefined && name !== "AdamW") {
      const shown = typeof name === "string" ? JSON.stringify(printable(name.slice(0, 80))) : `a ${typeof name} as its name`;
      return { state: undefined, reason: `${file} holds the state of the optimizer ${shown}, not AdamW` };
    }
    let state: OptimizerState;
    try {
      state = parseAdamWState(root, opts.shapes);
    } catch (err) {
      if (err instanceof UnusableState) return { state: undefined, reason: `${file}: not usable AdamW state: ${err.message}` };
      throw err;
    }
    const problem = optimizerStateProblem(state);
    if (problem) return { state: undefined, reason: `${file}: not usable AdamW state: ${problem}` };
    return { file, state };
  } finally {
    torch.close();
  }
}

/** Zero moments of `shape` for a parameter PyTorch kept no state for. */
function zeroMoments(shape: readonly number[]): ParamMoments {
  const zeros = (): HostTensor => ({ dtype: "F32", shape: [...shape], data: new Float32Array(numel(shape)) });
  return { step: 0, expAvg: zeros(), expAvgSq: zeros() };
}

/** The AdamW state in a `.optim` root dict (hash already checked); throws UnusableState for anything else. */
function parseAdamWState(root: PyDict, shapes: ReadonlyArray<readonly number[]> | undefined): OptimizerState {
  const bad = (what: string): Error => new UnusableState(what);
  const sd = root.get("optimizer_state_dict");
  if (!(sd instanceof PyDict)) throw bad("optimizer_state_dict missing");
  const groups = pySequence(sd.get("param_groups"));
  const g = groups?.[0];
  if (!(g instanceof PyDict)) throw bad("param_groups missing");
  if (groups!.length !== 1) throw bad(`it has ${groups!.length} parameter groups; a hypernetwork's AdamW has one`);
  for (const flag of ["amsgrad", "maximize"]) if (g.get(flag) === true) throw bad(`it uses ${flag}, which this AdamW does not`);
  const num = (v: PyValue | undefined, what: string): number => {
    const n = pyNumber(v);
    if (n === undefined) throw bad(`${what} is not a number`);
    return n;
  };
  const betas = pySequence(g.get("betas"));
  if (betas?.length !== 2) throw bad("betas is not a pair");
  const ids = pySequence(g.get("params"));
  if (!ids) throw bad("param_groups[0].params is not a list");
  const st = sd.get("state");
  if (!(st instanceof PyDict)) throw bad("state missing");
  const tensor = (v: PyValue | undefined, what: string): HostTensor => {
    if (isTorchTensor(v)) return v.read();
    if (isHostTensor(v)) return v;
    throw bad(`${what} is not a tensor`);
  };
  const seen = new Set<number>();
  const params: ParamMoments[] = ids.map((idv, i) => {
    const id = num(idv, "param id");
    if (seen.has(id)) throw bad(`parameter id ${id} is listed twice`);
    seen.add(id);
    const e = st.get(id);
    if (e === undefined) {
      const shape = shapes?.[i];
      if (!shape?.every((d) => Number.isSafeInteger(d) && d >= 0))
        throw bad(`no state for parameter ${id} (never updated; reading it needs the network's parameter shapes)`);
      return zeroMoments(shape);
    }
    if (!(e instanceof PyDict)) throw bad(`no state for parameter ${id}`);
    for (const k of e.map.keys())
      if (typeof k !== "string" || !ADAMW_STATE_KEYS.has(k))
        throw bad(`parameter ${id} has state ${JSON.stringify(printable(String(k)).slice(0, 80))}, which AdamW does not keep`);
    const stepV = e.get("step");
    let step: number;
    if (isTorchTensor(stepV) || isHostTensor(stepV)) {
      if (numel(stepV.shape) !== 1)
        throw bad(`the step of parameter ${i} is a tensor of shape [${stepV.shape.join(", ")}], not one number`);
      step = tensor(stepV, "step").data[0]!;
    } else step = num(stepV, `the step of parameter ${i}`);
    return {
      step,
      expAvg: tensor(e.get("exp_avg"), `exp_avg of parameter ${i}`),
      expAvgSq: tensor(e.get("exp_avg_sq"), `exp_avg_sq of parameter ${i}`),
    };
  });
  return {
    name: "AdamW",
    lr: num(g.get("lr"), "lr"),
    betas: [num(betas[0], "beta1"), num(betas[1], "beta2")],
    eps: num(g.get("eps"), "eps"),
    weightDecay: num(g.get("weight_decay"), "weight_decay"),
    params,
  };
}
