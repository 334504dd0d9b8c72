/**
 * Per-module norms over training: for each hypernetwork module (a context width and k or v), the
 * size of its gradient and the size of the change it makes to the context.
 *
 *     gradient norm of module m   = √(Σ over m's parameters of Σ g²)        (this step's g, before clipping)
 *     output norm of module m     = mean over the tokens it rewrites of ‖m(c) − c‖₂
 *                                   (one inference pass over a fixed batch, every attention layer
 *                                   that calls m counted; multiplier 1, no dropout)
 *
 * The gradient norms cost one small read-back per measured step; the output norms one extra UNet
 * forward. Both are measured every `normsEvery` steps only (off by default), and neither draws a
 * random number, so training goes exactly as it would without them.
 */
import * as tf from "@tensorflow/tfjs";
import type { Hypernetwork } from "../hypernet/network";
import type { AttentionProcessor } from "../unet/attention";
import type { UNetModel } from "../unet/unet";

/** The label of a module: its width and "k" or "v" (e.g. "768 k"), as `normsFigure` shows it. */
export function moduleLabel(dim: number, which: 0 | 1): string {
  return `${dim} ${which === 0 ? "k" : "v"}`;
}

/**
 * The module label of each of `net`'s parameters, in `namedParameters` order (the optimizer's):
 * parameter names start with "<width>.<0|1>." (k or v).
 */
export function parameterModules(net: Hypernetwork): string[] {
  return net.namedParameters().map(([name]) => {
    const [dim, which] = name.split(".");
    return moduleLabel(Number(dim), which === "0" ? 0 : 1);
  });
}

/**
 * ‖g‖₂ per module: `grads[i]` is the gradient of the parameter labelled `labels[i]`. One read-back.
 * Modules with no gradient (widths the model never uses) are absent.
 */
export async function gradientNormsByModule(grads: readonly tf.Tensor[], labels: readonly string[]): Promise<Record<string, number>> {
  if (grads.length !== labels.length) throw new Error(`gradientNormsByModule: ${grads.length} gradients but ${labels.length} labels`);
  const order = [...new Set(labels)];
  if (order.length === 0) return {};
  const sums = tf.tidy(() =>
    tf.stack(
      order.map((label) => {
        let total: tf.Tensor = tf.scalar(0);
        grads.forEach((g, i) => {
          if (labels[i] === label) total = tf.add(total, tf.sum(tf.square(g)));
        });
        return total;
      }),
    ),
  );
  const values = await sums.data();
  sums.dispose();
  return Object.fromEntries(order.map((label, i) => [label, Math.sqrt(values[i]!)]));
}

/**
 * Run `forward` (one UNet pass of the caller's, with `net` attached) while every attention layer
 * also measures ‖m(c) − c‖₂ per token for `net`'s k and v modules of that layer's width; returns the
 * mean per module label. The layers' processors are restored afterwards, also when `forward` throws.
 */
export async function outputNormsByModule(
  unet: UNetModel,
  net: Hypernetwork,
  forward: () => Promise<void>,
): Promise<Record<string, number>> {
  const original = unet.getProcessors();
  const parts = new Map<string, tf.Scalar[]>();
  const measure = (ctx: tf.Tensor): void => {
    const dim = ctx.shape[ctx.shape.length - 1]!;
    if (!net.pair(dim)) return;
    for (const which of [0, 1] as const) {
      const norm = tf.tidy(() => {
        const delta = tf.sub(net.apply(which === 0 ? "k" : "v", ctx), ctx);
        return tf.mean(tf.sqrt(tf.sum(tf.square(delta), -1))) as tf.Scalar;
      });
      const label = moduleLabel(dim, which);
      parts.set(label, [...(parts.get(label) ?? []), tf.keep(norm)]);
    }
  };
  const wrapped = new Map<string, AttentionProcessor>(
    [...original].map(([name, proc]) => [
      name,
      (layer, x, context) => {
        measure(context ?? x);
        return proc(layer, x, context);
      },
    ]),
  );
  unet.setProcessor(wrapped);
  try {
    await forward();
  } catch (err) {
    for (const scalars of parts.values()) tf.dispose(scalars);
    throw err;
  } finally {
    unet.setProcessor(original);
  }
  const out: Record<string, number> = {};
  for (const [label, scalars] of parts) {
    const mean = tf.tidy(() => tf.mean(tf.stack(scalars)));
    out[label] = (await mean.data())[0]!;
    mean.dispose();
    tf.dispose(scalars);
  }
  return out;
}
