/**
 * Sinusoidal timestep embedding (LDM `timestep_embedding`, the Transformer positional encoding
 * applied to the diffusion step t):
 *
 *   f_i = exp(−ln(10000) · i / half),  i = 0 … half−1,  half = ⌊dim/2⌋
 *   emb(t) = [cos(t·f_0) … cos(t·f_{half−1}), sin(t·f_0) … sin(t·f_{half−1})]
 *
 * Cosines come first (diffusers reaches the same order with `flip_sin_to_cos=True`). An odd `dim`
 * gets one zero column at the end. The UNet's `time_embed` MLP turns this into a learned vector.
 */
import * as tf from "@tensorflow/tfjs";

/** Embed timesteps `t` ([B], may be fractional) into `[B, dim]`. */
export function timestepEmbedding(t: tf.Tensor1D, dim: number, maxPeriod = 10000): tf.Tensor2D {
  return tf.tidy(() => {
    const half = Math.floor(dim / 2);
    const freqs = new Float32Array(half);
    for (let i = 0; i < half; i++) freqs[i] = Math.exp((-Math.log(maxPeriod) * i) / half);
    const args = tf.mul(t.toFloat().reshape([-1, 1]), tf.tensor2d(freqs, [1, half]));
    let emb = tf.concat([tf.cos(args), tf.sin(args)], 1);
    if (dim % 2 === 1)
      emb = tf.pad(emb, [
        [0, 0],
        [0, 1],
      ]);
    return emb as tf.Tensor2D;
  });
}
