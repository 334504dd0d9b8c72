/**
 * `UnsortedSegmentSum` for the wasm backend, which lacks it. Training the text encoder needs it:
 * it is the gradient of the token-embedding lookup (`gather`), summing the gradients of every
 * position that used a token into that token's row:
 *
 *     out[s] = Σ_{i : ids[i] = s} x[i]      ≡   out = onehot(ids, S)ᵀ · x
 *
 * Computed as that one matrix product with ordinary tfjs ops, so it runs on any backend. Only
 * `scripts/train-base.ts` needs it (hypernetwork training leaves the text encoder frozen).
 */
import * as tf from "@tensorflow/tfjs";

type KernelBackend = tf.KernelBackend;
type TensorInfo = tf.TensorInfo;

/** Register the kernel on the wasm backend if it has none. Returns whether it was installed now. */
export function registerWasmUnsortedSegmentSum(): boolean {
  if (tf.getKernel("UnsortedSegmentSum", "wasm")) return false;
  tf.registerKernel({
    kernelName: "UnsortedSegmentSum",
    backendName: "wasm",
    kernelFunc: ({ inputs, attrs, backend: anyBackend }) => {
      const backend = anyBackend as KernelBackend;
      const numSegments = (attrs as unknown as { numSegments: number }).numSegments;
      const wrap = (info: TensorInfo): tf.Tensor => {
        backend.incRef(info.dataId);
        return tf.engine().makeTensorFromTensorInfo(info, backend);
      };
      const result = tf.tidy(() => {
        const x = wrap(inputs.x as TensorInfo);
        const ids = wrap(inputs.segmentIds as TensorInfo);
        const n = ids.size;
        const rows = x.reshape([n, -1]);
        const onehot = tf.oneHot(ids.reshape([n]).toInt(), numSegments).toFloat(); // [n, S]
        return tf.matMul(onehot, rows, true, false).reshape([numSegments, ...x.shape.slice(ids.rank)]);
      });
      backend.incRef(result.dataId);
      const info: TensorInfo = { dataId: result.dataId, shape: result.shape.slice(), dtype: result.dtype };
      result.dispose();
      return info;
    },
  });
  return true;
}
