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

/**
 * ‖g‖_p over every element of every tensor, as `torch.nn.utils.clip_grad_norm_(…, norm_type=p)`
 * measures it: (Σ |g|^p)^(1/p) for a finite p > 0, the largest |g| for `Infinity`. p = 2 is
 * {@link globalNorm}. A scalar tensor the caller disposes.
 */
export function globalPNorm(tensors: readonly tf.Tensor[], p: number): tf.Scalar {
  if (!(p === Infinity || (Number.isFinite(p) && p > 0))) throw new Error(`globalPNorm: the norm type must be > 0 or Infinity, got ${p}`);
  if (p === 2) return globalNorm(tensors);
  if (tensors.length === 0) return tf.scalar(0);
  return tf.tidy(() => {
    // Accumulated one tensor at a time, like globalNorm (WebGPU's limit on an op's inputs).
    const part = (t: tf.Tensor): tf.Scalar =>
      (p === Infinity ? tf.max(tf.abs(t)) : p === 1 ? tf.sum(tf.abs(t)) : tf.sum(tf.pow(tf.abs(t), p))) as tf.Scalar;
    let total = part(tensors[0]!);
    for (let i = 1; i < tensors.length; i++)
      total = p === Infinity ? tf.maximum(total, part(tensors[i]!)) : tf.add(total, part(tensors[i]!));
    return (p === Infinity || p === 1 ? total : tf.pow(total, 1 / p)) as tf.Scalar;
  });
}
