/**
 * Activation functions by the names AUTOMATIC1111 accepts (spec §1.4).
 *
 * A1111 builds its table from seven explicit names plus every class in
 * `torch.nn.modules.activation`, lower-cased, each constructed with no arguments — so every
 * activation here uses PyTorch's default parameters. Two traps are reproduced on purpose,
 * because files trained with them must behave the same here:
 * - `swish` is **Hardswish** (`x · relu6(x + 3) / 6`), not SiLU;
 * - `softmax`, `softmin`, `logsoftmax` and `softmax2d` use PyTorch's *implicit* dimension, which
 *   for a 3-D context `[batch, tokens, width]` is dim 0 — the batch axis.
 * Names that cannot work in an A1111 hypernetwork are refused with the reason.
 */
import * as tf from "@tensorflow/tfjs";

/** Every name A1111's `activation_dict` holds, in a stable order. */
export const ACTIVATION_NAMES = [
  "linear",
  "relu",
  "leakyrelu",
  "elu",
  "swish",
  "tanh",
  "sigmoid",
  "threshold",
  "rrelu",
  "hardtanh",
  "relu6",
  "hardsigmoid",
  "silu",
  "mish",
  "hardswish",
  "celu",
  "selu",
  "glu",
  "gelu",
  "hardshrink",
  "logsigmoid",
  "softplus",
  "softshrink",
  "multiheadattention",
  "prelu",
  "softsign",
  "tanhshrink",
  "softmin",
  "softmax",
  "softmax2d",
  "logsoftmax",
] as const;

export type ActivationName = (typeof ACTIVATION_NAMES)[number];

/** Names A1111 lists but that fail when the network is built or run, with why. */
const UNUSABLE: Partial<Record<ActivationName, string>> = {
  threshold:
    "torch.nn.Threshold needs `threshold` and `value` arguments, and A1111 constructs activations without arguments, so A1111 itself cannot build it",
  multiheadattention:
    "torch.nn.MultiheadAttention needs `embed_dim` and `num_heads` arguments and is not an elementwise activation, so A1111 itself cannot build it",
  glu: "GLU halves the width, so the next Linear (or the residual add) gets the wrong shape in A1111 too",
};

/** Names ComfyUI's HypernetworkLoader accepts (others are refused there; see spec §1.4). */
export const COMFYUI_ACTIVATIONS: ReadonlySet<string> = new Set([
  "linear",
  "relu",
  "leakyrelu",
  "elu",
  "swish",
  "tanh",
  "sigmoid",
  "softsign",
  "mish",
]);

/** Check an activation name (case-insensitive, as stored lower-case) and return it normalised. */
export function checkActivation(name: string | null | undefined): ActivationName {
  const n = (name ?? "linear").toLowerCase();
  if (!(ACTIVATION_NAMES as readonly string[]).includes(n)) {
    throw new Error(`unsupported activation function "${name}". Use one of: ${ACTIVATION_NAMES.filter((a) => !UNUSABLE[a]).join(", ")}`);
  }
  const why = UNUSABLE[n as ActivationName];
  if (why) throw new Error(`activation "${n}" cannot be used in a hypernetwork: ${why}. Choose e.g. relu, leakyrelu, swish or linear.`);
  return n as ActivationName;
}

/** True when the activation inserts a module (everything but `linear`/None). */
export function insertsModule(name: ActivationName): boolean {
  return name !== "linear";
}

/** PyTorch's `_get_softmax_dim` for the implicit-dim softmax family: 0 for 0/1/3-D input, else 1. */
function implicitSoftmaxAxis(rank: number): number {
  return rank === 0 || rank === 1 || rank === 3 ? 0 : 1;
}

const relu6 = (x: tf.Tensor): tf.Tensor => tf.clipByValue(x, 0, 6);
const softplus = (x: tf.Tensor): tf.Tensor =>
  // PyTorch Softplus(beta=1, threshold=20): linear above 20 for stability
  tf.where(tf.greater(x, 20), x, tf.log1p(tf.exp(tf.minimum(x, 20))));

const SELU_ALPHA = 1.6732632423543772848170429916717;
const SELU_SCALE = 1.0507009873554804934193349852946;
/** RReLU's default bounds; in eval mode the slope is their mean. */
const RRELU_LOWER = 1 / 8;
const RRELU_UPPER = 1 / 3;

/**
 * Apply an activation (no `prelu`: it has a weight and lives in `PReLU`).
 * `training` matters only for `rrelu`, whose negative slope is random in training.
 */
export function applyActivation(name: ActivationName, x: tf.Tensor, training = false, seed?: number): tf.Tensor {
  switch (name) {
    case "linear":
      return x;
    case "relu":
      return tf.relu(x);
    case "leakyrelu":
      return tf.leakyRelu(x, 0.01);
    case "elu":
      return tf.elu(x);
    case "celu": // alpha 1: identical to ELU
      return tf.elu(x);
    case "selu":
      return tf.mul(SELU_SCALE, tf.where(tf.greater(x, 0), x, tf.mul(SELU_ALPHA, tf.sub(tf.exp(tf.minimum(x, 0)), 1))));
    case "swish": // A1111 maps swish to Hardswish
    case "hardswish":
      return tf.div(tf.mul(x, relu6(tf.add(x, 3))), 6);
    case "hardsigmoid":
      return tf.div(relu6(tf.add(x, 3)), 6);
    case "tanh":
      return tf.tanh(x);
    case "sigmoid":
      return tf.sigmoid(x);
    case "silu":
      return tf.mul(x, tf.sigmoid(x));
    case "mish":
      return tf.mul(x, tf.tanh(softplus(x)));
    case "gelu":
      return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
    case "hardtanh":
      return tf.clipByValue(x, -1, 1);
    case "relu6":
      return relu6(x);
    case "rrelu": {
      if (!training) return tf.leakyRelu(x, (RRELU_LOWER + RRELU_UPPER) / 2);
      const slope = tf.randomUniform(x.shape, RRELU_LOWER, RRELU_UPPER, "float32", seed);
      return tf.where(tf.greaterEqual(x, 0), x, tf.mul(x, slope));
    }
    case "hardshrink":
      return tf.where(tf.greater(tf.abs(x), 0.5), x, tf.zerosLike(x));
    case "softshrink":
      return tf.where(tf.greater(x, 0.5), tf.sub(x, 0.5), tf.where(tf.less(x, -0.5), tf.add(x, 0.5), tf.zerosLike(x)));
    case "logsigmoid":
      return tf.logSigmoid(x);
    case "softplus":
      return softplus(x);
    case "softsign":
      return tf.div(x, tf.add(1, tf.abs(x)));
    case "tanhshrink":
      return tf.sub(x, tf.tanh(x));
    case "softmax":
      return softmaxOn(x, implicitSoftmaxAxis(x.rank));
    case "softmin":
      return softmaxOn(tf.neg(x), implicitSoftmaxAxis(x.rank));
    case "logsoftmax":
      return tf
        .logSoftmax(moveAxisLast(x, implicitSoftmaxAxis(x.rank)), -1)
        .transpose(inverseMoveAxisLast(x.rank, implicitSoftmaxAxis(x.rank)));
    case "softmax2d": // softmax over dim −3 (channels of a 3-D/4-D input)
      if (x.rank !== 3 && x.rank !== 4) throw new Error(`softmax2d needs a 3-D or 4-D input, got rank ${x.rank}`);
      return softmaxOn(x, x.rank - 3);
    case "prelu":
      throw new Error("prelu has a learned weight; it is applied by the PReLU layer, not applyActivation");
    case "threshold":
    case "multiheadattention":
    case "glu":
      throw new Error(`activation "${name}" cannot be used in a hypernetwork`);
  }
}

function moveAxisLast(x: tf.Tensor, axis: number): tf.Tensor {
  const perm = [...Array(x.rank).keys()].filter((a) => a !== axis).concat([axis]);
  return x.transpose(perm);
}

function inverseMoveAxisLast(rank: number, axis: number): number[] {
  const perm = [...Array(rank).keys()].filter((a) => a !== axis).concat([axis]);
  const inv = new Array<number>(rank);
  perm.forEach((p, i) => (inv[p] = i));
  return inv;
}

function softmaxOn(x: tf.Tensor, axis: number): tf.Tensor {
  if (axis === x.rank - 1) return tf.softmax(x, -1);
  return tf.softmax(moveAxisLast(x, axis), -1).transpose(inverseMoveAxisLast(x.rank, axis));
}
