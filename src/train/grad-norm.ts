/** The global L2 norm of a list of gradients, as gradient clipping and the training logs use it. */
import * as tf from "@tensorflow/tfjs";

/**
 * ‖g‖₂ over every element of every tensor: √(Σ_tensors Σ g²), as a scalar tensor the caller
 * disposes (read it with `await n.data()`: WebGPU in Node cannot read synchronously).
 *
 * The per-tensor sums are added one at a time rather than with `tf.addN`: WebGPU binds every input
 * of an `addN` as a storage buffer, and a device allows only a few per shader (8 on most), so
 * `addN` over a model's hundreds of gradients fails there.
 */
export function globalNorm(tensors: readonly tf.Tensor[]): tf.Scalar {
  if (tensors.length === 0) return tf.scalar(0);
  return tf.tidy(() => {
    let total = tf.sum(tf.square(tensors[0]!));
    for (let i = 1; i < tensors.length; i++) total = tf.add(total, tf.sum(tf.square(tensors[i]!)));
    return tf.sqrt(total) as tf.Scalar;
  });
}
