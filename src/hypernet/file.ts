/**
 * Hypernetwork files: AUTOMATIC1111 `.pt` (also NovelAI's original and kohya's layouts) and
 * `.safetensors`, read and written without PyTorch and without executing anything.
 *
 * Reading goes through a plain, tfjs-free `HypernetworkFile` — metadata with A1111's loader
 * defaults plus each module's state dict as host tensors in their stored precision — so that
 * `convert` and `inspect` lose nothing and need no backend. `toNetwork`/`fromNetwork` move between
 * that and a live `Hypernetwork`.
 *
 * The `.pt` layout (spec §2.1–§2.2): a dict `{dim: (state_dict_k, state_dict_v), …metadata}`, dims
 * as int keys, state dicts as OrderedDicts keyed `linear.<i>.weight|bias` in PyTorch layout.
 * The `.safetensors` layout (this project's, as A1111 has none): tensors `<dim>.<0|1>.<key>`
 * (0 = k, 1 = v) and every A1111 metadata key JSON-encoded in `__metadata__`.
 */
import * as fs from "node:fs";
import type { WriteOptions } from "../io/atomic";
import { type DType, type HostTensor, numel } from "../io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyKey, type PyValue, isHostTensor, isTorchTensor, pySequence } from "../io/pyvalue";
import { SafetensorsFile, writeSafetensors } from "../io/safetensors";
import { JsonFloat, type StrictJson, parseStrictJson } from "../io/strict-json";
import { describeTorchFile, readTorchFile, writeTorchFile } from "../io/torch-file";
import { loadStateDict } from "../nn/module";
import { EXTRA_TENSOR_PREFIX, encodeExtras, extrasFromMetadata, isPyScalar, nonFiniteWarning, pyKeyText } from "./file-extras";
import {
  BETA_KEYS,
  type HypernetworkFile,
  type HypernetworkFormat,
  META_KEYS,
  META_SET,
  checkShapes,
  describe,
  fail,
  infoFromMeta,
} from "./file-meta";
import { planLayers } from "./module";
import { isResidual, resBlockModulePaths } from "./resblock";
import { type Hypernetwork, type HypernetworkInfo, emptyHypernetwork, structureOf } from "./network";

export type { HypernetworkFile, HypernetworkFormat } from "./file-meta";

/** The NovelAI → A1111 key renames (A1111's `fix_old_state_dict`). */
const LEGACY_KEYS: Record<string, string> = {
  "linear1.weight": "linear.0.weight",
  "linear1.bias": "linear.0.bias",
  "linear2.weight": "linear.1.weight",
  "linear2.bias": "linear.1.bias",
};

// ---- reading ------------------------------------------------------------------------------

/**
 * Read a hypernetwork file (`.pt` or `.safetensors`) into host memory. With `describeOnly` a `.pt`'s
 * tensor values are not read at all (dtype and shape only; their `data` throws): enough for
 * `inspect`, and bounded by the pickle's size even when the file's views describe gigabytes.
 */
export function readHypernetworkFile(file: string, opts: ReadHypernetworkOptions = {}): HypernetworkFile {
  if (!fs.existsSync(file)) throw fail(file, "no such file");
  if (fs.statSync(file).isDirectory()) throw fail(file, "is a folder, not a hypernetwork file");
  const hf = file.toLowerCase().endsWith(".safetensors")
    ? readSafetensorsHypernetwork(file)
    : hypernetworkFromPy(opts.describeOnly ? describeTorchFile(file) : readTorchFile(file), file);
  // NaN/Inf weights load (A1111 loads them too) with one warning naming each tensor.
  const warning = opts.describeOnly ? undefined : nonFiniteWarning(hf.weights, file);
  if (warning) (opts.onWarning ?? ((m) => console.warn(m)))(warning);
  return hf;
}

/** Options of `readHypernetworkFile`. */
export interface ReadHypernetworkOptions {
  /** List tensors (dtype, shape) without reading their values (`.pt`; for `inspect`). */
  describeOnly?: boolean;
  /** Where the warning about NaN/Inf weights goes (default console.warn); one message per file. */
  onWarning?: (message: string) => void;
}

/** Interpret an unpickled `.pt` root object as a hypernetwork. */
export function hypernetworkFromPy(root: PyValue, file: string): HypernetworkFile {
  if (!(root instanceof PyDict))
    throw fail(
      file,
      `not a hypernetwork: the file holds ${describe(root)}, expected a dict of {dim: (k, v)} (is this a model checkpoint or an embedding?)`,
    );
  const weights = new Map<number, [Map<string, HostTensor>, Map<string, HostTensor>]>();
  const extra = new Map<PyKey, PyValue>();
  let legacy = false;
  let sawList = false;
  const dimKeys = new Map<number, PyKey>();
  for (const [key, value] of root.map) {
    const dim = typeof key === "number" ? key : typeof key === "bigint" ? Number(key) : undefined;
    if (dim === undefined) {
      if (!META_SET.has(key)) extra.set(key, value);
      continue;
    }
    if (!Number.isSafeInteger(dim) || dim <= 0 || (typeof key === "bigint" && BigInt(dim) !== key))
      throw fail(file, `width key ${pyKeyText(key)} is not a positive whole number`);
    if (dimKeys.has(dim))
      throw fail(
        file,
        `width ${dim} is listed twice (keys ${pyKeyText(dimKeys.get(dim)!)} and ${pyKeyText(key)}); which weights are meant cannot be known, so the file is refused`,
      );
    dimKeys.set(dim, key);
    const pair = pySequence(value);
    if (pair?.length !== 2) throw fail(file, `entry for dim ${dim} should be a (k, v) pair of state dicts, found ${describe(value)}`);
    if (Array.isArray(value)) sawList = true;
    const dicts = pair.map((sd, j) => {
      if (!(sd instanceof PyDict)) throw fail(file, `dim ${dim} ${j === 0 ? "k" : "v"} module is ${describe(sd)}, expected a state dict`);
      const m = new Map<string, HostTensor>();
      const from = new Map<string, string>();
      for (const [k, t] of sd.map) {
        if (typeof k !== "string") throw fail(file, `dim ${dim}: state dict key ${String(k)} is not a string`);
        let name = k;
        if (Object.hasOwn(LEGACY_KEYS, k)) {
          name = LEGACY_KEYS[k]!;
          legacy = true;
        }
        if (from.has(name))
          throw fail(
            file,
            `dim ${dim} ${j === 0 ? "k" : "v"} module: "${from.get(name)}" and "${k}" both name the weight "${name}" (NovelAI's and A1111's names for it); the file is ambiguous and is refused`,
          );
        from.set(name, k);
        if (isTorchTensor(t)) m.set(name, t.read());
        else if (isHostTensor(t)) m.set(name, t);
        else throw fail(file, `dim ${dim}: "${k}" is ${describe(t)}, expected a tensor`);
      }
      return m;
    }) as [Map<string, HostTensor>, Map<string, HostTensor>];
    weights.set(dim, dicts);
  }
  if (weights.size === 0)
    throw fail(file, "no hypernetwork modules found (no integer dim keys); this does not look like a hypernetwork file");
  const hasMeta = META_KEYS.some((k) => root.has(k));
  const info = infoFromMeta((k) => root.get(k), file);
  // A residual-block network's two MonkeyPatch keys are its metadata (written back from `info`).
  if (info.skipConnection) for (const k of BETA_KEYS) extra.delete(k);
  const format: HypernetworkFormat = legacy ? "novelai-legacy" : !hasMeta && sawList ? "kohya-nai" : "a1111";
  const hf: HypernetworkFile = { info, format, weights, extra };
  checkShapes(hf, file);
  return hf;
}

function readSafetensorsHypernetwork(file: string): HypernetworkFile {
  const f = SafetensorsFile.open(file);
  try {
    const meta = f.metadata;
    const get = (k: string): PyValue | undefined => {
      const raw = Object.hasOwn(meta, k) ? meta[k] : undefined;
      if (raw === undefined) return undefined;
      try {
        return jsonToPy(parseStrictJson(raw));
      } catch (err) {
        throw fail(file, `metadata "${k}" is not valid JSON (${(err as Error).message}): ${raw.slice(0, 80)}`);
      }
    };
    const weights = new Map<number, [Map<string, HostTensor>, Map<string, HostTensor>]>();
    const extraTensors = new Map<string, HostTensor>();
    for (const key of f.keys()) {
      if (key.startsWith(EXTRA_TENSOR_PREFIX)) {
        extraTensors.set(key, f.read(key));
        continue;
      }
      const m = /^(\d+)\.([01])\.(.+)$/.exec(key);
      if (!m) throw fail(file, `tensor "${key}" is not named <dim>.<0|1>.<key> as a hypernetwork safetensors file should be`);
      const dim = Number(m[1]);
      if (!Number.isSafeInteger(dim) || dim <= 0) throw fail(file, `tensor "${key}": width "${m[1]}" is not a positive whole number`);
      if (m[1] !== String(dim)) {
        // "08.0.x" and "8.0.x" would both load as width 8, one silently replacing the other.
        const alias = `${dim}.${m[2]}.${m[3]}`;
        throw fail(
          file,
          `tensor "${key}" writes width ${dim} as "${m[1]}"${f.entries.has(alias) ? `, and "${alias}" names the same weight` : ""}; widths are written without leading zeros, so the file is ambiguous and is refused`,
        );
      }
      if (!weights.has(dim)) weights.set(dim, [new Map(), new Map()]);
      weights.get(dim)![Number(m[2])]!.set(m[3]!, f.read(key));
    }
    if (weights.size === 0) throw fail(file, "no hypernetwork tensors found");
    const info = infoFromMeta(get, file);
    const known = info.skipConnection ? new Set<PyKey>([...META_SET, ...BETA_KEYS]) : META_SET;
    const hf: HypernetworkFile = { info, format: "safetensors", weights, extra: extrasFromMetadata(file, meta, extraTensors, known) };
    checkShapes(hf, file);
    return hf;
  } finally {
    f.close();
  }
}

/** A metadata value: integers stay int (bigint past 2^53 − 1), numbers written with a fraction are floats. */
function jsonToPy(v: StrictJson): PyValue {
  if (isPyScalar(v)) return v;
  if (v instanceof JsonFloat) return new PyFloat(v.value);
  if (Array.isArray(v)) return v.map(jsonToPy);
  throw new Error("an object is not a valid value here");
}

// ---- writing ------------------------------------------------------------------------------

/** The `.pt` root object A1111's `Hypernetwork.save` would write for this file. */
export function hypernetworkToPy(hf: HypernetworkFile): PyDict {
  const root = new PyDict("dict");
  const s = structureOf(hf.info);
  for (const [dim, pair] of hf.weights) {
    const paths = isResidual(s) ? resBlockModulePaths(dim, s) : ["", "linear", ...planLayers(dim, s).map((p) => `linear.${p.index}`)];
    const dicts = pair.map((sd) => {
      const od = new PyDict("OrderedDict");
      for (const [k, t] of sd) od.set(k, t);
      // torch's state_dict carries per-submodule version metadata; A1111 files have it.
      const meta = new PyDict("OrderedDict");
      for (const p of paths) meta.set(p, new PyDict("dict", [["version", 1]]));
      od.state = new PyDict("dict", [["_metadata", meta]]);
      return od;
    });
    root.set(dim, new PyTuple(dicts));
  }
  const i = hf.info;
  const dropout: PyValue[] = i.dropoutStructure.map((p) => (i.useDropout ? new PyFloat(p) : Number.isInteger(p) ? p : new PyFloat(p)));
  const values: Record<(typeof META_KEYS)[number], PyValue> = {
    step: i.step,
    name: i.name,
    layer_structure: i.layerStructure.map((x) => new PyFloat(x)),
    activation_func: i.activation,
    is_layer_norm: i.layerNorm,
    weight_initialization: i.weightInit,
    sd_checkpoint: i.sdCheckpoint,
    sd_checkpoint_name: i.sdCheckpointName,
    activate_output: i.activateOutput,
    use_dropout: i.useDropout,
    dropout_structure: dropout,
    last_layer_dropout: i.dropoutStructure.length >= 2 ? i.dropoutStructure[i.dropoutStructure.length - 2] !== 0 : false,
    optional_info: i.optionalInfo,
  };
  for (const k of META_KEYS) root.set(k, values[k]);
  if (i.skipConnection) {
    // MonkeyPatch writes these right after optional_info.
    root.set("skip_connection", true);
    root.set("upsample_linear", i.upsampleLinear ?? null);
  }
  for (const [k, v] of hf.extra) if (!root.has(k)) root.set(k, v);
  return root;
}

/** JSON text of each A1111 metadata key, for `.safetensors` `__metadata__`. */
function metadataStrings(info: HypernetworkInfo): Record<string, string> {
  const py = hypernetworkToPy({ info, format: "a1111", weights: new Map(), extra: new Map() });
  const out: Record<string, string> = { format: "hypernet-lab/a1111-hypernetwork" };
  for (const k of [...META_KEYS, ...BETA_KEYS]) if (py.has(k)) out[k] = JSON.stringify(pyToJson(py.get(k)!));
  return out;
}

function pyToJson(v: PyValue): unknown {
  if (v instanceof PyFloat) return v.value;
  if (Array.isArray(v)) return v.map(pyToJson);
  return v;
}

/** Options for saving. */
export interface SaveOptions extends WriteOptions {
  /** Store weights as this dtype (default: as they are; a live network is float32). */
  dtype?: DType;
}

/** What a write could not keep (empty for `.pt`; see file-extras.ts for `.safetensors`). */
export interface WriteReport {
  /** One line per extra top-level key that was dropped, naming the key and why. */
  dropped: string[];
}

/**
 * Write a hypernetwork file; the format follows the extension (`.safetensors`, else `.pt`).
 * Atomic (temp file + rename); refuses to replace an existing file unless `overwrite`.
 * Extra top-level keys are kept in both formats (in `.safetensors` as the `extra` metadata key);
 * the returned report lists any that could not be.
 */
export function writeHypernetworkFile(hf: HypernetworkFile, file: string, opts: SaveOptions = {}): WriteReport {
  const cast = (t: HostTensor): HostTensor => (opts.dtype && opts.dtype !== t.dtype ? { ...t, dtype: opts.dtype } : t);
  if (file.toLowerCase().endsWith(".safetensors")) {
    const tensors: Array<[string, HostTensor]> = [];
    for (const [dim, pair] of hf.weights) pair.forEach((sd, j) => sd.forEach((t, k) => tensors.push([`${dim}.${j}.${k}`, cast(t)])));
    const extras = encodeExtras(hf.extra);
    const meta = metadataStrings(hf.info);
    if (extras.json !== undefined) meta.extra = extras.json;
    writeSafetensors(file, [...tensors, ...extras.tensors], meta, opts);
    return { dropped: extras.dropped };
  }
  const castFile: HypernetworkFile = opts.dtype
    ? {
        ...hf,
        weights: new Map(
          [...hf.weights].map(([d, pair]) => [
            d,
            pair.map((sd) => new Map([...sd].map(([k, t]) => [k, cast(t)]))) as [Map<string, HostTensor>, Map<string, HostTensor>],
          ]),
        ),
      }
    : hf;
  writeTorchFile(file, hypernetworkToPy(castFile), { overwrite: opts.overwrite });
  return { dropped: [] };
}

// ---- live networks --------------------------------------------------------------------------

/** Build a live (tfjs) network from a file's contents. */
export function toNetwork(hf: HypernetworkFile, opts: { trainable?: boolean; where?: string } = {}): Hypernetwork {
  const net = emptyHypernetwork({ ...hf.info }, [...hf.weights.keys()], opts.trainable ?? true);
  try {
    for (const [dim, pair] of hf.weights) {
      const mods = net.pair(dim)!;
      pair.forEach((sd, j) => {
        loadStateDict(
          mods[j]!,
          { keys: () => sd.keys(), get: (k) => sd.get(k)!, shapeOf: (k) => sd.get(k)?.shape },
          { where: `${opts.where ?? hf.info.name}: dim ${dim} ${j === 0 ? "k" : "v"}` },
        );
      });
    }
  } catch (err) {
    net.dispose();
    throw err;
  }
  return net;
}

/** Snapshot a live network as a file's contents (float32, PyTorch layout). */
export function fromNetwork(net: Hypernetwork): HypernetworkFile {
  const weights = new Map<number, [Map<string, HostTensor>, Map<string, HostTensor>]>();
  for (const [dim, pair] of net.modules) {
    weights.set(
      dim,
      pair.map((m) => new Map(m.namedParameters().map(([k, p]) => [k, p.toTorchSync()]))) as [
        Map<string, HostTensor>,
        Map<string, HostTensor>,
      ],
    );
  }
  return {
    info: { ...net.info, layerStructure: [...net.info.layerStructure], dropoutStructure: [...net.info.dropoutStructure] },
    format: "a1111",
    weights,
    extra: new Map(),
  };
}

/** `fromNetwork` with asynchronous read-back: works on every backend, WebGPU in Node included. */
export async function fromNetworkAsync(net: Hypernetwork): Promise<HypernetworkFile> {
  const weights = new Map<number, [Map<string, HostTensor>, Map<string, HostTensor>]>();
  for (const [dim, pair] of net.modules) {
    const sds: Array<Map<string, HostTensor>> = [];
    for (const m of pair) {
      const sd = new Map<string, HostTensor>();
      for (const [k, p] of m.namedParameters()) sd.set(k, await p.toTorch());
      sds.push(sd);
    }
    weights.set(dim, sds as [Map<string, HostTensor>, Map<string, HostTensor>]);
  }
  return {
    info: { ...net.info, layerStructure: [...net.info.layerStructure], dropoutStructure: [...net.info.dropoutStructure] },
    format: "a1111",
    weights,
    extra: new Map(),
  };
}

/** `saveHypernetwork` with asynchronous read-back (use it where the backend may be WebGPU). */
export async function saveHypernetworkAsync(net: Hypernetwork, file: string, opts: SaveOptions = {}): Promise<void> {
  void writeHypernetworkFile(await fromNetworkAsync(net), file, opts);
}

/** Load a hypernetwork file as a live network (inference: eval mode, not trainable unless asked). */
export function loadHypernetwork(file: string, opts: { trainable?: boolean; onWarning?: (message: string) => void } = {}): Hypernetwork {
  return toNetwork(readHypernetworkFile(file, { onWarning: opts.onWarning }), { trainable: opts.trainable ?? false, where: file });
}

/** Save a live network (`.pt` in A1111's layout, or `.safetensors` by extension). */
export function saveHypernetwork(net: Hypernetwork, file: string, opts: SaveOptions = {}): void {
  void writeHypernetworkFile(fromNetwork(net), file, opts);
}

/** Number of scalar parameters stored in a file. */
export function fileParameterCount(hf: HypernetworkFile): number {
  let n = 0;
  for (const pair of hf.weights.values()) for (const sd of pair) for (const t of sd.values()) n += numel(t.shape);
  return n;
}
