/**
 * A hypernetwork: one (k, v) pair of residual MLPs per context width ("dim"), plus the
 * metadata AUTOMATIC1111 stores with it (spec §1, §2.1).
 *
 * In every attention layer the context that feeds `to_k` goes through the k module of the
 * matching width and the context that feeds `to_v` through the v module; `q` is untouched.
 * The 768 pair is shared by all 16 cross-attention layers of SD 1.x, and the 320/640/1280 pairs by
 * the self-attention layers of those widths.
 */
import type * as tf from "@tensorflow/tfjs";
import { type ActivationName, checkActivation } from "./activations";
import { HypernetworkModule, type ForwardOptions, type ModuleStructure, type WeightInit, WEIGHT_INITS, weightInitializer } from "./module";

/** Everything A1111 stores about a network besides its weights (spec §2.1). */
export interface HypernetworkInfo {
  name: string;
  /** Optimizer steps trained so far. */
  step: number;
  layerStructure: number[];
  activation: ActivationName;
  layerNorm: boolean;
  weightInit: WeightInit;
  useDropout: boolean;
  /** Effective dropout probabilities (after A1111's legacy derivation when the file had none). */
  dropoutStructure: number[];
  lastLayerDropout: boolean;
  activateOutput: boolean;
  /** Short hash of the checkpoint it was trained on (informational). */
  sdCheckpoint: string | null;
  sdCheckpointName: string | null;
  optionalInfo: string | null;
  /**
   * MonkeyPatch "beta" network: each module is a chain of residual blocks (the file's
   * `skip_connection: True`). Absent or false for A1111 networks.
   */
  skipConnection?: boolean;
  /** MonkeyPatch's `upsample_linear` for residual blocks: "Linear" (a bias-free Linear on the skip path) or null (nearest-exact). */
  upsampleLinear?: string | null;
}

/** Options of `createHypernetwork`, named like A1111's "Create hypernetwork" tab. */
export interface CreateOptions {
  name: string;
  /**
   * Context widths to create modules for (A1111 default: 768, 320, 640, 1280 — SD 1.x's). `"all"`
   * takes the widths of the model passed as `createHypernetwork`'s second argument.
   */
  dims?: number[] | "all";
  /** Width multipliers; first and last must be 1 (default [1, 2, 1]). Fractions allowed. */
  layerStructure?: number[];
  /** Activation name (default "linear", i.e. none). `swish` means Hardswish, as in A1111. */
  activation?: string;
  weightInit?: WeightInit;
  layerNorm?: boolean;
  /** Enable dropout with `dropoutStructure` (default false). */
  useDropout?: boolean;
  /** Dropout per layer_structure entry, e.g. [0, 0.05, 0.15] (default all zeros). */
  dropoutStructure?: number[];
  /** Apply the activation after the output Linear too (default false, as A1111 creates). */
  activateOutput?: boolean;
  /** Seed for the initial weights (default 0): the same options and seed give the same network. */
  seed?: number;
  /**
   * Standard deviation of the Normal init and of LayerNorm weights (default 0.01, A1111's fixed value;
   * MonkeyPatch's "Standard Deviation for Normal weight initialization"). Not stored in the file.
   */
  normalStd?: number;
  /**
   * Start with the last Linear of every module at zero (default false): the residual branch is then
   * exactly 0, so the fresh network is the identity and the model at any multiplier equals the base
   * model until the first step moves it. The fix for "every non-Normal init destroys images at step
   * 0" (A1111 #4350). Not stored in the file (it only decides the first weights).
   */
  zeroLastLayer?: boolean;
  optionalInfo?: string | null;
  /**
   * Build a MonkeyPatch "beta" network (default false): each module a chain of residual blocks
   * (resblock.ts), saved with `skip_connection: True`. Dropout may then sit after the last block.
   */
  skipConnection?: boolean;
  /** With `skipConnection`: "Linear" gives each block a frozen bias-free Linear skip path (default null: a resize). */
  upsampleLinear?: "Linear" | null;
}

/** A1111's default dims for SD 1.x: the CLIP width and the three UNet attention widths. */
export const DEFAULT_DIMS = [768, 320, 640, 1280] as const;

/**
 * A1111's `parse_dropout_structure`: the effective dropout list for a file or a creation request.
 * Without `use_dropout` it is all zeros; with it and no explicit list, the legacy rule
 * `[0] + [0.3]·(n−3) + [0.3 if last_layer_dropout else 0] + [0]` applies.
 */
export function effectiveDropoutStructure(
  layerStructure: readonly number[],
  useDropout: boolean,
  lastLayerDropout: boolean,
  given?: readonly number[] | null,
): number[] {
  const n = layerStructure.length;
  if (given && given.length > 0) return [...given];
  if (!useDropout) return new Array<number>(n).fill(0);
  const out = [0];
  for (let i = 0; i < n - 3; i++) out.push(0.3);
  out.push(lastLayerDropout ? 0.3 : 0);
  out.push(0);
  return out;
}

/** Names become file names: A1111 keeps alphanumerics and `._- `. */
export function sanitizeName(name: string): string {
  const s = [...name]
    .filter((c) => /[\p{L}\p{N}._\- ]/u.test(c))
    .join("")
    .trim();
  if (!s) throw new Error(`hypernetwork name "${name}" has no usable characters (letters, digits, . _ - and spaces are kept)`);
  return s;
}

export class Hypernetwork {
  /** (k, v) module pair for each dim, in creation/file order. */
  readonly modules: Map<number, [HypernetworkModule, HypernetworkModule]>;
  info: HypernetworkInfo;

  constructor(info: HypernetworkInfo, modules: Map<number, [HypernetworkModule, HypernetworkModule]>) {
    this.info = info;
    this.modules = modules;
  }

  get name(): string {
    return this.info.name;
  }

  /** Dims that have a module pair. */
  get dims(): number[] {
    return [...this.modules.keys()];
  }

  /** The structural options shared by all modules. */
  get structure(): ModuleStructure {
    return structureOf(this.info);
  }

  /** The pair for a context width, or undefined (that width passes through unchanged). */
  pair(dim: number): [HypernetworkModule, HypernetworkModule] | undefined {
    return this.modules.get(dim);
  }

  /** Rewrite a context for `to_k` (`which` = "k") or `to_v`; widths without a module pass through. */
  apply(which: "k" | "v", context: tf.Tensor, opts: ForwardOptions = {}): tf.Tensor {
    const p = this.modules.get(context.shape[context.shape.length - 1]!);
    if (!p) return context;
    return p[which === "k" ? 0 : 1].forward(context, opts);
  }

  /**
   * The parameters the optimizer updates, in A1111's `weights()` order: dims in order, k then v,
   * Sequential order inside. MonkeyPatch's upsample layers are saved but never trained, so they are
   * not listed here (each module's own `namedParameters` lists every stored tensor).
   */
  namedParameters(): Array<[string, import("../nn/module").Param]> {
    const out: Array<[string, import("../nn/module").Param]> = [];
    for (const [dim, [k, v]] of this.modules) {
      for (const [p, param] of k.trainedParameters()) out.push([`${dim}.0.${p}`, param]);
      for (const [p, param] of v.trainedParameters()) out.push([`${dim}.1.${p}`, param]);
    }
    return out;
  }

  /** Every stored tensor (frozen upsample layers included), in `namedParameters`' order otherwise. */
  storedParameters(): Array<[string, import("../nn/module").Param]> {
    const out: Array<[string, import("../nn/module").Param]> = [];
    for (const [dim, [k, v]] of this.modules) {
      for (const [p, param] of k.namedParameters()) out.push([`${dim}.0.${p}`, param]);
      for (const [p, param] of v.namedParameters()) out.push([`${dim}.1.${p}`, param]);
    }
    return out;
  }

  /** Trainable variables, in `namedParameters` order. */
  trainableVariables(): tf.Variable[] {
    return this.namedParameters().map(([, p]) => p.value);
  }

  /** Total number of scalar parameters (frozen upsample layers included). */
  parameterCount(): number {
    let n = 0;
    for (const [k, v] of this.modules.values()) n += k.parameterCount() + v.parameterCount();
    return n;
  }

  /** Free all weights. */
  dispose(): void {
    for (const [k, v] of this.modules.values()) {
      k.dispose();
      v.dispose();
    }
  }
}

/** The module structure described by a network's info. */
export function structureOf(info: HypernetworkInfo): ModuleStructure {
  return {
    layerStructure: info.layerStructure,
    activation: info.activation,
    layerNorm: info.layerNorm,
    dropoutStructure: info.dropoutStructure,
    activateOutput: info.activateOutput,
    ...(info.skipConnection ? { skipConnection: true, upsampleLinear: info.upsampleLinear ?? null } : {}),
  };
}

/**
 * Create a new hypernetwork exactly as A1111's "Create hypernetwork" does (spec §4.1), with
 * weights drawn by the chosen init. Invalid options give an error that says what to change.
 * `model` (a base model or UNet) is needed only for `dims: "all"`.
 */
export function createHypernetwork(opts: CreateOptions, model?: { readonly contextDims: readonly number[] }): Hypernetwork {
  const layerStructure = opts.layerStructure ?? [1, 2, 1];
  const activation = checkActivation(opts.activation ?? "linear");
  const weightInit = opts.weightInit ?? "Normal";
  if (!WEIGHT_INITS.includes(weightInit))
    throw new Error(`unknown weight initialization "${weightInit}"; use one of ${WEIGHT_INITS.join(", ")}`);
  const useDropout = opts.useDropout ?? false;
  let dropout: number[];
  if (useDropout && opts.dropoutStructure) {
    if (opts.dropoutStructure.length !== layerStructure.length) {
      throw new Error(
        `dropoutStructure has ${opts.dropoutStructure.length} entries but layerStructure has ${layerStructure.length}; give one probability per entry, e.g. [0, 0.05, 0]`,
      );
    }
    dropout = [...opts.dropoutStructure];
  } else {
    dropout = new Array<number>(layerStructure.length).fill(0);
  }
  if (opts.dims === "all" && !model) throw new Error(`dims: "all" needs the model: createHypernetwork({ …, dims: "all" }, base)`);
  const dims = opts.dims === "all" ? [...model!.contextDims] : (opts.dims ?? [...DEFAULT_DIMS]);
  if (dims.length === 0) throw new Error("a hypernetwork needs at least one dim (context width)");
  for (const d of dims) if (!Number.isInteger(d) || d < 1) throw new Error(`dim ${d} is not a positive integer`);
  if (new Set(dims).size !== dims.length) throw new Error(`dims [${dims.join(", ")}] contain a duplicate`);
  const info: HypernetworkInfo = {
    name: sanitizeName(opts.name),
    step: 0,
    layerStructure: [...layerStructure],
    activation,
    layerNorm: opts.layerNorm ?? false,
    weightInit,
    useDropout,
    dropoutStructure: dropout,
    lastLayerDropout: dropout.length >= 2 ? dropout[dropout.length - 2] !== 0 : false,
    activateOutput: opts.activateOutput ?? false,
    sdCheckpoint: null,
    sdCheckpointName: null,
    optionalInfo: opts.optionalInfo ?? null,
    ...(opts.skipConnection ? { skipConnection: true, upsampleLinear: opts.upsampleLinear ?? null } : {}),
  };
  if (opts.upsampleLinear !== undefined && opts.upsampleLinear !== null && (opts.upsampleLinear !== "Linear" || !opts.skipConnection))
    throw new Error(`upsampleLinear ${JSON.stringify(opts.upsampleLinear)} needs skipConnection: true and must be "Linear" (or null)`);
  const structure = structureOf(info);
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a whole number, got ${seed}`);
  const modules = new Map<number, [HypernetworkModule, HypernetworkModule]>();
  const net = new Hypernetwork(info, modules);
  try {
    dims.forEach((dim, i) => {
      const mk = (j: number): HypernetworkModule => {
        const m = new HypernetworkModule(dim, structure, {
          trainable: true,
          init: weightInitializer(weightInit, (seed * 1009 + i * 2 + j) * 100_003 + 1, { normalStd: opts.normalStd }),
        });
        if (!opts.zeroLastLayer) return m;
        try {
          m.zeroLastLayer();
        } catch (err) {
          m.dispose();
          throw err;
        }
        return m;
      };
      const k = mk(0);
      try {
        modules.set(dim, [k, mk(1)]);
      } catch (err) {
        k.dispose();
        throw err;
      }
    });
  } catch (err) {
    net.dispose();
    throw err;
  }
  return net;
}

/** Build the modules of a network from its info with zero weights (to be filled from a file). */
export function emptyHypernetwork(info: HypernetworkInfo, dims: number[], trainable = true): Hypernetwork {
  const structure = structureOf(info);
  const modules = new Map<number, [HypernetworkModule, HypernetworkModule]>();
  for (const dim of dims)
    modules.set(dim, [new HypernetworkModule(dim, structure, { trainable }), new HypernetworkModule(dim, structure, { trainable })]);
  return new Hypernetwork(info, modules);
}
