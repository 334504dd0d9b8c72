/**
 * Weight sources: one interface over "a file of named tensors", so model loaders read a
 * `.safetensors` file, an in-memory map or a key-renamed view of either the same way — tensor by
 * tensor, never the whole file at once.
 */
import type { DType, HostTensor } from "./host-tensor";
import { SafetensorsFile } from "./safetensors";
import { StorageTensor, openTorchFile } from "./torch-file";
import { PyDict, type TorchTensor, isTorchTensor } from "./pyvalue";

/** Source of tensors by key (what `nn/module.loadStateDict` reads from). */
export interface TensorSource {
  keys(): Iterable<string>;
  get(key: string): HostTensor;
  /** Optional: the stored shape of a key without reading its data. */
  shapeOf?(key: string): number[] | undefined;
}

/** A tensor source that may hold an open file (call `close()` when done) and says where it came from. */
export interface WeightSource extends TensorSource {
  /** File path or description, for error messages. */
  readonly where: string;
  shapeOf(key: string): number[] | undefined;
  /** How the file stores a tensor (undefined for in-memory sources that do not know). */
  dtypeOf(key: string): DType | undefined;
  close(): void;
}

/** What the loaders accept: a `.safetensors`/`.ckpt`/`.pt` path, a tensor map, or any `TensorSource`. */
export type WeightInput = string | Map<string, HostTensor> | TensorSource;

/**
 * Open a weight input. A path ending in `.safetensors` is read with the safetensors reader; any
 * other path as a PyTorch `.ckpt`/`.pt` file (safe unpickler, never executes code), using its
 * top-level `state_dict` when there is one. Tensors are read on `get` and widened to float32.
 */
export function openWeights(input: WeightInput, where?: string): WeightSource {
  if (typeof input === "string") {
    if (!/\.safetensors$/i.test(input)) return openTorchWeights(input, where);
    const f = SafetensorsFile.open(input);
    return {
      where: where ?? input,
      keys: () => f.keys(),
      get: (k) => f.read(k),
      shapeOf: (k) => f.entries.get(k)?.shape,
      dtypeOf: (k) => f.entries.get(k)?.dtype,
      close: () => f.close(),
    };
  }
  if (input instanceof Map) {
    return {
      where: where ?? "tensor map",
      keys: () => input.keys(),
      get: (k) => {
        const t = input.get(k);
        if (!t) throw new Error(`${where ?? "tensor map"}: no tensor named "${k}"`);
        return t;
      },
      shapeOf: (k) => input.get(k)?.shape,
      dtypeOf: (k) => input.get(k)?.dtype,
      close: () => {},
    };
  }
  return {
    where: where ?? "tensor source",
    keys: () => input.keys(),
    get: (k) => input.get(k),
    shapeOf: (k) => input.shapeOf?.(k),
    dtypeOf: () => undefined,
    close: () => {},
  };
}

/**
 * A renamed view of a source: `rename(fileKey)` gives the key the model expects (or undefined to
 * hide the tensor); `reshape(fileKey, shape)` may give the shape the model expects for that tensor
 * (same element count, e.g. `[c, c]` → `[c, c, 1, 1]`).
 */
export function renamedSource(
  src: WeightSource,
  rename: (fileKey: string) => string | undefined,
  reshape: (fileKey: string, shape: number[]) => number[] = (_k, s) => s,
): WeightSource {
  const toFile = new Map<string, string>();
  for (const k of src.keys()) {
    const m = rename(k);
    if (m === undefined) continue;
    if (toFile.has(m)) throw new Error(`${src.where}: tensors "${toFile.get(m)}" and "${k}" both map to "${m}"`);
    toFile.set(m, k);
  }
  return {
    where: src.where,
    keys: () => toFile.keys(),
    get: (k) => {
      const fk = toFile.get(k);
      if (fk === undefined) throw new Error(`${src.where}: no tensor maps to "${k}"`);
      const t = src.get(fk);
      return { ...t, shape: reshape(fk, t.shape) };
    },
    shapeOf: (k) => {
      const fk = toFile.get(k);
      const s = fk === undefined ? undefined : src.shapeOf(fk);
      return fk === undefined || s === undefined ? undefined : reshape(fk, s);
    },
    dtypeOf: (k) => {
      const fk = toFile.get(k);
      return fk === undefined ? undefined : src.dtypeOf(fk);
    },
    close: () => src.close(),
  };
}

/** A torch checkpoint as a weight source: the tensors of `state_dict` (or of the top-level dict). */
function openTorchWeights(file: string, where?: string): WeightSource {
  const f = openTorchFile(file);
  try {
    let dict = f.root;
    if (dict instanceof PyDict && dict.get("state_dict") instanceof PyDict) dict = dict.get("state_dict")!;
    if (!(dict instanceof PyDict))
      throw new Error(`${file}: expected a torch checkpoint holding a dict of tensors (optionally under "state_dict")`);
    const tensors = new Map<string, TorchTensor>();
    for (const [k, v] of dict.map) if (typeof k === "string" && isTorchTensor(v)) tensors.set(k, v);
    return {
      where: where ?? file,
      keys: () => tensors.keys(),
      get: (k) => {
        const t = tensors.get(k);
        if (!t) throw new Error(`${file}: no tensor named "${k}"`);
        // Named by its key, so that a refused expansion (see view-budget.ts) says which tensor.
        return t instanceof StorageTensor ? t.read(k) : t.read();
      },
      shapeOf: (k) => tensors.get(k)?.shape,
      dtypeOf: (k) => tensors.get(k)?.dtype,
      close: () => f.close(),
    };
  } catch (err) {
    f.close();
    throw err;
  }
}
