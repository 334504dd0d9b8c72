/**
 * A minimal module tree for tfjs models whose parameter paths are checkpoint keys.
 *
 * Every model in hypernet-lab (UNet, text encoder, VAE, hypernetwork) is a tree of `Module`s.
 * A child registered as `"input_blocks"` → `"1"` → `"1"` → … and a parameter registered as
 * `"weight"` give the path `input_blocks.1.1.….weight`, which is exactly the key in an LDM
 * checkpoint. Loading is therefore: walk the tree, look the path up in the file, check the shape,
 * convert PyTorch layout to tfjs layout. There is no mapping table.
 *
 * Parameters are stored in tfjs layout (NHWC convolutions, `[in, out]` linear weights); each
 * remembers its PyTorch shape and how to convert, so the same walk also writes files back.
 */
import * as tf from "@tensorflow/tfjs";
import type { HostTensor } from "../io/host-tensor";
import { numel } from "../io/host-tensor";
import type { TensorSource } from "../io/weight-source";

/**
 * How a parameter's PyTorch tensor maps onto its tfjs tensor:
 * - `plain`: same shape and order (biases, norms, embeddings);
 * - `linear`: PyTorch `[out, in]` ↔ tfjs `[in, out]` (a transpose);
 * - `conv`: PyTorch `[out, in, kh, kw]` ↔ tfjs `[kh, kw, in, out]`;
 * - `conv1x1-as-linear`: a PyTorch `[out, in, 1, 1]` conv weight used as a tfjs `[in, out]` matrix.
 */
export type ParamLayout = "plain" | "linear" | "conv" | "conv1x1-as-linear";

/** One learnable (or frozen) parameter. */
export class Param {
  /** The tfjs value; replaced (old one disposed) by `assign`. */
  value: tf.Variable;
  constructor(
    /** Shape as PyTorch stores it. */
    readonly torchShape: readonly number[],
    readonly layout: ParamLayout,
    init: tf.Tensor,
    trainable: boolean,
  ) {
    this.value = tf.variable(init, trainable);
    init.dispose();
  }

  /** Set the value from PyTorch-layout data (already checked for shape). */
  assignTorch(t: HostTensor): void {
    const v = tf.tidy(() => fromTorchLayout(tf.tensor(t.data, [...this.torchShape], "float32"), this.layout));
    this.value.assign(v);
    v.dispose();
  }

  /** Read the value back in PyTorch layout, as float32 host data. */
  async toTorch(): Promise<HostTensor> {
    const t = tf.tidy(() => toTorchLayout(this.value, this.layout, this.torchShape));
    const data = (await t.data()) as Float32Array;
    t.dispose();
    return { dtype: "F32", shape: [...this.torchShape], data };
  }

  /** Synchronous variant of `toTorch` (for code paths that cannot await). */
  toTorchSync(): HostTensor {
    const t = tf.tidy(() => toTorchLayout(this.value, this.layout, this.torchShape));
    const data = t.dataSync() as Float32Array;
    t.dispose();
    return { dtype: "F32", shape: [...this.torchShape], data };
  }
}

/** PyTorch layout → tfjs layout. */
export function fromTorchLayout(t: tf.Tensor, layout: ParamLayout): tf.Tensor {
  switch (layout) {
    case "plain":
      return t.clone();
    case "linear":
      return t.transpose([1, 0]);
    case "conv":
      return t.transpose([2, 3, 1, 0]);
    case "conv1x1-as-linear":
      return t.reshape([t.shape[0]!, t.shape[1]!]).transpose([1, 0]);
  }
}

/** tfjs layout → PyTorch layout. */
export function toTorchLayout(t: tf.Tensor, layout: ParamLayout, torchShape: readonly number[]): tf.Tensor {
  switch (layout) {
    case "plain":
      return t.clone();
    case "linear":
      return t.transpose([1, 0]);
    case "conv":
      return t.transpose([3, 2, 0, 1]);
    case "conv1x1-as-linear":
      return t.transpose([1, 0]).reshape([...torchShape]);
  }
}

/** The tfjs shape a PyTorch shape takes under a layout. */
export function tfShapeOf(torchShape: readonly number[], layout: ParamLayout): number[] {
  switch (layout) {
    case "plain":
      return [...torchShape];
    case "linear":
      return [torchShape[1]!, torchShape[0]!];
    case "conv":
      return [torchShape[2]!, torchShape[3]!, torchShape[1]!, torchShape[0]!];
    case "conv1x1-as-linear":
      return [torchShape[1]!, torchShape[0]!];
  }
}

/** How new parameters are initialised when a module is built (before any weights are loaded). */
export type Initializer = (tfShape: number[], torchShape: readonly number[]) => tf.Tensor;

/** Zeros; the cheapest init, used when weights will be loaded from a file anyway. */
export const zerosInit: Initializer = (shape) => tf.zeros(shape);

/** Options every module constructor accepts. */
export interface ModuleOptions {
  /** Whether the parameters are trainable (default false: base models are frozen). */
  trainable?: boolean;
  /** Initialiser for weights (default: small uniform, like PyTorch's default fan-in init). */
  init?: Initializer;
}

/** PyTorch-like default init: U(-1/√fan_in, 1/√fan_in), seeded per call from a counter. */
let initSeed = 1;
export const fanInUniformInit: Initializer = (shape, torchShape) => {
  const fanIn = torchShape.length > 1 ? numel(torchShape.slice(1)) : torchShape[0]!;
  const b = 1 / Math.sqrt(Math.max(1, fanIn));
  return tf.randomUniform(shape, -b, b, "float32", initSeed++);
};

/** A node of the module tree. Children and parameters keep their registration order. */
export class Module {
  private readonly _children = new Map<string, Module>();
  private readonly _params = new Map<string, Param>();
  protected readonly trainable: boolean;
  protected readonly init: Initializer;

  constructor(opts: ModuleOptions = {}) {
    this.trainable = opts.trainable ?? false;
    this.init = opts.init ?? fanInUniformInit;
  }

  /** Options to pass on to children so the whole tree shares trainability and init. */
  protected get childOptions(): ModuleOptions {
    return { trainable: this.trainable, init: this.init };
  }

  /** Register a child module under `name` (one path segment) and return it. */
  protected child<M extends Module>(name: string, m: M): M {
    if (this._children.has(name) || this._params.has(name)) throw new Error(`duplicate module entry "${name}"`);
    this._children.set(name, m);
    return m;
  }

  /** Register a parameter under `name` with its PyTorch shape and layout; returns it. */
  protected param(name: string, torchShape: number[], layout: ParamLayout, init?: Initializer): Param {
    if (this._children.has(name) || this._params.has(name)) throw new Error(`duplicate module entry "${name}"`);
    const p = new Param(torchShape, layout, (init ?? this.init)(tfShapeOf(torchShape, layout), torchShape), this.trainable);
    this._params.set(name, p);
    return p;
  }

  /** All parameters with their dotted paths (checkpoint keys), in registration order. */
  namedParameters(prefix = ""): Array<[string, Param]> {
    const out: Array<[string, Param]> = [];
    for (const [n, p] of this._params) out.push([prefix + n, p]);
    for (const [n, c] of this._children) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }

  /** Direct children with their names. */
  namedChildren(): Array<[string, Module]> {
    return [...this._children];
  }

  /** All modules below (and including) this one, with paths ("" for this one). */
  namedModules(prefix = ""): Array<[string, Module]> {
    const out: Array<[string, Module]> = [[prefix.replace(/\.$/, ""), this]];
    for (const [n, c] of this._children) out.push(...c.namedModules(`${prefix}${n}.`));
    return out;
  }

  /** Total number of scalar parameters. */
  parameterCount(): number {
    let n = 0;
    for (const [, p] of this.namedParameters()) n += numel(p.torchShape);
    return n;
  }

  /** The trainable tfjs variables of this tree, in path order. */
  trainableVariables(): tf.Variable[] {
    return this.namedParameters()
      .map(([, p]) => p.value)
      .filter((v) => v.trainable);
  }

  /** Free every parameter's memory. The module must not be used afterwards. */
  dispose(): void {
    for (const [, p] of this.namedParameters()) p.value.dispose();
  }
}

/** What `loadStateDict` found. */
export interface LoadReport {
  loaded: string[];
  missing: string[];
  unexpected: string[];
  /** `key: file shape vs model shape` for each shape mismatch. */
  mismatched: string[];
}

/** Error raised by a strict load; `report` says what went wrong key by key. */
export class StateDictError extends Error {
  constructor(
    readonly where: string,
    readonly report: LoadReport,
  ) {
    const parts: string[] = [];
    const list = (xs: string[]): string => xs.slice(0, 12).join(", ") + (xs.length > 12 ? `, … (${xs.length} in all)` : "");
    if (report.missing.length) parts.push(`missing keys: ${list(report.missing)}`);
    if (report.unexpected.length) parts.push(`unexpected keys: ${list(report.unexpected)}`);
    if (report.mismatched.length) parts.push(`shape mismatches: ${list(report.mismatched)}`);
    super(
      `${where}: weights do not match the model (${parts.join("; ")}). Check that the file is for this architecture/config, or load with { strict: false }.`,
    );
    this.name = "StateDictError";
  }
}

/**
 * Load PyTorch-layout tensors into a module tree by path.
 * `prefix` is prepended to each parameter path to form the file key (e.g. `model.diffusion_model.`).
 * Keys in the file that start with `prefix` but match no parameter are "unexpected"; keys outside
 * the prefix are ignored. Strict (default): any missing, unexpected or mis-shaped key throws
 * `StateDictError` before anything is assigned.
 */
export function loadStateDict(
  module: Module,
  source: TensorSource,
  opts: { prefix?: string; strict?: boolean; where?: string } = {},
): LoadReport {
  const prefix = opts.prefix ?? "";
  const strict = opts.strict ?? true;
  const params = module.namedParameters();
  const fileKeys = new Set([...source.keys()].filter((k) => k.startsWith(prefix)));
  const report: LoadReport = { loaded: [], missing: [], unexpected: [], mismatched: [] };
  const plan: Array<[string, Param]> = [];
  for (const [path, p] of params) {
    const key = prefix + path;
    if (!fileKeys.has(key)) {
      report.missing.push(key);
      continue;
    }
    fileKeys.delete(key);
    const shape = source.shapeOf?.(key);
    if (shape && !sameShape(shape, p.torchShape)) {
      report.mismatched.push(`${key}: file [${shape.join(", ")}] vs model [${p.torchShape.join(", ")}]`);
      continue;
    }
    plan.push([key, p]);
  }
  report.unexpected = [...fileKeys];
  if (strict && (report.missing.length || report.unexpected.length || report.mismatched.length)) {
    throw new StateDictError(opts.where ?? "loadStateDict", report);
  }
  for (const [key, p] of plan) {
    const t = source.get(key);
    if (!sameShape(t.shape, p.torchShape)) {
      report.mismatched.push(`${key}: file [${t.shape.join(", ")}] vs model [${p.torchShape.join(", ")}]`);
      if (strict) throw new StateDictError(opts.where ?? "loadStateDict", report);
      continue;
    }
    p.assignTorch(t);
    report.loaded.push(key);
  }
  return report;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Read every parameter of a module in PyTorch layout, keyed by `prefix + path`. */
export function stateDict(module: Module, prefix = ""): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [path, p] of module.namedParameters()) out.set(prefix + path, p.toTorchSync());
  return out;
}
