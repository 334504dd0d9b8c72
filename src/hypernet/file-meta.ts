/**
 * The metadata side of the hypernetwork format, shared by the `.pt` and `.safetensors` readers and
 * the writer: A1111's metadata keys, their loader defaults and type checks, and the check that each
 * state dict has the shapes its metadata implies. Kept apart from file.ts so the readers and
 * writers there read as layout code only.
 */

import * as path from "node:path";
import type { HostTensor } from "../io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyKey, type PyValue, isHostTensor, isTorchTensor, pyNumber, pySequence } from "../io/pyvalue";
import { checkActivation } from "./activations";
import { planLayers, type WeightInit, WEIGHT_INITS } from "./module";
import { isResidual, resBlockShapes } from "./resblock";
import { type HypernetworkInfo, effectiveDropoutStructure, structureOf } from "./network";

/** Which on-disk layout a file had. */
export type HypernetworkFormat = "a1111" | "novelai-legacy" | "kohya-nai" | "safetensors";

/** A hypernetwork as stored: metadata and host tensors, no tfjs. */
export interface HypernetworkFile {
  info: HypernetworkInfo;
  format: HypernetworkFormat;
  /** Per dim, the k and v state dicts (`linear.<i>.weight` → tensor in PyTorch layout). */
  weights: Map<number, [Map<string, HostTensor>, Map<string, HostTensor>]>;
  /** Top-level keys this project does not interpret (kept on rewrite to `.pt`). */
  extra: Map<PyKey, PyValue>;
}

/** The A1111 metadata keys, in the order `Hypernetwork.save` writes them. */
export const META_KEYS = [
  "step",
  "name",
  "layer_structure",
  "activation_func",
  "is_layer_norm",
  "weight_initialization",
  "sd_checkpoint",
  "sd_checkpoint_name",
  "activate_output",
  "use_dropout",
  "dropout_structure",
  "last_layer_dropout",
  "optional_info",
] as const;

/**
 * MonkeyPatch's two extra keys, which it writes after `optional_info` in every file. They are
 * metadata of a residual-block (`skip_connection: True`) network; in other files they are kept as
 * extra keys, as found.
 */
export const BETA_KEYS = ["skip_connection", "upsample_linear"] as const;

/** The metadata keys as a set, to tell them from extra top-level keys. */
export const META_SET: ReadonlySet<PyKey> = new Set<PyKey>(META_KEYS);

/** An error naming the user's file first, as every message of the format does. */
export function fail(file: string, what: string): Error {
  return new Error(`${file}: ${what}`);
}

/** A string metadata value, or null when absent/None; anything else is refused. */
function str(v: PyValue | undefined, file: string, key: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "string") throw fail(file, `metadata "${key}" should be a string, found ${describe(v)}`);
  return v;
}

/** A true/false metadata value (ints count as Python truthiness), or `dflt` when absent. */
function bool(v: PyValue | undefined, dflt: boolean, file: string, key: string): boolean {
  if (v === undefined || v === null) return dflt;
  if (typeof v === "boolean") return v;
  if (typeof v === "number") return v !== 0;
  throw fail(file, `metadata "${key}" should be true/false, found ${describe(v)}`);
}

/** A list/tuple of finite numbers, or null when absent; anything else is refused. */
function numberList(v: PyValue | undefined, file: string, key: string): number[] | null {
  if (v === undefined || v === null) return null;
  const seq = pySequence(v);
  if (!seq) throw fail(file, `metadata "${key}" should be a list of numbers, found ${describe(v)}`);
  return seq.map((x) => {
    const n = pyNumber(x);
    if (n === undefined || !Number.isFinite(n)) throw fail(file, `metadata "${key}" holds a non-number ${describe(x)}`);
    return n;
  });
}

/** A short, user-facing description of a Python value, for error messages. */
export function describe(v: PyValue): string {
  if (v === null) return "None";
  if (Array.isArray(v)) return "a list";
  if (v instanceof PyTuple) return "a tuple";
  if (v instanceof PyDict) return "a dict";
  if (v instanceof PyFloat) return `float ${v.value}`;
  if (isTorchTensor(v) || isHostTensor(v)) return "a tensor";
  return `${typeof v} ${JSON.stringify(typeof v === "bigint" ? v.toString() : v)}`;
}

/** Metadata with A1111's loader defaults (spec §2.1); `get` returns the stored value or undefined. */
export function infoFromMeta(get: (key: string) => PyValue | undefined, file: string): HypernetworkInfo {
  const layerStructure = numberList(get("layer_structure"), file, "layer_structure") ?? [1, 2, 1];
  const activationRaw = str(get("activation_func"), file, "activation_func");
  let activation: ReturnType<typeof checkActivation>;
  try {
    activation = checkActivation(activationRaw ?? "linear");
  } catch (err) {
    throw fail(file, (err as Error).message);
  }
  const storedUseDropout = bool(get("use_dropout"), false, file, "use_dropout");
  const lastLayerDropout = bool(get("last_layer_dropout"), false, file, "last_layer_dropout");
  const storedDropout = numberList(get("dropout_structure"), file, "dropout_structure");
  const dropoutStructure = effectiveDropoutStructure(layerStructure, storedUseDropout, lastLayerDropout, storedDropout);
  if (dropoutStructure.length < layerStructure.length) {
    throw fail(file, `dropout_structure [${dropoutStructure.join(", ")}] is shorter than layer_structure [${layerStructure.join(", ")}]`);
  }
  const init = str(get("weight_initialization"), file, "weight_initialization") ?? "Normal";
  const step = stepOf(get("step"), file);
  const skipConnection = bool(get("skip_connection"), false, file, "skip_connection");
  return {
    name: str(get("name"), file, "name") ?? path.basename(file).replace(/\.[^.]+$/, ""),
    step,
    layerStructure,
    activation,
    layerNorm: bool(get("is_layer_norm"), false, file, "is_layer_norm"),
    weightInit: (WEIGHT_INITS as readonly string[]).includes(init) ? (init as WeightInit) : "Normal",
    useDropout: dropoutStructure.some((p) => p !== 0) || storedUseDropout,
    dropoutStructure,
    lastLayerDropout,
    // Missing key → true: files from before A1111 PR #3698 activated the output layer.
    activateOutput: bool(get("activate_output"), true, file, "activate_output"),
    sdCheckpoint: str(get("sd_checkpoint"), file, "sd_checkpoint"),
    sdCheckpointName: str(get("sd_checkpoint_name"), file, "sd_checkpoint_name"),
    optionalInfo: str(get("optional_info"), file, "optional_info"),
    ...(skipConnection ? { skipConnection, upsampleLinear: upsampleOf(get("upsample_linear"), file) } : {}),
  };
}

/** `upsample_linear`: a string ("Linear" adds the layer; MonkeyPatch ignores any other), or None/False for none. */
function upsampleOf(v: PyValue | undefined, file: string): string | null {
  if (v === undefined || v === null || v === false) return null;
  if (typeof v === "string") return v;
  throw fail(file, `metadata "upsample_linear" should be "Linear" or None, found ${describe(v)}`);
}

/** Check every state dict against the layout the metadata implies, naming the first problem. */
export function checkShapes(hf: HypernetworkFile, file: string): void {
  const s = structureOf(hf.info);
  for (const [dim, pair] of hf.weights) {
    let plan: ReturnType<typeof planLayers>;
    let expected: Map<string, number[]>;
    try {
      plan = isResidual(s) ? [] : planLayers(dim, s);
      expected = isResidual(s) ? resBlockShapes(dim, s) : new Map<string, number[]>();
    } catch (err) {
      throw fail(file, `dim ${dim}: ${(err as Error).message}`);
    }
    for (const p of plan) {
      if (p.kind === "linear") {
        expected.set(`linear.${p.index}.weight`, [p.outFeatures, p.inFeatures]);
        expected.set(`linear.${p.index}.bias`, [p.outFeatures]);
      } else if (p.kind === "layernorm") {
        expected.set(`linear.${p.index}.weight`, [p.features]);
        expected.set(`linear.${p.index}.bias`, [p.features]);
      } else if (p.kind === "activation" && p.name === "prelu") {
        expected.set(`linear.${p.index}.weight`, [1]);
      }
    }
    pair.forEach((sd, j) => {
      const which = `dim ${dim} ${j === 0 ? "k" : "v"} module`;
      for (const [k, shape] of expected) {
        const t = sd.get(k);
        if (!t) {
          throw fail(
            file,
            `${which} is missing "${k}" (the metadata — layer_structure [${s.layerStructure.join(", ")}], activation ${s.activation}, layer norm ${s.layerNorm}, ${isResidual(s) ? `skip_connection, upsample_linear ${JSON.stringify(s.upsampleLinear ?? null)}` : `activate_output ${s.activateOutput}`} — implies keys ${[...expected.keys()].join(", ")}; the file has ${[...sd.keys()].join(", ")})`,
          );
        }
        if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
          throw fail(file, `${which}: "${k}" has shape [${t.shape.join(", ")}], expected [${shape.join(", ")}]`);
        }
      }
      for (const k of sd.keys())
        if (!expected.has(k))
          throw fail(
            file,
            `${which} has an unexpected key "${k}" for its metadata (layer_structure [${s.layerStructure.join(", ")}], activation ${s.activation}, layer norm ${s.layerNorm}${isResidual(s) ? `, skip_connection, upsample_linear ${JSON.stringify(s.upsampleLinear ?? null)}` : ""})`,
          );
    });
  }
}

/** `step`: a whole number from 0 to 2^53 − 1; anything else is refused rather than changed. */
function stepOf(v: PyValue | undefined, file: string): number {
  if (v === undefined || v === null) return 0;
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return v;
  if (typeof v === "bigint" && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  const why = typeof v === "bigint" && v > 0n ? "; a step beyond 2^53 - 1 cannot be kept exactly" : "";
  throw fail(file, `metadata "step" should be a whole number from 0 to 2^53 - 1, found ${describe(v)}${why}`);
}
