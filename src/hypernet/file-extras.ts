/**
 * What a hypernetwork file holds beyond the network itself, carried across formats, and the checks
 * on its weights' values.
 *
 * **Extra top-level keys.** A1111's `.pt` is a plain dict: besides `{dim: (k, v)}` and the A1111
 * metadata keys it may hold anything (old A1111 versions stored `optimizer_state_dict` there; other
 * tools add their own keys). `.pt` → `.pt` keeps them as they are. In `.safetensors` they go into
 * the `__metadata__` key `extra` as JSON text — a list of `[key, value]` pairs in this encoding,
 * which keeps every Python distinction the pickle made:
 *
 * | Python value            | JSON in `extra`                                           |
 * | ----------------------- | --------------------------------------------------------- |
 * | None, bool, str         | null, true/false, "text"                                  |
 * | int                     | 12 (beyond ±2^53: `{"int": "123…"}`)                      |
 * | float                   | `{"float": 0.5}` (`"nan"`, `"inf"`, `"-inf"`, `"-0"`)     |
 * | list / tuple            | `[…]` / `{"tuple": […]}`                                  |
 * | dict / OrderedDict      | `{"dict": [[k, v], …]}`, plus `"ordered": true`, `"state"` |
 * | bytes                   | `{"bytes": "<base64>"}`                                   |
 * | tensor                  | `{"tensor": "__extra__.<n>"}`, stored as that tensor      |
 *
 * `.safetensors` → `.pt` decodes them back, so a round trip restores each key with its type.
 * Only a value that contains itself, one nested more than `MAX_EXTRA_DEPTH` levels, or one whose
 * encoding would exceed `MAX_EXTRA_NODES` values (shared references expand) cannot be written; such keys are dropped and listed by name.
 * Metadata keys of a `.safetensors` file that are neither A1111's nor `format`/`extra` are kept as
 * extra string keys.
 */
import { type HostTensor, isFloatDType } from "../io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyKey, type PyValue, isHostTensor, isTorchTensor } from "../io/pyvalue";
import { JsonFloat, type StrictJson, parseStrictJson, StrictJsonError } from "../io/strict-json";

/** Prefix of the tensor names that hold tensors found in extra keys. */
export const EXTRA_TENSOR_PREFIX = "__extra__.";

/**
 * Deepest nesting of lists, tuples and dicts kept (each level is at most 3 JSON levels, and the
 * text is read back with a JSON depth limit of `4 * MAX_EXTRA_DEPTH`).
 */
export const MAX_EXTRA_DEPTH = 200;

/** Most values (of any kind, counted with repeats) one file's extra keys may expand to. */
export const MAX_EXTRA_NODES = 1_000_000;

/** The extra keys encoded for `.safetensors`, and what could not be. */
export interface EncodedExtras {
  /** JSON text for the `extra` metadata key (undefined when there is nothing to keep). */
  json: string | undefined;
  /** Tensors the JSON refers to, by their `__extra__.<n>` names, in order. */
  tensors: Array<[string, HostTensor]>;
  /** One line per key that was dropped, naming the key and why. */
  dropped: string[];
}

/** A key as Python would print it, for messages. */
export function pyKeyText(k: PyKey): string {
  if (k === null) return "None";
  if (typeof k === "boolean") return k ? "True" : "False";
  if (typeof k === "string") return JSON.stringify(k);
  return String(k);
}

class Unencodable extends Error {}

/** Encode the extra top-level keys of a hypernetwork file for safetensors metadata (see the module comment). */
export function encodeExtras(extra: ReadonlyMap<PyKey, PyValue>): EncodedExtras {
  const pairs: unknown[] = [];
  const tensors: Array<[string, HostTensor]> = [];
  const dropped: string[] = [];
  let nodes = 0;
  for (const [key, value] of extra) {
    const keyTensors: Array<[string, HostTensor]> = [];
    const stack = new Set<object>();
    const enc = (v: PyValue, depth = 0): unknown => {
      if (depth > MAX_EXTRA_DEPTH) throw new Unencodable(`it is nested more than ${MAX_EXTRA_DEPTH} levels deep`);
      if (++nodes > MAX_EXTRA_NODES)
        throw new Unencodable(`it expands to more than ${MAX_EXTRA_NODES} values (shared references repeated)`);
      if (v === null || typeof v === "boolean" || typeof v === "string") return v;
      if (typeof v === "number") return Number.isSafeInteger(v) ? v : { int: String(v) };
      if (typeof v === "bigint") return { int: v.toString() };
      if (v instanceof PyFloat) return { float: floatText(v.value) };
      if (v instanceof Uint8Array) return { bytes: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
      if (isTorchTensor(v) || isHostTensor(v)) {
        const name = `${EXTRA_TENSOR_PREFIX}${tensors.length + keyTensors.length}`;
        keyTensors.push([name, isTorchTensor(v) ? v.read() : v]);
        return { tensor: name };
      }
      if (stack.has(v)) throw new Unencodable("it contains itself");
      stack.add(v);
      try {
        if (Array.isArray(v)) return v.map((x) => enc(x, depth + 1));
        if (v instanceof PyTuple) return { tuple: v.items.map((x) => enc(x, depth + 1)) };
        const out: Record<string, unknown> = { dict: [...v.map].map(([k, x]) => [enc(k, depth + 1), enc(x, depth + 1)]) };
        if (v.kind === "OrderedDict") out.ordered = true;
        if (v.state !== undefined) out.state = enc(v.state, depth + 1);
        return out;
      } finally {
        stack.delete(v);
      }
    };
    const before = nodes;
    try {
      pairs.push([enc(key), enc(value)]);
      tensors.push(...keyTensors);
    } catch (err) {
      if (!(err instanceof Unencodable)) throw err;
      nodes = before;
      dropped.push(`top-level key ${pyKeyText(key)}: not kept, because ${err.message}`);
    }
  }
  return { json: pairs.length ? JSON.stringify(pairs) : undefined, tensors, dropped };
}

function floatText(x: number): number | string {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (Object.is(x, -0)) return "-0";
  return x;
}

/**
 * Decode the `extra` metadata text written by `encodeExtras`. `tensor` fetches an `__extra__.<n>`
 * tensor by name (undefined when the file has none of that name). Throws a plain message (the
 * caller adds the file) when the text does not follow the encoding.
 */
export function decodeExtras(text: string, tensor: (name: string) => HostTensor | undefined): Map<PyKey, PyValue> {
  let json: StrictJson;
  try {
    json = parseStrictJson(text, 4 * MAX_EXTRA_DEPTH);
  } catch (err) {
    throw new Error(`metadata "extra" is not valid JSON: ${err instanceof StrictJsonError ? err.message : String(err)}`);
  }
  const bad = (what: string): Error => new Error(`metadata "extra" ${what}`);
  const dec = (v: StrictJson): PyValue => {
    if (isPyScalar(v)) return v;
    if (v instanceof JsonFloat) return new PyFloat(v.value);
    if (Array.isArray(v)) return v.map(dec);
    const tag = [...v.keys()].find((k) => k === "int" || k === "float" || k === "tuple" || k === "dict" || k === "bytes" || k === "tensor");
    const x = tag === undefined ? undefined : v.get(tag);
    if (tag === "int" && typeof x === "string" && /^-?\d+$/.test(x)) {
      const b = BigInt(x);
      return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
    }
    if (tag === "float") {
      if (typeof x === "number") return new PyFloat(x);
      if (x instanceof JsonFloat) return new PyFloat(x.value);
      const special: Record<string, number> = { nan: NaN, inf: Infinity, "-inf": -Infinity, "-0": -0 };
      if (typeof x === "string" && Object.hasOwn(special, x)) return new PyFloat(special[x]!);
    }
    if (tag === "tuple" && Array.isArray(x)) return new PyTuple(x.map(dec));
    if (tag === "bytes" && typeof x === "string") return new Uint8Array(Buffer.from(x, "base64"));
    if (tag === "tensor" && typeof x === "string") {
      const t = x.startsWith(EXTRA_TENSOR_PREFIX) ? tensor(x) : undefined;
      if (!t) throw bad(`refers to a tensor "${x}" that the file does not have`);
      return t;
    }
    if (tag === "dict" && Array.isArray(x)) {
      const d = new PyDict(v.get("ordered") === true ? "OrderedDict" : "dict");
      for (const pair of x) {
        if (!Array.isArray(pair) || pair.length !== 2) throw bad("holds a dict entry that is not a [key, value] pair");
        d.set(pyKey(dec(pair[0]!)), dec(pair[1]!));
      }
      if (v.has("state")) d.state = dec(v.get("state")!);
      return d;
    }
    throw bad(
      `holds an object that is not one of the encodings (int, float, tuple, dict, bytes, tensor): keys ${[...v.keys()].join(", ")}`,
    );
  };
  const pyKey = (k: PyValue): PyKey => {
    if (isPyScalar(k)) return k;
    throw bad("uses a dict key that is not None, a bool, an int or a str");
  };
  if (!Array.isArray(json)) throw bad("is not a list of [key, value] pairs");
  const out = new Map<PyKey, PyValue>();
  for (const pair of json) {
    if (!Array.isArray(pair) || pair.length !== 2) throw bad("is not a list of [key, value] pairs");
    const k = pyKey(dec(pair[0]!));
    if (out.has(k)) throw bad(`lists the key ${pyKeyText(k)} twice`);
    out.set(k, dec(pair[1]!));
  }
  return out;
}

/**
 * A `.safetensors` hypernetwork's extra keys: its `extra` metadata key decoded, plus every metadata
 * key that is neither one of `a1111Keys` nor this format's own (`format`, `extra`), as a string.
 * Every `__extra__.<n>` tensor must be referred to. Errors name `file`.
 */
export function extrasFromMetadata(
  file: string,
  meta: Readonly<Record<string, string>>,
  tensors: ReadonlyMap<string, HostTensor>,
  a1111Keys: ReadonlySet<PyKey>,
): Map<PyKey, PyValue> {
  let extra = new Map<PyKey, PyValue>();
  const used = new Set<string>();
  if (Object.hasOwn(meta, "extra")) {
    try {
      extra = decodeExtras(meta.extra!, (name) => {
        used.add(name);
        return tensors.get(name);
      });
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}`);
    }
    for (const k of extra.keys()) {
      if (typeof k === "number" || typeof k === "bigint")
        throw new Error(`${file}: metadata "extra" holds the key ${pyKeyText(k)}, which would be a width`);
      if (a1111Keys.has(k))
        throw new Error(`${file}: metadata "extra" holds the key ${pyKeyText(k)}, which is an A1111 metadata key of its own`);
    }
  }
  for (const name of tensors.keys())
    if (!used.has(name)) throw new Error(`${file}: tensor "${name}" is not referred to by metadata "extra"`);
  for (const [k, v] of Object.entries(meta)) if (!a1111Keys.has(k) && k !== "format" && k !== "extra" && !extra.has(k)) extra.set(k, v);
  return extra;
}

/**
 * The one warning for a file whose weights hold NaN or ±Inf (undefined when all are finite):
 * such weights load, as in A1111, but every output through those modules is NaN.
 */
export function nonFiniteWarning(weights: Parameters<typeof nonFiniteTensors>[0], file: string): string | undefined {
  const bad = nonFiniteTensors(weights);
  if (bad.length === 0) return undefined;
  const shown = bad.length > 20 ? [...bad.slice(0, 20), `and ${bad.length - 20} more`] : bad;
  return `${file}: ${bad.length} weight tensor(s) hold NaN or infinite values: ${shown.join(", ")}. Outputs through these modules will not be finite; the file was loaded as stored (retrain, or resume from an earlier checkpoint).`;
}

/**
 * Names of the float weight tensors that hold NaN or ±Inf, each with its counts, as
 * `<dim>.<0|1>.<key> (2 NaN, 1 Inf)` (the `.safetensors` tensor names; 0 = k, 1 = v).
 */
export function nonFiniteTensors(
  weights: ReadonlyMap<number, readonly [ReadonlyMap<string, HostTensor>, ReadonlyMap<string, HostTensor>]>,
): string[] {
  const out: string[] = [];
  for (const [dim, pair] of weights) {
    pair.forEach((sd, j) => {
      for (const [k, t] of sd) {
        if (!isFloatDType(t.dtype)) continue;
        let nan = 0;
        let inf = 0;
        const d = t.data;
        for (let i = 0; i < d.length; i++) {
          const x = d[i]!;
          if (x - x !== 0) {
            if (Number.isNaN(x)) nan++;
            else inf++;
          }
        }
        if (nan || inf) out.push(`${dim}.${j}.${k} (${[nan ? `${nan} NaN` : "", inf ? `${inf} Inf` : ""].filter(Boolean).join(", ")})`);
      }
    });
  }
  return out;
}

/**
 * None, bool, int or str: the values JSON and a pickle share as they are (and the only dict keys
 * allowed). A type guard, so that TypeScript 5.0 (tslab's) narrows as well as the project's does.
 */
export function isPyScalar(v: unknown): v is PyKey {
  return v === null || typeof v === "boolean" || typeof v === "string" || typeof v === "number" || typeof v === "bigint";
}
