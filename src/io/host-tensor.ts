/**
 * Host tensors: plain typed arrays with a shape, as they come out of (or go into) a file.
 *
 * File readers never create tfjs tensors. They hand back `HostTensor`s so that the caller
 * decides when to move data onto the backend (and when to free it). Floating-point data is
 * always widened to float32 on read — tfjs computes in float32 — while `dtype` remembers how
 * the file stored it, so a round trip can write the same precision back.
 */

/** Element types that appear in torch and safetensors files, named as safetensors names them. */
export type DType = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

/** Bytes per element of each stored dtype. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** True for the dtypes that are read into a Float32Array. */
export function isFloatDType(dtype: DType): boolean {
  return dtype === "F64" || dtype === "F32" || dtype === "F16" || dtype === "BF16";
}

/**
 * A tensor in host memory. `data` is a Float32Array for every floating dtype and an
 * Int32Array for integer and boolean dtypes (int64 values beyond ±2^31 are rejected on read).
 * The one exception is a `describedTensor` (dtype and shape only, from a describe-only read such as
 * `inspect`), whose `data` throws.
 */
export interface HostTensor {
  /** How the file stores (or should store) the elements. */
  dtype: DType;
  /** Dimensions, outermost first (PyTorch order). */
  shape: number[];
  /** Row-major elements. */
  data: Float32Array | Int32Array;
}

/** Number of elements of a shape (1 for a scalar). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Make a float host tensor; the data length must match the shape. */
export function hostTensor(shape: number[], data: Float32Array, dtype: DType = "F32"): HostTensor {
  if (data.length !== numel(shape)) {
    throw new Error(`hostTensor: shape [${shape.join(", ")}] needs ${numel(shape)} values, got ${data.length}`);
  }
  return { dtype, shape, data };
}

// ---- half-precision conversions -------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE-754 binary16 bits → number (handles subnormals, infinities and NaN). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** number → IEEE-754 binary16 bits, rounding to nearest even (as PyTorch's `.half()` does). */
export function floatToHalf(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / NaN
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow → inf
  if (e <= 0) {
    // subnormal half (or zero): shift the implicit-1 mantissa right and round to nearest even
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let m = mant >>> shift;
    if (rest > half || (rest === half && m & 1)) m++;
    return sign | m;
  }
  const rest = mant & 0x1fff;
  let m = mant >>> 13;
  if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

/** bfloat16 bits → number: the top 16 bits of a float32. */
export function bfloat16ToFloat(b: number): number {
  u32[0] = b << 16;
  return f32[0]!;
}

/** number → bfloat16 bits, rounding to nearest even. */
export function floatToBfloat16(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return ((x >>> 16) | 0x40) & 0xffff; // NaN
  const rounded = x + 0x7fff + ((x >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/**
 * Decode little-endian bytes of a stored dtype into a host tensor.
 * `bytes` must hold exactly `numel(shape) * DTYPE_BYTES[dtype]` bytes.
 */
export function decodeTensor(bytes: Uint8Array, dtype: DType, shape: number[], where = "tensor"): HostTensor {
  const n = numel(shape);
  const need = n * DTYPE_BYTES[dtype];
  if (bytes.byteLength !== need) {
    throw new Error(`${where}: ${dtype} [${shape.join(", ")}] needs ${need} bytes, found ${bytes.byteLength}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (isFloatDType(dtype)) {
    const out = allocValues(dtype, n, shape, where) as Float32Array;
    switch (dtype) {
      case "F32":
        for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
        break;
      case "F64":
        for (let i = 0; i < n; i++) out[i] = view.getFloat64(i * 8, true);
        break;
      case "F16":
        for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
        break;
      case "BF16":
        for (let i = 0; i < n; i++) out[i] = bfloat16ToFloat(view.getUint16(i * 2, true));
        break;
    }
    return { dtype, shape, data: out };
  }
  const out = allocValues(dtype, n, shape, where) as Int32Array;
  for (let i = 0; i < n; i++) {
    switch (dtype) {
      case "I64": {
        const v = view.getBigInt64(i * 8, true);
        if (v > 2147483647n || v < -2147483648n) {
          throw new Error(`${where}: int64 value ${v} at index ${i} does not fit in int32`);
        }
        out[i] = Number(v);
        break;
      }
      case "I32":
        out[i] = view.getInt32(i * 4, true);
        break;
      case "I16":
        out[i] = view.getInt16(i * 2, true);
        break;
      case "I8":
        out[i] = view.getInt8(i);
        break;
      default: // U8, BOOL
        out[i] = view.getUint8(i);
    }
  }
  return { dtype, shape, data: out };
}

/**
 * The typed array a tensor of `n` elements decodes into (Float32Array for floats, Int32Array for
 * the rest). A length no typed array can have — or an allocation the engine refuses — becomes an
 * error naming `where`, never a bare RangeError.
 */
export function allocValues(dtype: DType, n: number, shape: readonly number[], where: string): Float32Array | Int32Array {
  const tooBig = (): Error =>
    new Error(
      `${where}: ${dtype} [${shape.join(", ")}] has ${n.toLocaleString("en-US")} elements, more than can be held in memory here (${((n * 4) / 2 ** 20).toFixed(0)} MiB as 32-bit values)`,
    );
  if (!Number.isSafeInteger(n) || n < 0) throw tooBig();
  try {
    return isFloatDType(dtype) ? new Float32Array(n) : new Int32Array(n);
  } catch (err) {
    if (err instanceof RangeError) throw tooBig();
    throw err;
  }
}

/**
 * Decode a strided view — `shape`/`stride` in elements, as torch keeps them, over `span` (the
 * little-endian bytes of elements 0 … last it can touch) — straight into row-major values. Used for
 * non-contiguous tensors (transposes, broadcasts, sliding windows); each element is read where it
 * lies, so nothing the size of the expanded view is allocated besides the result.
 */
export function gatherTensor(span: Uint8Array, dtype: DType, shape: number[], stride: readonly number[], where = "tensor"): HostTensor {
  const n = numel(shape);
  const es = DTYPE_BYTES[dtype];
  const out = allocValues(dtype, n, shape, where);
  if (n === 0) return { dtype, shape, data: out };
  const view = new DataView(span.buffer, span.byteOffset, span.byteLength);
  const read = elementReader(view, dtype, where);
  const rank = shape.length;
  const idx = new Array<number>(rank).fill(0);
  let src = 0;
  for (let k = 0; k < n; k++) {
    out[k] = read(src * es, k);
    for (let d = rank - 1; d >= 0; d--) {
      idx[d]!++;
      src += stride[d]!;
      if (idx[d]! < shape[d]!) break;
      src -= idx[d]! * stride[d]!;
      idx[d] = 0;
    }
  }
  return { dtype, shape, data: out };
}

/** Reads one element of `dtype` at a byte offset as a JS number (int64 beyond int32 is refused). */
function elementReader(view: DataView, dtype: DType, where: string): (at: number, index: number) => number {
  switch (dtype) {
    case "F32":
      return (at) => view.getFloat32(at, true);
    case "F64":
      return (at) => view.getFloat64(at, true);
    case "F16":
      return (at) => halfToFloat(view.getUint16(at, true));
    case "BF16":
      return (at) => bfloat16ToFloat(view.getUint16(at, true));
    case "I64":
      return (at, i) => {
        const v = view.getBigInt64(at, true);
        if (v > 2147483647n || v < -2147483648n) throw new Error(`${where}: int64 value ${v} at index ${i} does not fit in int32`);
        return Number(v);
      };
    case "I32":
      return (at) => view.getInt32(at, true);
    case "I16":
      return (at) => view.getInt16(at, true);
    case "I8":
      return (at) => view.getInt8(at);
    default: // U8, BOOL
      return (at) => view.getUint8(at);
  }
}

/**
 * A tensor known only by dtype and shape: what "describe" readers (e.g. `inspect`) hand back so
 * that a file can be listed without reading — or expanding — its values. Reading `data` throws an
 * error naming `where`; such tensors must never reach code that computes with them.
 */
export function describedTensor(dtype: DType, shape: number[], where: string): HostTensor {
  return {
    dtype,
    shape,
    get data(): Float32Array | Int32Array {
      throw new Error(`${where}: only the dtype and shape of this tensor were read (describe mode); its values were not`);
    },
  };
}

/** Encode a host tensor's values as little-endian bytes of `dtype` (default: its own dtype). */
export function encodeTensor(t: HostTensor, dtype: DType = t.dtype): Uint8Array {
  const n = t.data.length;
  let out: Uint8Array;
  try {
    out = new Uint8Array(n * DTYPE_BYTES[dtype]);
  } catch (err) {
    if (err instanceof RangeError)
      throw new Error(
        `encodeTensor: ${n.toLocaleString("en-US")} ${dtype} values (${((n * DTYPE_BYTES[dtype]) / 2 ** 20).toFixed(0)} MiB) do not fit in one buffer`,
      );
    throw err;
  }
  const view = new DataView(out.buffer);
  const d = t.data;
  for (let i = 0; i < n; i++) {
    const v = d[i]!;
    switch (dtype) {
      case "F32":
        view.setFloat32(i * 4, v, true);
        break;
      case "F64":
        view.setFloat64(i * 8, v, true);
        break;
      case "F16":
        view.setUint16(i * 2, floatToHalf(v), true);
        break;
      case "BF16":
        view.setUint16(i * 2, floatToBfloat16(v), true);
        break;
      case "I64":
        view.setBigInt64(i * 8, BigInt(Math.trunc(v)), true);
        break;
      case "I32":
        view.setInt32(i * 4, v, true);
        break;
      case "I16":
        view.setInt16(i * 2, v, true);
        break;
      case "I8":
        view.setInt8(i, v);
        break;
      default:
        view.setUint8(i, v);
    }
  }
  return out;
}
