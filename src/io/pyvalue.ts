/**
 * Python values as the safe unpickler builds them and the pickle writer takes them.
 *
 * Pickles distinguish things JavaScript does not: int vs float (`768` is a dim, `1.0` a layer
 * multiplier), tuple vs list, dict vs OrderedDict, int keys vs string keys. A1111 and ComfyUI
 * depend on each of these distinctions, so they are kept explicit here:
 *
 * | Python                | here                                   |
 * | --------------------- | -------------------------------------- |
 * | None, bool, str       | null, boolean, string                  |
 * | int                   | number (always an integer) or bigint   |
 * | float                 | `PyFloat`                              |
 * | list                  | JS array                               |
 * | tuple                 | `PyTuple`                              |
 * | dict / OrderedDict    | `PyDict` (ordered `Map`, `kind` tells) |
 * | torch.Tensor          | `TorchTensor` (data read on demand)    |
 * | bytes                 | Uint8Array                             |
 */
import type { DType, HostTensor } from "./host-tensor";

/** A Python float (kept distinct from int so that `1.0` round-trips as a float). */
export class PyFloat {
  constructor(readonly value: number) {}
}

/** A Python tuple. */
export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** Keys a pickled dict may have here: str, int (number/bigint), or float/tuple/None/bool in rare files. */
export type PyKey = string | number | bigint | boolean | null;

/** A Python dict or `collections.OrderedDict`; insertion order is kept. */
export class PyDict {
  readonly map: Map<PyKey, PyValue>;
  /**
   * State applied with BUILD, if any (torch state dicts carry `{'_metadata': OrderedDict(...)}`).
   * Kept so that a read-modify-write cycle preserves it.
   */
  state: PyValue | undefined;
  constructor(
    readonly kind: "dict" | "OrderedDict" = "dict",
    entries?: Iterable<[PyKey, PyValue]>,
  ) {
    this.map = new Map(entries ?? []);
  }
  get(key: PyKey): PyValue | undefined {
    return this.map.get(key);
  }
  set(key: PyKey, value: PyValue): this {
    this.map.set(key, value);
    return this;
  }
  has(key: PyKey): boolean {
    return this.map.has(key);
  }
}

/**
 * A tensor found in a torch file. Shape and dtype are known after unpickling; the data is read from
 * the file only when `read()` is called, so a multi-GB checkpoint can be loaded tensor by tensor.
 * Writers accept either a `TorchTensor` or a plain `HostTensor`.
 */
export interface TorchTensor {
  readonly kind: "tensor";
  readonly dtype: DType;
  readonly shape: number[];
  /** Read (and, for views, gather) the elements; floats are widened to float32. */
  read(): HostTensor;
}

/** Everything that can appear in a pickled value here. */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | PyFloat
  | PyTuple
  | PyDict
  | TorchTensor
  | HostTensor
  | Uint8Array
  | PyValue[];

/** True for a torch tensor (lazy) value. */
export function isTorchTensor(v: PyValue | undefined): v is TorchTensor {
  return typeof v === "object" && v !== null && !Array.isArray(v) && (v as TorchTensor).kind === "tensor";
}

/** True for a host tensor value (as passed to writers). */
export function isHostTensor(v: PyValue | undefined): v is HostTensor {
  return (
    typeof v === "object" &&
    v !== null &&
    !Array.isArray(v) &&
    !(v instanceof Uint8Array) &&
    "data" in v &&
    "shape" in v &&
    "dtype" in v &&
    !("kind" in v)
  );
}

/** A Python number (int or float) as a JS number, or undefined for anything else. */
export function pyNumber(v: PyValue | undefined): number | undefined {
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  if (v instanceof PyFloat) return v.value;
  if (typeof v === "boolean") return v ? 1 : 0;
  return undefined;
}

/** The items of a list or tuple, or undefined for anything else. */
export function pySequence(v: PyValue | undefined): PyValue[] | undefined {
  if (Array.isArray(v)) return v;
  if (v instanceof PyTuple) return v.items;
  return undefined;
}
