/**
 * A safe reader and a torch-compatible writer for Python pickles holding tensors and plain data.
 *
 * A pickle is a program for a small stack machine; Python's `pickle.load` runs it, and two of its
 * instructions (import a global, call it) can run arbitrary code. This reader interprets the same
 * instructions but can only ever import a handful of known-harmless names — `collections.OrderedDict`,
 * torch's tensor-rebuild functions and storage types — and refuses anything else at the moment the
 * import instruction is read, before anything is built. Nothing is executed, ever: the whitelisted
 * names are re-implemented here.
 *
 * Everything is bounded: strings and byte blobs are checked against the remaining input, the stack
 * and mark depth are capped, memo look-ups must hit, the finished value may not be nested more than
 * `MAX_DEPTH` levels or contain cycles, and every tensor must fit inside its storage.
 *
 * The writer emits protocol 2 the way Python's pickler does for these values (memo included), so
 * `torch.load` reads the result like a file torch wrote itself.
 */
import { CorruptFileError, UnsafePickleError, UnsupportedFileError } from "./errors";
import { type DType, type HostTensor, decodeTensor, gatherTensor, numel } from "./host-tensor";
import { OP } from "./pickle-ops";
import { PyDict, PyFloat, type PyKey, PyTuple, type PyValue, type TorchTensor, isHostTensor, isTorchTensor } from "./pyvalue";
import { type ReadBudget, checkViewExpansion } from "./view-budget";

/** Deepest container nesting accepted in a loaded value (real checkpoints nest < 10 levels). */
export const MAX_DEPTH = 1000;
/** Most values on one level of the pickle stack. */
export const MAX_STACK = 1_000_000;
/** Most nested MARKs. */
export const MAX_MARKS = 1000;

/**
 * torch storage classes and the element type each stores. A null-prototype object: names come from
 * the file, and `torch.constructor` / `torch.__proto__` / `torch.toString` must not find
 * `Object.prototype`'s members here. Look names up with `storageDType`.
 */
export const STORAGE_DTYPES: Readonly<Record<string, DType>> = Object.freeze(
  Object.assign(Object.create(null) as Record<string, DType>, {
    FloatStorage: "F32",
    HalfStorage: "F16",
    BFloat16Storage: "BF16",
    DoubleStorage: "F64",
    LongStorage: "I64",
    IntStorage: "I32",
    ShortStorage: "I16",
    CharStorage: "I8",
    ByteStorage: "U8",
    BoolStorage: "BOOL",
  } satisfies Record<string, DType>),
);

/** The element type of a torch storage class named in a file, or undefined (own properties only). */
export function storageDType(name: string): DType | undefined {
  return Object.hasOwn(STORAGE_DTYPES, name) ? STORAGE_DTYPES[name] : undefined;
}

/** The storage class torch uses for each element type (inverse of STORAGE_DTYPES). */
export const DTYPE_STORAGES: Readonly<Record<DType, string>> = Object.fromEntries(
  Object.entries(STORAGE_DTYPES).map(([k, v]) => [v, k]),
) as Record<DType, string>;

/** A global the whitelist allows; it can only be passed around and called by the reimplementations here. */
class PickleGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

const CALLABLES = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_parameter",
]);

/** A storage as described by a persistent id, handed to the container for resolving. */
export interface StorageRequest {
  key: string;
  dtype: DType;
  location: string;
  /** Element count the pickle claims. */
  numel: number;
  /** Legacy format only: this storage is a slice of another one. */
  view?: { key: string; offset: number; numel: number };
}

/** Element data of one storage, read on demand from the container. */
export interface StorageHandle {
  readonly key: string;
  readonly dtype: DType;
  readonly numel: number;
  /** The file the storage lives in, named by decoding errors (e.g. an int64 that does not fit int32). */
  readonly file?: string;
  /** The file's running total of decoded bytes (see `view-budget.ts`), shared by its storages. */
  readonly budget?: ReadBudget;
  /** Raw little-endian bytes of elements [start, start + count). */
  readElements(start: number, count: number): Uint8Array;
}

function isStorageHandle(v: unknown): v is StorageHandle {
  return typeof v === "object" && v !== null && typeof (v as StorageHandle).readElements === "function";
}

/**
 * A tensor that views a storage: shape, strides and offset in elements, as torch keeps them.
 * `read()` reads just the span it covers and gathers non-contiguous views into row-major order.
 */
export class StorageTensor implements TorchTensor {
  readonly kind = "tensor" as const;
  readonly dtype: DType;
  constructor(
    readonly storage: StorageHandle,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {
    this.dtype = storage.dtype;
  }

  /** True when the elements are laid out row-major with no gaps. */
  get contiguous(): boolean {
    let expect = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.stride[i] !== expect) return false;
      expect *= this.shape[i]!;
    }
    return true;
  }

  /**
   * Read the elements into a host tensor. `name` — how the caller knows the tensor (a state-dict
   * key, a path of keys) — goes into error messages. Before anything is allocated the view is held
   * to the expansion budget (`view-budget.ts`): a broadcast or overlapping view that would decode
   * to far more than its storage holds is refused with an error naming the file and the tensor.
   */
  read(name?: string): HostTensor {
    const n = numel(this.shape);
    const file = this.storage.file;
    const label = name !== undefined ? `tensor "${name}"` : `tensor in storage "${this.storage.key}"`;
    const where = file === undefined ? label : `${file}: ${label}`;
    const facts = {
      file: file ?? "pickle",
      name,
      storageKey: this.storage.key,
      storageNumel: this.storage.numel,
      shape: this.shape,
      stride: this.stride,
      numel: n,
    };
    checkViewExpansion(facts);
    this.storage.budget?.charge(this, facts);
    if (n === 0) return decodeTensor(new Uint8Array(0), this.dtype, [...this.shape], where);
    if (this.contiguous) return decodeTensor(this.storage.readElements(this.storageOffset, n), this.dtype, [...this.shape], where);
    // Strided: read the span the view covers once (never more than the storage), decode in place.
    const last = this.shape.reduce((s, d, i) => s + (d - 1) * this.stride[i]!, 0);
    const span = this.storage.readElements(this.storageOffset, last + 1);
    return gatherTensor(span, this.dtype, [...this.shape], this.stride, where);
  }
}

export interface UnpickleOptions {
  /** File name used in error messages. */
  file: string;
  /** Resolve a storage persistent id; called once per distinct key is the caller's business. */
  persistentLoad?: (req: StorageRequest) => StorageHandle;
}

/** Result of `unpickle`: the value and the position just past its STOP opcode. */
export interface UnpickleResult {
  value: PyValue;
  end: number;
}

/** Thrown (as a CorruptFileError subclass) when the input ends before STOP. */
export class TruncatedPickleError extends CorruptFileError {
  constructor(
    file: string,
    detail: string,
    /** How long the input would have to be (from its start) for the read that failed. */
    readonly needed: number,
  ) {
    super(file, detail);
  }
}

type Item = PyValue | PickleGlobal | StorageHandle;

const utf8 = new TextDecoder("utf-8");
const latin1 = new TextDecoder("latin1");

function typeName(v: Item): string {
  if (v === null) return "None";
  if (Array.isArray(v)) return "list";
  if (v instanceof PyTuple) return "tuple";
  if (v instanceof PyDict) return v.kind;
  if (v instanceof PyFloat) return "float";
  if (v instanceof PickleGlobal) return v.qualified;
  if (v instanceof Uint8Array) return "bytes";
  if (isStorageHandle(v)) return "storage";
  if (typeof v === "object" && (v as TorchTensor).kind === "tensor") return "tensor";
  if (typeof v === "number" || typeof v === "bigint") return "int";
  if (typeof v === "string") return "str";
  if (typeof v === "boolean") return "bool";
  return typeof v;
}

/**
 * Run a pickle starting at `start` in `data` with the safe interpreter and return the value.
 * Throws UnsafePickleError for any global off the whitelist, CorruptFileError for malformed or
 * truncated input, UnsupportedFileError for valid but unhandled constructs (sets, buffers).
 */
export function unpickle(data: Uint8Array, start: number, opts: UnpickleOptions): UnpickleResult {
  const file = opts.file;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = start;
  let stack: Item[] = [];
  const metastack: Item[][] = [];
  const memo = new Map<number, Item>();

  const corrupt = (msg: string): never => {
    throw new CorruptFileError(file, `bad pickle at byte ${pos}: ${msg}`);
  };
  const need = (n: number): void => {
    if (!(n >= 0) || pos + n > data.length) {
      throw new TruncatedPickleError(
        file,
        `pickle is truncated: needs ${n} more bytes at byte ${pos}, only ${data.length - pos} left`,
        pos + n,
      );
    }
  };
  const u8 = (): number => {
    need(1);
    return data[pos++]!;
  };
  const u16 = (): number => {
    need(2);
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(data.length)) need(Number.MAX_SAFE_INTEGER); // longer than any input: truncated
    return Number(v);
  };
  const bytes = (n: number): Uint8Array => {
    need(n);
    const b = data.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const line = (): string => {
    const nl = data.indexOf(0x0a, pos);
    if (nl < 0) need(data.length - pos + 1);
    const s = latin1.decode(data.subarray(pos, nl));
    pos = nl + 1;
    return s;
  };
  const push = (v: Item): void => {
    if (stack.length >= MAX_STACK) corrupt(`more than ${MAX_STACK} values on the stack`);
    stack.push(v);
  };
  const pop = (): Item => {
    if (stack.length === 0) corrupt("stack underflow");
    return stack.pop()!;
  };
  const top = (): Item => {
    if (stack.length === 0) corrupt("stack underflow");
    return stack[stack.length - 1]!;
  };
  const popMark = (): Item[] => {
    if (metastack.length === 0) corrupt("no MARK to pop to");
    const items = stack;
    stack = metastack.pop()!;
    return items;
  };
  const refuse = (mod: string, name: string): never => {
    throw new UnsafePickleError(
      file,
      `${mod}.${name}`,
      `refusing to load ${mod}.${name}: only tensors and plain containers are allowed (this file asks Python to import and run code; do not open it with torch.load either)`,
    );
  };
  const findGlobal = (mod: string, name: string): PickleGlobal => {
    const q = `${mod}.${name}`;
    if (CALLABLES.has(q) || (mod === "torch" && storageDType(name) !== undefined)) return new PickleGlobal(mod, name);
    return refuse(mod, name);
  };
  const memoPut = (i: number): void => {
    memo.set(i, top());
  };
  const memoGet = (i: number): void => {
    const v = memo.get(i);
    if (v === undefined) corrupt(`memo entry ${i} is used before it is stored`);
    push(v!);
  };
  const intFromText = (s: string): number | bigint => {
    const t = s.endsWith("L") ? s.slice(0, -1) : s;
    if (!/^[+-]?\d{1,4300}$/.test(t)) corrupt(`bad integer literal "${s.slice(0, 40)}"`);
    const b = BigInt(t);
    return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
  };
  const longFromBytes = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    // Little-endian two's complement. Parsed from hex in one go: shifting byte by byte into a
    // BigInt copies the growing value every time, quadratic in the length (~1 s per MB of LONG4s).
    let v = BigInt("0x" + Buffer.from(b).reverse().toString("hex"));
    if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const asKey = (k: Item): PyKey => {
    if (k === null || typeof k === "string" || typeof k === "number" || typeof k === "bigint" || typeof k === "boolean") return k as PyKey; // explicit for tslab's TS 5.0
    throw new UnsupportedFileError(file, `dict key of type ${typeName(k)} is not supported (only str, int, bool and None keys)`);
  };
  const setItems = (target: Item, items: Item[], op: string): void => {
    if (!(target instanceof PyDict))
      throw new UnsafePickleError(file, undefined, `${op} on a ${typeName(target)}: only dicts can take items`);
    if (items.length % 2) corrupt(`${op} with an odd number of items`);
    for (let i = 0; i < items.length; i += 2) target.map.set(asKey(items[i]!), items[i + 1] as PyValue);
  };
  const appendItems = (target: Item, items: Item[], op: string): void => {
    if (!Array.isArray(target))
      throw new UnsafePickleError(file, undefined, `${op} on a ${typeName(target)}: only lists can be appended to`);
    for (const it of items) target.push(it as PyValue);
  };
  const int = (v: Item | undefined, what: string, min = 0): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) corrupt(`${what} must be an integer ≥ ${min}, got ${String(v)}`);
    return v as number;
  };
  const intTuple = (v: Item | undefined, what: string): number[] => {
    const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : corrupt(`${what} must be a tuple`);
    return (items as Item[]).map((x, i) => int(x, `${what}[${i}]`));
  };

  /** Build a tensor view, checking that every element it can touch lies inside the storage. */
  const rebuildTensor = (args: Item[], fn: string): StorageTensor => {
    const storage = args[0];
    if (!isStorageHandle(storage)) corrupt(`${fn}: first argument must be a storage, got ${typeName(storage as Item)}`);
    const st = storage as StorageHandle;
    const offset = int(args[1], "storage offset");
    const shape = intTuple(args[2], "size");
    const stride = intTuple(args[3], "stride");
    if (shape.length !== stride.length) corrupt(`${fn}: size has ${shape.length} dims but stride has ${stride.length}`);
    let n = 1;
    let last = offset;
    for (let i = 0; i < shape.length; i++) {
      n *= shape[i]!;
      if (shape[i]! > 0) last += (shape[i]! - 1) * stride[i]!;
      if (!Number.isSafeInteger(n) || !Number.isSafeInteger(last)) corrupt(`${fn}: tensor size [${shape.join(", ")}] is impossibly large`);
    }
    if (n > 0 && last >= st.numel) {
      corrupt(
        `tensor [${shape.join(", ")}] with stride (${stride.join(", ")}) at offset ${offset} reaches element ${last}, past the end of storage "${st.key}" (${st.numel} elements)`,
      );
    }
    return new StorageTensor(st, offset, shape, stride);
  };

  /** Apply a whitelisted callable (REDUCE / NEWOBJ / OBJ / INST); anything else is refused. */
  const call = (fn: Item, args: Item[], op: string): Item => {
    if (!(fn instanceof PickleGlobal)) {
      throw new UnsafePickleError(file, undefined, `${op} on a ${typeName(fn)}: only whitelisted constructors can be called`);
    }
    switch (fn.qualified) {
      case "collections.OrderedDict": {
        const d = new PyDict("OrderedDict");
        if (args.length === 0) return d;
        const pairs =
          args.length === 1 ? (Array.isArray(args[0]) ? args[0] : args[0] instanceof PyTuple ? args[0].items : undefined) : undefined;
        if (!pairs) corrupt(`OrderedDict called with unsupported arguments`);
        for (const p of pairs as PyValue[]) {
          const kv = p instanceof PyTuple ? p.items : Array.isArray(p) ? p : corrupt("OrderedDict item must be a pair");
          if ((kv as PyValue[]).length !== 2) corrupt("OrderedDict item must be a pair");
          d.map.set(asKey((kv as PyValue[])[0]!), (kv as PyValue[])[1]!);
        }
        return d;
      }
      case "torch._utils._rebuild_tensor_v2": {
        if (args.length < 6 || args.length > 7) corrupt(`_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
        if (typeof args[4] !== "boolean") corrupt("_rebuild_tensor_v2: requires_grad must be a bool");
        if (!(args[5] instanceof PyDict)) corrupt("_rebuild_tensor_v2: backward hooks must be an OrderedDict");
        return rebuildTensor(args, "_rebuild_tensor_v2");
      }
      case "torch._utils._rebuild_tensor":
        if (args.length !== 4) corrupt(`_rebuild_tensor takes 4 arguments, got ${args.length}`);
        return rebuildTensor(args, "_rebuild_tensor");
      case "torch._utils._rebuild_parameter":
        if (args.length !== 3 || !isTorchTensor(args[0] as PyValue)) corrupt("_rebuild_parameter takes (tensor, requires_grad, hooks)");
        return args[0]!;
      default:
        throw new UnsafePickleError(file, fn.qualified, `${fn.qualified} may only appear inside a storage id, not be called`);
    }
  };
  const argsOf = (v: Item, op: string): Item[] => {
    if (v instanceof PyTuple) return v.items;
    return corrupt(`${op} arguments must be a tuple, got ${typeName(v)}`);
  };

  /** Turn a persistent id into a storage via the container. */
  const persistent = (pid: Item): Item => {
    const items = pid instanceof PyTuple ? pid.items : corrupt(`persistent id must be a tuple, got ${typeName(pid)}`);
    const [tag, type, key, location, count, viewMeta] = items as Item[];
    if (tag !== "storage") {
      throw new UnsupportedFileError(file, `persistent id of kind ${JSON.stringify(tag)} is not supported (only storages)`);
    }
    const dtype = type instanceof PickleGlobal && type.module === "torch" ? storageDType(type.name) : undefined;
    if (dtype === undefined) corrupt(`storage type must be a torch storage class, got ${typeName(type as Item)}`);
    if (typeof key !== "string" || !/^[A-Za-z0-9_]{1,64}$/.test(key)) corrupt(`bad storage key ${JSON.stringify(key)}`);
    if (typeof location !== "string") corrupt("storage location must be a str");
    const req: StorageRequest = {
      key: key as string,
      dtype: dtype!,
      location: location as string,
      numel: int(count, "storage size"),
    };
    if (viewMeta !== undefined && viewMeta !== null) {
      const vm = viewMeta instanceof PyTuple ? viewMeta.items : corrupt("storage view metadata must be a tuple");
      const [vk, vo, vn] = vm as Item[];
      if (typeof vk !== "string" || !/^[A-Za-z0-9_]{1,64}$/.test(vk)) corrupt("bad storage view key");
      req.view = { key: vk as string, offset: int(vo, "storage view offset"), numel: int(vn, "storage view size") };
    }
    if (!opts.persistentLoad) corrupt("storage reference found where none are allowed");
    return opts.persistentLoad!(req);
  };

  for (;;) {
    if (pos >= data.length) need(1);
    const op = data[pos++]!;
    switch (op) {
      case OP.PROTO: {
        const proto = u8();
        if (proto > 5) throw new UnsupportedFileError(file, `pickle protocol ${proto} is newer than this reader (≤ 5)`);
        break;
      }
      case OP.FRAME: // a length hint only
        u64();
        break;
      case OP.STOP: {
        // STOP
        if (stack.length !== 1 || metastack.length) corrupt("pickle does not end with exactly one value");
        const value = stack[0]!;
        checkValue(file, value);
        return { value: value as PyValue, end: pos };
      }
      case OP.MARK:
        if (metastack.length >= MAX_MARKS) corrupt(`more than ${MAX_MARKS} nested MARKs`);
        metastack.push(stack);
        stack = [];
        break;
      case OP.POP:
        if (stack.length) stack.pop();
        else popMark();
        break;
      case OP.POP_MARK:
        popMark();
        break;
      case OP.DUP:
        push(top());
        break;

      // ---- constants and numbers
      case OP.NONE:
        push(null);
        break;
      case OP.NEWTRUE:
        push(true);
        break;
      case OP.NEWFALSE:
        push(false);
        break;
      case OP.INT: {
        // INT (text); "00"/"01" are protocol-0 booleans
        const s = line();
        push(s === "00" ? false : s === "01" ? true : intFromText(s));
        break;
      }
      case OP.BININT:
        need(4);
        push(view.getInt32(pos, true));
        pos += 4;
        break;
      case OP.BININT1:
        push(u8());
        break;
      case OP.BININT2:
        push(u16());
        break;
      case OP.LONG: // decimal text
        push(intFromText(line()));
        break;
      case OP.LONG1:
        push(longFromBytes(bytes(u8())));
        break;
      case OP.LONG4: {
        // LONG4
        const n = u32();
        if (n > 4096) throw new UnsupportedFileError(file, `integer of ${n} bytes is too large`);
        push(longFromBytes(bytes(n)));
        break;
      }
      case OP.FLOAT: {
        const s = line().trim();
        const v = Number(s);
        if (!/^[-+0-9.eEinfaINFA]+$/.test(s) || (Number.isNaN(v) && !/nan/i.test(s))) corrupt(`bad float literal "${s.slice(0, 40)}"`);
        push(new PyFloat(v));
        break;
      }
      case OP.BINFLOAT:
        need(8);
        push(new PyFloat(view.getFloat64(pos, false)));
        pos += 8;
        break;

      // ---- strings and bytes
      case OP.BINUNICODE:
        push(utf8.decode(bytes(u32())));
        break;
      case OP.SHORT_BINUNICODE:
        push(utf8.decode(bytes(u8())));
        break;
      case OP.BINUNICODE8:
        push(utf8.decode(bytes(u64())));
        break;
      case OP.UNICODE: // raw-unicode-escape, one line
        push(rawUnicodeEscape(line()));
        break;
      case OP.BINSTRING: {
        // BINSTRING (Python 2 str): signed length
        need(4);
        const n = view.getInt32(pos, true);
        pos += 4;
        if (n < 0) corrupt("negative string length");
        push(utf8.decode(bytes(n)));
        break;
      }
      case OP.SHORT_BINSTRING:
        push(utf8.decode(bytes(u8())));
        break;
      case OP.STRING: // quoted repr, one line
        push(quotedString(line(), corrupt));
        break;
      case OP.BINBYTES:
        push(bytes(u32()).slice());
        break;
      case OP.SHORT_BINBYTES:
        push(bytes(u8()).slice());
        break;
      case OP.BINBYTES8:
      case OP.BYTEARRAY8:
        push(bytes(u64()).slice());
        break;

      // ---- containers
      case OP.EMPTY_LIST:
        push([]);
        break;
      case OP.LIST:
        push(popMark() as PyValue[]);
        break;
      case OP.APPEND: {
        // APPEND
        const v = pop();
        appendItems(top(), [v], "APPEND");
        break;
      }
      case OP.APPENDS: {
        // APPENDS
        const items = popMark();
        appendItems(top(), items, "APPENDS");
        break;
      }
      case OP.EMPTY_TUPLE:
        push(new PyTuple([]));
        break;
      case OP.TUPLE:
        push(new PyTuple(popMark() as PyValue[]));
        break;
      case OP.TUPLE1:
        push(new PyTuple([pop() as PyValue]));
        break;
      case OP.TUPLE2: {
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b] as PyValue[]));
        break;
      }
      case OP.TUPLE3: {
        const c = pop();
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b, c] as PyValue[]));
        break;
      }
      case OP.EMPTY_DICT:
        push(new PyDict("dict"));
        break;
      case OP.DICT: {
        // DICT
        const d = new PyDict("dict");
        setItems(d, popMark(), "DICT");
        push(d);
        break;
      }
      case OP.SETITEM: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v], "SETITEM");
        break;
      }
      case OP.SETITEMS: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items, "SETITEMS");
        break;
      }
      case OP.EMPTY_SET:
      case OP.ADDITEMS:
      case OP.FROZENSET:
        throw new UnsupportedFileError(file, "Python sets are not supported in torch files here");

      // ---- memo
      case OP.GET:
        memoGet(int(intFromText(line()), "memo index"));
        break;
      case OP.BINGET:
        memoGet(u8());
        break;
      case OP.LONG_BINGET:
        memoGet(u32());
        break;
      case OP.PUT:
        memoPut(int(intFromText(line()), "memo index"));
        break;
      case OP.BINPUT:
        memoPut(u8());
        break;
      case OP.LONG_BINPUT:
        memoPut(u32());
        break;
      case OP.MEMOIZE:
        memoPut(memo.size);
        break;

      // ---- globals and calls: the only dangerous instructions, all checked against the whitelist
      case OP.GLOBAL: {
        // GLOBAL "module\nname\n"
        const mod = line();
        const name = line();
        push(findGlobal(mod, name));
        break;
      }
      case OP.STACK_GLOBAL: {
        // STACK_GLOBAL
        const name = pop();
        const mod = pop();
        if (typeof mod !== "string" || typeof name !== "string") corrupt("STACK_GLOBAL needs two strings");
        push(findGlobal(mod as string, name as string));
        break;
      }
      case OP.EXT1:
      case OP.EXT2:
      case OP.EXT4:
        throw new UnsafePickleError(
          file,
          undefined,
          "refusing extension-registry globals (EXT1/EXT2/EXT4): only tensors and plain containers are allowed",
        );
      case OP.INST: {
        // INST "module\nname\n" with MARKed args
        const mod = line();
        const name = line();
        const fn = findGlobal(mod, name);
        push(call(fn, popMark(), "INST"));
        break;
      }
      case OP.OBJ: {
        // OBJ: MARK cls args… OBJ
        const items = popMark();
        if (items.length === 0) corrupt("OBJ without a class");
        push(call(items[0]!, items.slice(1), "OBJ"));
        break;
      }
      case OP.REDUCE: {
        // REDUCE
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PickleGlobal)) call(fn, [], "REDUCE");
        push(call(fn, argsOf(args, "REDUCE"), "REDUCE"));
        break;
      }
      case OP.NEWOBJ: {
        // NEWOBJ: cls.__new__(cls, *args); only OrderedDict is a class here
        const args = pop();
        const cls = pop();
        if (!(cls instanceof PickleGlobal) || cls.qualified !== "collections.OrderedDict") {
          if (cls instanceof PickleGlobal) throw new UnsafePickleError(file, cls.qualified, `NEWOBJ of ${cls.qualified} is not allowed`);
          call(cls, [], "NEWOBJ");
        }
        argsOf(args, "NEWOBJ");
        push(new PyDict("OrderedDict"));
        break;
      }
      case OP.NEWOBJ_EX: {
        // NEWOBJ_EX
        pop();
        const args = pop();
        const cls = pop();
        if (!(cls instanceof PickleGlobal) || cls.qualified !== "collections.OrderedDict") {
          if (cls instanceof PickleGlobal) throw new UnsafePickleError(file, cls.qualified, `NEWOBJ_EX of ${cls.qualified} is not allowed`);
          call(cls, [], "NEWOBJ_EX");
        }
        argsOf(args, "NEWOBJ_EX");
        push(new PyDict("OrderedDict"));
        break;
      }
      case OP.BUILD: {
        // BUILD: only dict state on a dict (torch's `_metadata` on state dicts)
        const state = pop();
        const obj = top();
        if (!(obj instanceof PyDict)) {
          throw new UnsafePickleError(file, undefined, `BUILD on a ${typeName(obj)}: only dicts may receive state`);
        }
        if (!(state instanceof PyDict) && !(state instanceof PyTuple) && state !== null) {
          throw new UnsafePickleError(file, undefined, `BUILD with ${typeName(state)} state: only dict state is allowed`);
        }
        obj.state = state as PyValue;
        break;
      }

      // ---- persistent ids: storages in the container
      case OP.BINPERSID:
        push(persistent(pop()));
        break;
      case OP.PERSID: // text — torch never writes it
        throw new UnsupportedFileError(file, "text persistent ids (PERSID) are not supported");
      case OP.NEXT_BUFFER:
      case OP.READONLY_BUFFER:
        throw new UnsupportedFileError(file, "out-of-band pickle buffers are not supported");
      default:
        corrupt(`unknown opcode 0x${op.toString(16).padStart(2, "0")}`);
    }
  }
}

/**
 * Check the finished value: only Python values (no bare globals or storages), no cycles, and at most
 * MAX_DEPTH levels of nesting. Iterative, so a hostile nesting depth cannot overflow the JS stack.
 */
function checkValue(file: string, root: Item): void {
  const done = new Set<object>();
  const onPath = new Set<object>();
  const children = (v: Item): Item[] | undefined => {
    if (Array.isArray(v)) return v;
    if (v instanceof PyTuple) return v.items;
    if (v instanceof PyDict) return v.state === undefined ? [...v.map.values()] : [...v.map.values(), v.state];
    return undefined;
  };
  const path: { node: object; kids: Item[]; i: number }[] = [];
  const visit = (v: Item): void => {
    if (v instanceof PickleGlobal) {
      throw new UnsafePickleError(file, v.qualified, `${v.qualified} appears as a value; only tensors and plain containers are allowed`);
    }
    if (isStorageHandle(v)) throw new UnsupportedFileError(file, "a bare storage appears as a value; only tensors are supported");
    const kids = children(v);
    if (!kids || done.has(v as object)) return;
    if (onPath.has(v as object)) throw new UnsupportedFileError(file, "the value contains itself (a cycle); not supported");
    if (path.length >= MAX_DEPTH) throw new CorruptFileError(file, `value is nested more than ${MAX_DEPTH} levels deep`);
    onPath.add(v as object);
    path.push({ node: v as object, kids, i: 0 });
  };
  visit(root);
  while (path.length) {
    const f = path[path.length - 1]!;
    if (f.i < f.kids.length) {
      visit(f.kids[f.i++]!);
    } else {
      path.pop();
      onPath.delete(f.node);
      done.add(f.node);
    }
  }
}

function rawUnicodeEscape(s: string): string {
  return s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_, a: string | undefined, b: string | undefined) =>
    String.fromCodePoint(parseInt((a ?? b)!, 16)),
  );
}

/** Escapes of the STRING opcode's quoted text (a Map: the escaped character comes from the file). */
const STRING_ESCAPES: ReadonlyMap<string, string> = new Map([
  ["n", "\n"],
  ["t", "\t"],
  ["r", "\r"],
  ["\\", "\\"],
  ["'", "'"],
  ['"', '"'],
  ["0", "\0"],
]);

function quotedString(s: string, corrupt: (m: string) => never): string {
  const q = s[0];
  if ((q !== "'" && q !== '"') || s.length < 2 || s[s.length - 1] !== q) corrupt("STRING argument is not quoted");
  const body = s.slice(1, -1);
  return body.replace(/\\(x[0-9a-fA-F]{2}|.)/g, (_, e: string) =>
    e.length === 3 ? String.fromCharCode(parseInt(e.slice(1), 16)) : (STRING_ESCAPES.get(e) ?? "\\" + e),
  );
}

// ---- writer -------------------------------------------------------------------------------------

/** A tensor met while pickling: the storage key assigned to it and its values. */
export interface PickledStorage {
  key: string;
  dtype: DType;
  tensor: TorchTensor | HostTensor;
}

/**
 * Pickle `value` with protocol 2 as `torch.save` does: tensors become `_rebuild_tensor_v2` calls on
 * persistent-id storages (one storage per tensor, keys "0", "1", … in order of first appearance,
 * offset 0, contiguous strides, requires_grad False). Returns the pickle bytes and the storages to
 * write next to it; tensor data is not read here.
 */
export function pickleTorch(value: PyValue): { pickle: Uint8Array; storages: PickledStorage[] } {
  const w = new TorchPickler();
  w.out.bytes(OP.PROTO, 2);
  w.save(value, 0);
  w.out.u8(OP.STOP);
  return { pickle: w.out.finish(), storages: w.storages };
}

/** Python's `encode_long`: the minimal little-endian two's complement bytes of `v` (empty for 0), for LONG1/LONG4. */
function encodeLong(v: number | bigint): number[] {
  let x = BigInt(v);
  const b: number[] = [];
  if (x === 0n) return b;
  const nbits = (x < 0n ? -x - 1n : x).toString(2).length + 1; // + sign bit
  const nbytes = Math.ceil(nbits / 8);
  if (x < 0n) x += 1n << BigInt(8 * nbytes);
  for (let i = 0; i < nbytes; i++) b.push(Number((x >> BigInt(8 * i)) & 0xffn));
  return b;
}

/** Contiguous (row-major) strides of `shape`, as torch gives a freshly saved tensor. */
function contiguousStrides(shape: number[]): number[] {
  let s = 1;
  const stride = shape.map(() => 0);
  for (let i = shape.length - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i]!;
  }
  return stride;
}

/**
 * The state of one `pickleTorch` call: the output, the memo (so shared objects, strings and globals
 * are written once and referenced after, as Python's pickler does) and the tensors met so far.
 */
class TorchPickler {
  readonly out = new ByteWriter();
  readonly storages: PickledStorage[] = [];
  private readonly memo = new Map<unknown, number>();
  /** Tuples being written, to refuse a tuple that contains itself (pickle cannot express that). */
  private readonly inProgress = new Set<object>();

  /** Memoize the object just written under the next index (BINPUT/LONG_BINPUT). */
  put(obj: unknown): void {
    const i = this.memo.size;
    this.memo.set(obj, i);
    if (i < 256) this.out.bytes(OP.BINPUT, i);
    else this.out.u8(OP.LONG_BINPUT).u32(i);
  }

  /** Write a memo reference if `obj` was written before; says whether it was. */
  get(obj: unknown): boolean {
    const i = this.memo.get(obj);
    if (i === undefined) return false;
    if (i < 256) this.out.bytes(OP.BINGET, i);
    else this.out.u8(OP.LONG_BINGET).u32(i);
    return true;
  }

  /** Push the global `mod.name` (GLOBAL), once per pickle. */
  global(mod: string, name: string): void {
    const id = `global:${mod}.${name}`;
    if (this.get(id)) return;
    this.out.u8(OP.GLOBAL).ascii(`${mod}\n${name}\n`);
    this.put(id);
  }

  /** Push a str (BINUNICODE), memoized by its text as Python interns it. */
  str(s: string): void {
    const id = `str:${s}`;
    if (this.get(id)) return;
    const b = Buffer.from(s, "utf8");
    this.out.u8(OP.BINUNICODE).u32(b.length).raw(b);
    this.put(id);
  }

  /** Push an int in the shortest opcode that holds it, as Python's pickler chooses. */
  int(v: number | bigint): void {
    const out = this.out;
    if (typeof v === "number" && v >= 0 && v <= 0xff) out.bytes(OP.BININT1, v);
    else if (typeof v === "number" && v >= 0 && v <= 0xffff) out.u8(OP.BININT2).u16(v);
    else if (typeof v === "number" && v >= -0x80000000 && v <= 0x7fffffff) out.u8(OP.BININT).i32(v);
    else {
      const b = encodeLong(v);
      if (b.length < 256) out.bytes(OP.LONG1, b.length, ...b);
      else
        out
          .u8(OP.LONG4)
          .u32(b.length)
          .bytes(...b);
    }
  }

  /** Push a tuple of `items` (EMPTY_TUPLE, TUPLE1–3, or MARK … TUPLE), not memoized here. */
  tupleOf(items: PyValue[], depth: number): void {
    const out = this.out;
    if (items.length === 0) {
      out.u8(OP.EMPTY_TUPLE);
      return;
    }
    if (items.length <= 3) {
      for (const it of items) this.save(it, depth + 1);
      out.u8([OP.TUPLE1, OP.TUPLE2, OP.TUPLE3][items.length - 1]!);
    } else {
      out.u8(OP.MARK);
      for (const it of items) this.save(it, depth + 1);
      out.u8(OP.TUPLE);
    }
  }

  /** Fill the dict on the stack in batches of 1000 (SETITEM/SETITEMS), as Python's pickler batches. */
  setItems(d: PyDict, depth: number): void {
    const entries = [...d.map.entries()];
    for (let i = 0; i < entries.length; i += 1000) {
      const batch = entries.slice(i, i + 1000);
      if (batch.length > 1) this.out.u8(OP.MARK);
      for (const [k, v] of batch) {
        this.save(k as PyValue, 0);
        this.save(v, depth + 1);
      }
      this.out.u8(batch.length > 1 ? OP.SETITEMS : OP.SETITEM);
    }
  }

  /** Push a list and fill it in batches of 1000 (APPEND/APPENDS); memoized before its items, so it may contain itself. */
  list(v: PyValue[], depth: number): void {
    this.out.u8(OP.EMPTY_LIST);
    this.put(v);
    for (let i = 0; i < v.length; i += 1000) {
      const batch = v.slice(i, i + 1000);
      if (batch.length > 1) this.out.u8(OP.MARK);
      for (const it of batch) this.save(it, depth + 1);
      this.out.u8(batch.length > 1 ? OP.APPENDS : OP.APPEND);
    }
  }

  /** Push a dict or OrderedDict (`OrderedDict()` via REDUCE), its items, then its state with BUILD. */
  dict(v: PyDict, depth: number): void {
    if (v.kind === "OrderedDict") {
      this.global("collections", "OrderedDict");
      this.out.u8(OP.EMPTY_TUPLE).u8(OP.REDUCE);
    } else {
      this.out.u8(OP.EMPTY_DICT);
    }
    this.put(v);
    this.setItems(v, depth);
    if (v.state !== undefined && v.state !== null) {
      this.save(v.state, depth + 1);
      this.out.u8(OP.BUILD);
    }
  }

  /**
   * Push `_rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())` on a new persistent-id
   * storage, as `torch.save` writes a tensor; the values go to `storages`, not into the pickle.
   */
  tensor(t: TorchTensor | HostTensor): void {
    const out = this.out;
    const shape = [...t.shape];
    const k = String(this.storages.length);
    this.storages.push({ key: k, dtype: t.dtype, tensor: t });
    this.global("torch._utils", "_rebuild_tensor_v2");
    out.u8(OP.MARK); // the 6 arguments
    // persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
    out.u8(OP.MARK);
    this.str("storage");
    this.global("torch", DTYPE_STORAGES[t.dtype]);
    out.u8(OP.BINUNICODE).u32(k.length).ascii(k);
    this.put({});
    this.str("cpu");
    this.int(numel(shape));
    out.u8(OP.TUPLE);
    this.put({});
    out.u8(OP.BINPERSID);
    this.int(0); // storage offset
    this.tupleOf(shape, 1);
    if (shape.length) this.put({});
    const stride = contiguousStrides(shape);
    this.tupleOf(stride, 1);
    if (stride.length) this.put({});
    out.u8(OP.NEWFALSE); // requires_grad False
    this.global("collections", "OrderedDict"); // backward hooks: OrderedDict()
    out.u8(OP.EMPTY_TUPLE).u8(OP.REDUCE);
    this.put({});
    out.u8(OP.TUPLE);
    this.put({});
    out.u8(OP.REDUCE);
    this.put(t);
  }

  /** Push any value, by type; shared objects are written once and referenced after. */
  save(v: PyValue, depth: number): void {
    const out = this.out;
    if (depth > MAX_DEPTH) throw new Error(`pickle writer: value nested more than ${MAX_DEPTH} levels deep`);
    if (v === null) out.u8(OP.NONE);
    else if (typeof v === "boolean") out.u8(v ? OP.NEWTRUE : OP.NEWFALSE);
    else if (typeof v === "number") {
      if (!Number.isSafeInteger(v)) {
        throw new Error(`pickle writer: ${v} is not an integer; wrap floats as new PyFloat(x) so they are saved as Python floats`);
      }
      this.int(v);
    } else if (typeof v === "bigint") this.int(v);
    else if (typeof v === "string") this.str(v);
    else if (v instanceof PyFloat) {
      out.u8(OP.BINFLOAT).f64be(v.value);
    } else if (v instanceof Uint8Array) {
      // Python 3 bytes (BINBYTES); torch.load accepts it in a protocol-2 stream
      if (this.get(v)) return;
      out.u8(OP.BINBYTES).u32(v.length).raw(v);
      this.put(v);
    } else if (isTorchTensor(v) || isHostTensor(v)) {
      if (this.get(v)) return;
      this.tensor(v);
    } else if (Array.isArray(v)) {
      if (this.get(v)) return;
      this.list(v, depth);
    } else if (v instanceof PyTuple) {
      if (this.get(v)) return;
      if (this.inProgress.has(v)) throw new Error("pickle writer: a tuple contains itself");
      this.inProgress.add(v);
      this.tupleOf(v.items, depth);
      this.inProgress.delete(v);
      if (v.items.length) this.put(v);
    } else if (v instanceof PyDict) {
      if (this.get(v)) return;
      this.dict(v, depth);
    } else {
      throw new Error(`pickle writer: cannot save a value of type ${typeof v}`);
    }
  }
}

/** A growable byte buffer for the pickle writer. */
class ByteWriter {
  private buf = Buffer.alloc(4096);
  private len = 0;
  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }
  u8(v: number): this {
    this.ensure(1);
    this.buf[this.len++] = v;
    return this;
  }
  bytes(...vs: number[]): this {
    this.ensure(vs.length);
    for (const v of vs) this.buf[this.len++] = v;
    return this;
  }
  u16(v: number): this {
    this.ensure(2);
    this.len = this.buf.writeUInt16LE(v, this.len);
    return this;
  }
  u32(v: number): this {
    this.ensure(4);
    this.len = this.buf.writeUInt32LE(v, this.len);
    return this;
  }
  i32(v: number): this {
    this.ensure(4);
    this.len = this.buf.writeInt32LE(v, this.len);
    return this;
  }
  f64be(v: number): this {
    this.ensure(8);
    this.len = this.buf.writeDoubleBE(v, this.len);
    return this;
  }
  ascii(s: string): this {
    return this.raw(Buffer.from(s, "utf8"));
  }
  raw(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }
  finish(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}
