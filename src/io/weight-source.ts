/**
 * Weight sources: one interface over "a file of named tensors", so model loaders read a
 * `.safetensors` file, an in-memory map or a key-renamed view of either the same way — tensor by
 * tensor, never the whole file at once.
 */
import type { HostTensor } from "./host-tensor";
import { SafetensorsFile } from "./safetensors";
import type { TensorSource } from "../nn/module";

/** A tensor source that may hold an open file (call `close()` when done) and says where it came from. */
export interface WeightSource extends TensorSource {
  /** File path or description, for error messages. */
  readonly where: string;
  shapeOf(key: string): number[] | undefined;
  close(): void;
}

/** What the loaders accept: a `.safetensors` path, a tensor map, or any `TensorSource`. */
export type WeightInput = string | Map<string, HostTensor> | TensorSource;

/**
 * Open a weight input. A path must end in `.safetensors` (PyTorch `.ckpt`/`.pt` files are read by
 * the torch-file reader; pass its tensors as a map). Tensors are read on `get` and widened to float32.
 */
export function openWeights(input: WeightInput, where?: string): WeightSource {
  if (typeof input === "string") {
    if (!/\.safetensors$/i.test(input)) {
      throw new Error(`${input}: only .safetensors files are read here; for a .ckpt/.pt file read its state dict first and pass the tensors as a Map`);
    }
    const f = SafetensorsFile.open(input);
    return {
      where: where ?? input,
      keys: () => f.keys(),
      get: (k) => f.read(k),
      shapeOf: (k) => f.entries.get(k)?.shape,
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
      close: () => {},
    };
  }
  return {
    where: where ?? "tensor source",
    keys: () => input.keys(),
    get: (k) => input.get(k),
    shapeOf: (k) => input.shapeOf?.(k),
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
    close: () => src.close(),
  };
}
