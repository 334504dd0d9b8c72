/**
 * Kernel overrides for the tfjs wasm backend (4.22), so that it can train convolutions at full speed.
 *
 * Stock wasm has three problems for training (measured in reference/tfjs-on-this-machine.md):
 *  - `Conv2DBackpropFilter` is not registered at all, so conv weights cannot be trained;
 *  - `Conv2DBackpropInput` is a plain C++ loop, ~10× slower than the XNNPACK forward conv;
 *  - `BatchMatMul` uses XNNPACK only for a single 2-D product without transposes; `transposeA/B`
 *    (which every matMul gradient uses) and batched products run 10–40× slower.
 *
 * Each override re-expresses the kernel through the fast paths (plain conv2d, plain 2-D matMul,
 * explicit transposes). Overrides other than BatchMatMul are written with ordinary tfjs ops on
 * tensors that wrap the kernel's inputs; BatchMatMul calls the stock kernel directly (a tfjs
 * `matMul` would re-enter this override).
 *
 * Ownership rules (tfjs-core engine): a kernel returns a TensorInfo whose backend data has one
 * reference that the engine adopts without incrementing it. Wrapping an input in an engine tensor
 * therefore needs `backend.incRef` (so that disposing the wrapper does not free the caller's data),
 * and returning data held by a tensor we made needs `backend.incRef` before that tensor is disposed.
 */
import * as tf from "@tensorflow/tfjs";

type TensorInfo = tf.TensorInfo;
type KernelBackend = tf.KernelBackend;
type KernelFunc = tf.KernelConfig["kernelFunc"];
type Pad = "same" | "valid" | number | tf.backend_util.ExplicitPadding;

interface ConvBackpropAttrs {
  strides: number | [number, number];
  pad: Pad;
  dataFormat?: "NHWC" | "NCHW";
  dimRoundingMode?: "floor" | "round" | "ceil";
}

/** Names of the kernels this module overrides on the wasm backend. */
export const WASM_KERNEL_OVERRIDES = ["Conv2DBackpropFilter", "Conv2DBackpropInput", "BatchMatMul"] as const;

/** Marks the kernel functions we registered, so a second registration is recognised and skipped. */
const OURS = new WeakSet<KernelFunc>();

/** Wrap a kernel input in an engine tensor that can be disposed without freeing the caller's data. */
function wrapInput(backend: KernelBackend, info: TensorInfo): tf.Tensor {
  backend.incRef(info.dataId);
  return tf.engine().makeTensorFromTensorInfo(info, backend);
}

/**
 * Run `compute` in a tidy scope and hand its result to the engine as a kernel output:
 * one extra backend reference is taken for the engine, then our own tensor is released.
 */
function asKernelOutput(backend: KernelBackend, compute: () => tf.Tensor): TensorInfo {
  const result = tf.tidy(compute);
  backend.incRef(result.dataId);
  const info: TensorInfo = { dataId: result.dataId, shape: result.shape.slice(), dtype: result.dtype };
  result.dispose();
  return info;
}

/** Pad (positive amounts) or crop (negative amounts) the H and W axes of an NHWC tensor. */
function padOrCrop(x: tf.Tensor4D, top: number, bottom: number, left: number, right: number): tf.Tensor4D {
  const padded = tf.pad(x, [
    [0, 0],
    [Math.max(top, 0), Math.max(bottom, 0)],
    [Math.max(left, 0), Math.max(right, 0)],
    [0, 0],
  ]);
  if (top >= 0 && bottom >= 0 && left >= 0 && right >= 0) return padded;
  const [n, h, w, c] = padded.shape;
  const t0 = Math.max(-top, 0);
  const l0 = Math.max(-left, 0);
  return tf.slice(padded, [0, t0, l0, 0], [n, h - t0 - Math.max(-bottom, 0), w - l0 - Math.max(-right, 0), c]);
}

/**
 * Insert `s − 1` zeros after every row and column of dy (the "zero dilation" that turns a
 * strided convolution's input gradient into a stride-1 convolution). The result has
 * OH·sH rows and OW·sW columns, i.e. (sH − 1) trailing zero rows that the caller crops or keeps.
 */
function zeroDilate(dy: tf.Tensor4D, sH: number, sW: number): tf.Tensor4D {
  const [n, oh, ow, c] = dy.shape;
  let out: tf.Tensor4D = dy;
  if (sH > 1) {
    const rows = tf.pad(out.reshape([n, oh, 1, ow * c]), [
      [0, 0],
      [0, 0],
      [0, sH - 1],
      [0, 0],
    ]);
    out = rows.reshape([n, oh * sH, ow, c]);
  }
  if (sW > 1) {
    const h = out.shape[1];
    const cols = tf.pad(out.reshape([n * h, ow, 1, c]), [
      [0, 0],
      [0, 0],
      [0, sW - 1],
      [0, 0],
    ]);
    out = cols.reshape([n, h, ow * sW, c]);
  }
  return out;
}

/**
 * dW for y = conv2d(x, W):
 *   dW[kh, kw, ci, co] = Σ_{n,oh,ow} x_pad[n, oh·sH + kh, ow·sW + kw, ci] · dy[n, oh, ow, co]
 * Written as one product: with the patch matrix P[m, (kh, kw, ci)] = x_pad[n, oh·sH + kh, ow·sW + kw, ci]
 * (m = (n, oh, ow), "im2col"), dWᵀ = dyᵀ·P — a single [Cout × M]·[M × KH·KW·Cin] matMul, the one
 * fast matMul shape on wasm. P is filled by copying Cin-long runs on the wasm heap (zeros where the
 * tap falls in the padding), so neither a Pad nor KH·KW strided slices are needed. Backends without
 * heap access (and non-float32 inputs) take the per-tap form: KH·KW strided slices, one matMul each.
 */
function conv2DBackpropFilterNHWC(x: tf.Tensor4D, dy: tf.Tensor4D, filterShape: number[], attrs: ConvBackpropAttrs): tf.Tensor4D {
  const [kH, kW, cIn, cOut] = filterShape as [number, number, number, number];
  const info = tf.backend_util.computeConv2DInfo(x.shape, [kH, kW, cIn, cOut], attrs.strides, 1, attrs.pad, attrs.dimRoundingMode);
  const { top, bottom, left, right } = info.padInfo;
  const { outHeight: oH, outWidth: oW, strideHeight: sH, strideWidth: sW } = info;
  const n = x.shape[0];
  const m = n * oH * oW;
  const dyT = tf.transpose(dy.reshape([m, cOut])); // [Cout, M]
  const backend = tf.backend();
  if (x.dtype === "float32" && hasHeapAccess(backend)) {
    const patches = im2col(backend as unknown as WasmHeapAccess, x, kH, kW, sH, sW, top, left, oH, oW);
    // [Cout, KH·KW·Cin] → [KH·KW·Cin, Cout] = [KH, KW, Cin, Cout]
    return tf.transpose(tf.matMul(dyT, patches)).reshape([kH, kW, cIn, cOut]);
  }
  const xPad = padOrCrop(x, top, bottom, left, right);
  const taps: tf.Tensor2D[] = [];
  for (let kh = 0; kh < kH; kh++) {
    for (let kw = 0; kw < kW; kw++) {
      const patch = tf.stridedSlice(xPad, [0, kh, kw, 0], [n, kh + (oH - 1) * sH + 1, kw + (oW - 1) * sW + 1, cIn], [1, sH, sW, 1]);
      taps.push(tf.matMul(dyT, patch.reshape([m, cIn]))); // [Cout, Cin]
    }
  }
  // [KH·KW, Cout, Cin] → [KH, KW, Cin, Cout]
  return tf.transpose(tf.stack(taps), [0, 2, 1]).reshape([kH, kW, cIn, cOut]);
}

/**
 * The im2col patch matrix `[N·OH·OW, KH·KW·C]` of an NHWC float32 tensor for a convolution with the
 * given kernel size, strides and leading padding (`top`, `left`); taps in the padding are zero.
 * Built with one typed-array copy of C floats per (output pixel, tap) directly on the wasm heap.
 */
function im2col(
  w: WasmHeapAccess,
  x: tf.Tensor4D,
  kH: number,
  kW: number,
  sH: number,
  sW: number,
  top: number,
  left: number,
  oH: number,
  oW: number,
): tf.Tensor2D {
  const [n, h, wd, c] = x.shape;
  const rowLen = kH * kW * c;
  const out = w.makeOutput([n * oH * oW, rowLen], "float32");
  // Views are taken after the allocation, which may have grown (and detached) the heap.
  const dst = w.typedArrayFromHeap(out);
  const src = w.typedArrayFromHeap({ dataId: x.dataId, shape: x.shape, dtype: "float32" });
  let row = 0;
  for (let b = 0; b < n; b++) {
    for (let oy = 0; oy < oH; oy++) {
      for (let ox = 0; ox < oW; ox++, row++) {
        let o = row * rowLen;
        for (let kh = 0; kh < kH; kh++) {
          const iy = oy * sH + kh - top;
          for (let kw = 0; kw < kW; kw++, o += c) {
            const ix = ox * sW + kw - left;
            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) dst.fill(0, o, o + c);
            else {
              const s0 = ((b * h + iy) * wd + ix) * c;
              dst.set(src.subarray(s0, s0 + c), o);
            }
          }
        }
      }
    }
  }
  return tf.engine().makeTensorFromTensorInfo(out, tf.backend()) as tf.Tensor2D;
}

/**
 * dx for y = conv2d(x, W): with dy zero-dilated by the stride (dd), the input gradient is a
 * stride-1 correlation of dd with the spatially flipped filter whose in/out channels are swapped:
 *   dx[i] = Σ_k dd_pad[i + k] · flip(W)[k]ᵀ,  dd_pad = dd padded by (K − 1 − padTop) before and
 * enough after to give H outputs. That runs on the fast XNNPACK forward conv.
 */
function conv2DBackpropInputNHWC(dy: tf.Tensor4D, filter: tf.Tensor4D, inputShape: number[], attrs: ConvBackpropAttrs): tf.Tensor4D {
  const [kH, kW] = filter.shape;
  const [, h, w] = inputShape as [number, number, number, number];
  const info = tf.backend_util.computeConv2DInfo(
    inputShape as [number, number, number, number],
    filter.shape,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
  );
  const { top, left } = info.padInfo;
  const { outHeight: oH, outWidth: oW, strideHeight: sH, strideWidth: sW } = info;
  const dd = zeroDilate(dy, sH, sW); // OH·sH × OW·sW
  const padTop = kH - 1 - top;
  const padLeft = kW - 1 - left;
  const padBottom = h + kH - 1 - padTop - oH * sH;
  const padRight = w + kW - 1 - padLeft - oW * sW;
  const ddPad = padOrCrop(dd, padTop, padBottom, padLeft, padRight);
  const flipped = tf.transpose(flipHW(filter), [0, 1, 3, 2]) as tf.Tensor4D; // [KH, KW, Cout, Cin]
  return tf.conv2d(ddPad, flipped, 1, "valid");
}

/**
 * Rotate a filter `[KH, KW, Cin, Cout]` by 180° in H and W (`reverse` over axes 0 and 1). Each
 * (kh, kw) tap is a contiguous Cin·Cout block, so on the wasm heap this is KH·KW memcpys; the stock
 * Reverse kernel walks elements (15 ms for 3×3×128×128, paid on every backward conv).
 */
function flipHW(filter: tf.Tensor4D): tf.Tensor4D {
  const backend = tf.backend();
  if (filter.dtype !== "float32" || !hasHeapAccess(backend)) return tf.reverse(filter, [0, 1]);
  const [kh, kw, ci, co] = filter.shape;
  const taps = kh * kw;
  const block = ci * co;
  const w = backend as unknown as WasmHeapAccess;
  const out = w.makeOutput(filter.shape.slice(), "float32");
  // Views are taken after the allocation, which may have grown (and detached) the heap.
  const dst = w.typedArrayFromHeap(out);
  const src = w.typedArrayFromHeap({ dataId: filter.dataId, shape: filter.shape, dtype: "float32" });
  for (let j = 0; j < taps; j++) dst.set(src.subarray((taps - 1 - j) * block, (taps - j) * block), j * block);
  return tf.engine().makeTensorFromTensorInfo(out, backend) as tf.Tensor4D;
}

/** Stock wasm kernels we fall back to or call directly; captured when the overrides are installed. */
interface Stock {
  conv2DBackpropInput: tf.KernelConfig;
  batchMatMul: tf.KernelConfig;
  transpose: tf.KernelConfig;
  slice: tf.KernelConfig;
  concat: tf.KernelConfig;
}

/** Products at least this big (multiply-adds per batch element) are split into 2-D matMuls. */
const SPLIT_MIN_MACS = 1 << 18;
const SPLIT_MAX_BATCH = 64;

/** The parts of the wasm backend's API used to copy contiguous blocks without a kernel. */
interface WasmHeapAccess {
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  typedArrayFromHeap(info: TensorInfo): Float32Array;
}

function hasHeapAccess(b: KernelBackend): boolean {
  const w = b as unknown as Partial<WasmHeapAccess>;
  return typeof w.makeOutput === "function" && typeof w.typedArrayFromHeap === "function";
}

/**
 * Batch element `i` of a `[batch, rows, cols]` float32 tensor as a new `[rows, cols]` tensor. The
 * block is contiguous, so it is one memcpy on the wasm heap (the stock Slice kernel walks it
 * element by element: ~50 ms for 1024×1024).
 */
function batchElement(backend: KernelBackend, x: TensorInfo, i: number, rows: number, cols: number): TensorInfo {
  const w = backend as unknown as WasmHeapAccess;
  const out = w.makeOutput([rows, cols], "float32");
  // Views are taken after the allocation, which may have grown (and detached) the heap.
  const n = rows * cols;
  w.typedArrayFromHeap(out).set(w.typedArrayFromHeap(x).subarray(i * n, (i + 1) * n));
  return out;
}

/** Copy `parts` (each `[rows, cols]`) one after another into a new `[parts.length, rows, cols]` tensor. */
function stackBlocks(backend: KernelBackend, parts: TensorInfo[], rows: number, cols: number): TensorInfo {
  const w = backend as unknown as WasmHeapAccess;
  const out = w.makeOutput([parts.length, rows, cols], "float32");
  const dst = w.typedArrayFromHeap(out);
  parts.forEach((p, i) => dst.set(w.typedArrayFromHeap(p), i * rows * cols));
  return out;
}

function makeBatchMatMul(stock: Stock): KernelFunc {
  const kernel: KernelFunc = ({ inputs, attrs, backend: anyBackend }) => {
    const backend = anyBackend as KernelBackend;
    const a = inputs.a as TensorInfo;
    const b = inputs.b as TensorInfo;
    const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
    if (a.dtype !== "float32" || b.dtype !== "float32") {
      return stock.batchMatMul.kernelFunc({ inputs, attrs, backend });
    }
    const temps: TensorInfo[] = [];
    const run = (cfg: tf.KernelConfig, ins: tf.NamedTensorInfoMap, at: tf.NamedAttrMap): TensorInfo => {
      const out = cfg.kernelFunc({ inputs: ins, attrs: at, backend }) as TensorInfo;
      temps.push(out);
      return out;
    };
    // Explicit transposes: XNNPACK's fast path exists only for non-transposed products.
    const swapLast = (t: TensorInfo): TensorInfo => {
      const perm = t.shape.map((_, i) => i);
      perm.splice(-2, 2, perm.length - 1, perm.length - 2);
      return run(stock.transpose, { x: t }, { perm });
    };
    // C = op(A)·op(B) can also be computed as Cᵀ = op(B)ᵀ·op(A)ᵀ, then transposed. Pick the form that
    // transposes fewer elements: e.g. the attention gradient Pᵀ·dO (P: 1024×1024 scores, dO: 1024×16)
    // becomes (dOᵀ·P)ᵀ and transposes two 16×1024 blocks instead of the 1M-element P.
    const size = (t: TensorInfo): number => tf.util.sizeFromShape(t.shape);
    const rowsOut = a.shape[a.shape.length - (transposeA ? 1 : 2)]!;
    const colsOut = b.shape[b.shape.length - (transposeB ? 2 : 1)]!;
    const outBatch = Math.max(tf.util.sizeFromShape(a.shape.slice(0, -2)), tf.util.sizeFromShape(b.shape.slice(0, -2)));
    const direct = (transposeA ? size(a) : 0) + (transposeB ? size(b) : 0);
    const swapped = (transposeB ? 0 : size(b)) + (transposeA ? 0 : size(a)) + outBatch * rowsOut * colsOut;
    if (swapped < direct) {
      const ct = kernel({ inputs: { a: b, b: a }, attrs: { transposeA: !transposeB, transposeB: !transposeA }, backend }) as TensorInfo;
      temps.push(ct);
      const c = swapLast(ct);
      temps.splice(temps.indexOf(c), 1);
      temps.forEach((t) => backend.disposeData(t.dataId));
      return c;
    }
    const a2 = transposeA ? swapLast(a) : a;
    const b2 = transposeB ? swapLast(b) : b;
    const [m, k] = a2.shape.slice(-2) as [number, number];
    const [k2, p] = b2.shape.slice(-2) as [number, number];
    if (k !== k2) {
      // Let the stock kernel produce tfjs's own shape-mismatch message.
      temps.forEach((t) => backend.disposeData(t.dataId));
      return stock.batchMatMul.kernelFunc({ inputs, attrs, backend });
    }
    const outerA = a2.shape.slice(0, -2);
    const outerB = b2.shape.slice(0, -2);
    const batchA = tf.util.sizeFromShape(outerA);
    const batchB = tf.util.sizeFromShape(outerB);
    const outShape = [...tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB), m, p];
    const view = (t: TensorInfo, shape: number[]): TensorInfo => ({ dataId: t.dataId, shape, dtype: t.dtype });
    const plain = { transposeA: false, transposeB: false };
    let result: TensorInfo;
    if (batchB === 1) {
      // B is shared by every batch element: fold A's batch into its rows, one 2-D product.
      result = stock.batchMatMul.kernelFunc({
        inputs: { a: view(a2, [batchA * m, k]), b: view(b2, [k, p]) },
        attrs: plain,
        backend,
      }) as TensorInfo;
    } else if (batchA === batchB && batchA <= SPLIT_MAX_BATCH && m * k * p >= SPLIT_MIN_MACS) {
      // Large per-element products: one fast 2-D product each, then stack the results.
      const fast = hasHeapAccess(backend);
      const a3 = view(a2, [batchA, m, k]);
      const b3 = view(b2, [batchB, k, p]);
      const parts: TensorInfo[] = [];
      for (let i = 0; i < batchA; i++) {
        const ai = fast ? batchElement(backend, a3, i, m, k) : run(stock.slice, { x: a3 }, { begin: [i, 0, 0], size: [1, m, k] });
        const bi = fast ? batchElement(backend, b3, i, k, p) : run(stock.slice, { x: b3 }, { begin: [i, 0, 0], size: [1, k, p] });
        if (fast) temps.push(ai, bi);
        parts.push(run(stock.batchMatMul, { a: view(ai, [m, k]), b: view(bi, [k, p]) }, plain));
      }
      if (fast) result = stackBlocks(backend, parts, m, p);
      else {
        // The Concat kernel takes its inputs as an array.
        const concatInputs = parts.map((t) => view(t, [m, p])) as unknown as tf.NamedTensorInfoMap;
        result = stock.concat.kernelFunc({ inputs: concatInputs, attrs: { axis: 0 }, backend }) as TensorInfo;
      }
    } else {
      result = stock.batchMatMul.kernelFunc({ inputs: { a: a2, b: b2 }, attrs: plain, backend }) as TensorInfo;
    }
    temps.forEach((t) => backend.disposeData(t.dataId));
    return { dataId: result.dataId, shape: outShape, dtype: result.dtype };
  };
  return kernel;
}

function makeConv2DBackpropFilter(): KernelFunc {
  return ({ inputs, attrs, backend: anyBackend }) => {
    const backend = anyBackend as KernelBackend;
    const a = attrs as unknown as ConvBackpropAttrs & { filterShape: number[] };
    if (a.dataFormat === "NCHW") {
      throw new Error("Conv2DBackpropFilter on wasm: only NHWC data is supported (hypernet-lab uses NHWC throughout).");
    }
    return asKernelOutput(backend, () =>
      conv2DBackpropFilterNHWC(
        wrapInput(backend, inputs.x as TensorInfo) as tf.Tensor4D,
        wrapInput(backend, inputs.dy as TensorInfo) as tf.Tensor4D,
        a.filterShape,
        a,
      ),
    );
  };
}

function makeConv2DBackpropInput(stock: Stock): KernelFunc {
  return ({ inputs, attrs, backend: anyBackend }) => {
    const backend = anyBackend as KernelBackend;
    const a = attrs as unknown as ConvBackpropAttrs & { inputShape: number[] };
    if (a.dataFormat === "NCHW") return stock.conv2DBackpropInput.kernelFunc({ inputs, attrs, backend });
    return asKernelOutput(backend, () =>
      conv2DBackpropInputNHWC(
        wrapInput(backend, inputs.dy as TensorInfo) as tf.Tensor4D,
        wrapInput(backend, inputs.filter as TensorInfo) as tf.Tensor4D,
        a.inputShape,
        a,
      ),
    );
  };
}

function replaceKernel(name: string, kernelFunc: KernelFunc, setupFunc?: tf.KernelConfig["setupFunc"]): void {
  if (tf.getKernel(name, "wasm")) tf.unregisterKernel(name, "wasm");
  OURS.add(kernelFunc);
  // Keep the stock setupFunc: it prepares the wasm entry points if the backend is re-initialised.
  tf.registerKernel({ kernelName: name, backendName: "wasm", kernelFunc, setupFunc });
}

/**
 * Register the wasm training-kernel overrides (Conv2DBackpropFilter, Conv2DBackpropInput,
 * BatchMatMul). Idempotent: a second call sees our kernels already in place and does nothing.
 * Call after `@tensorflow/tfjs-backend-wasm` has been loaded (it registers the stock kernels).
 * Returns the names of kernels installed by this call (empty when already installed).
 */
export function registerWasmKernelOverrides(): string[] {
  const current = tf.getKernel("BatchMatMul", "wasm");
  if (current == null) {
    throw new Error(
      "registerWasmKernelOverrides: the wasm backend's kernels are not registered; load '@tensorflow/tfjs-backend-wasm' first.",
    );
  }
  if (OURS.has(current.kernelFunc)) return [];
  const need = (name: string): tf.KernelConfig => {
    const k = tf.getKernel(name, "wasm");
    if (k == null)
      throw new Error(`registerWasmKernelOverrides: stock wasm kernel '${name}' is missing (tfjs-backend-wasm version changed?).`);
    return k;
  };
  const stock: Stock = {
    conv2DBackpropInput: need("Conv2DBackpropInput"),
    batchMatMul: current,
    transpose: need("Transpose"),
    slice: need("Slice"),
    concat: need("Concat"),
  };
  replaceKernel("Conv2DBackpropFilter", makeConv2DBackpropFilter());
  replaceKernel("Conv2DBackpropInput", makeConv2DBackpropInput(stock), stock.conv2DBackpropInput.setupFunc);
  replaceKernel("BatchMatMul", makeBatchMatMul(stock), stock.batchMatMul.setupFunc);
  return [...WASM_KERNEL_OVERRIDES];
}

/** True when this module's overrides are the registered wasm kernels. */
export function wasmKernelOverridesInstalled(): boolean {
  const k = tf.getKernel("BatchMatMul", "wasm");
  return k != null && OURS.has(k.kernelFunc);
}
