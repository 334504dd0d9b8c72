/**
 * AdamW's per-parameter update as fused WebGPU kernels: the composite in src/train/adamw.ts is 14
 * elementwise dispatches per parameter (decay, two moments, square root, divisions, the step);
 * here it is three, one per result (new parameter, new first moment, new second moment), each
 * recomputing the moments elementwise rather than reading a stored intermediate (a WebGPU
 * program has one output). The arithmetic is the composite's, in the same order and in float32,
 * so the results agree to rounding.
 *
 * The step-dependent scalars travel as one small tensor (see {@link adamwScalars}), built once per
 * step and shared by every parameter, so a step uploads it once and the kernels' uniforms (shapes
 * only) repeat from step to step.
 */
import * as tf from "@tensorflow/tfjs";

const ADAMW = "HnFusedAdamW";
const WG = 64;

/** Which result a launch writes. */
const WHICH = { p: 0, m: 1, v: 2 } as const;

interface Program {
  variableNames: string[];
  outputShape: number[];
  uniforms: string;
  size: boolean;
  workgroupSize: [number, number, number];
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  shaderKey: string;
  getUserCode(): string;
}

interface WebgpuBackendLike {
  runWebGPUProgram(
    program: Program,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: { type: string; data: number[] }[],
  ): tf.TensorInfo;
}

/** The inputs each launch reads (a binding the shader does not use must not be bound). */
const VARIABLES = [
  ["p", "m", "v", "g", "s"],
  ["m", "g", "s"],
  ["v", "g", "s"],
];

/**
 * Elementwise over the parameter's n entries. `s` holds [1 − lr·λ, β₁, 1 − β₁, β₂, 1 − β₂,
 * √(1 − β₂ᵏ), ε, lr/(1 − β₁ᵏ)] as float32, as the composite's scalar operands are.
 */
function adamwProgram(n: number, which: number): Program {
  const x = Math.min(Math.ceil(n / WG), 65535);
  return {
    variableNames: VARIABLES[which]!,
    outputShape: [n],
    uniforms: "",
    size: true,
    workgroupSize: [WG, 1, 1],
    dispatchLayout: { x: [0] },
    dispatch: [x, Math.ceil(Math.ceil(n / WG) / x), 1],
    shaderKey: `hn_adamw_${which}`,
    getUserCode: () => `
  fn main(index : i32) {
    if (index < uniforms.size) {
      let gi = g[index];
      ${which !== WHICH.v ? "let mi = m[index] * s[1] + gi * s[2];" : ""}
      ${which !== WHICH.m ? "let vi = v[index] * s[3] + (gi * gi) * s[4];" : ""}
      ${which === WHICH.m ? "setOutputAtIndex(index, mi);" : ""}
      ${which === WHICH.v ? "setOutputAtIndex(index, vi);" : ""}
      ${which === WHICH.p ? "setOutputAtIndex(index, p[index] * s[0] - (mi / (sqrt(vi) / s[5] + s[6])) * s[7]);" : ""}
    }
  }`,
  };
}

let installed = false;

/** Register the fused AdamW kernel for `webgpu` (idempotent; called by `useFusedKernels`). */
export function registerFusedAdamW(): void {
  if (installed) return;
  const env = process.env.HYPERNET_WEBGPU_FUSED_ADAMW?.trim().toLowerCase();
  if (env === "0" || env === "off" || env === "false") return;
  tf.registerKernel({
    kernelName: ADAMW,
    backendName: "webgpu",
    kernelFunc: ({ inputs, backend, attrs }) => {
      const which = (attrs as unknown as { which: number }).which;
      const shape = inputs.p!.shape;
      const n = shape.reduce((a, b) => a * b, 1);
      // Flat views of the [n]-sized inputs; s stays [8].
      const ins = VARIABLES[which]!.map((name) => (name === "s" ? inputs.s! : { ...inputs[name]!, shape: [n] }));
      const out = (backend as unknown as WebgpuBackendLike).runWebGPUProgram(adamwProgram(n, which), ins, "float32");
      return { ...out, shape };
    },
  });
  installed = true;
}

/** Whether AdamW should take the fused path now (kernel registered, webgpu active). */
export function fusedAdamWActive(): boolean {
  return installed && tf.getBackend() === "webgpu";
}

/** AdamW's hyper-parameters and this step's bias corrections, as src/train/adamw.ts computes them. */
export interface AdamWStepScalars {
  lr: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** √(1 − β₂ᵏ). */
  bc2Sqrt: number;
  /** lr / (1 − β₁ᵏ). */
  stepSize: number;
}

/** The scalar operands of one step as the `[8]` float32 tensor the kernel reads (the caller disposes it). */
export function adamwScalars(a: AdamWStepScalars): tf.Tensor1D {
  return tf.tensor1d([1 - a.lr * a.weightDecay, a.beta1, 1 - a.beta1, a.beta2, 1 - a.beta2, a.bc2Sqrt, a.eps, a.stepSize], "float32");
}

/**
 * One AdamW update of parameter `p` with gradient `g` and moments `m`, `v` (all the same shape):
 * returns the new parameter and moments (three dispatches on webgpu; call only when
 * {@link fusedAdamWActive}). `s` comes from {@link adamwScalars}. Not differentiable (an optimizer step).
 */
export function fusedAdamW(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, s: tf.Tensor1D): [tf.Tensor, tf.Tensor, tf.Tensor] {
  for (const [name, t] of [
    ["m", m],
    ["v", v],
    ["g", g],
  ] as const)
    if (!tf.util.arraysEqual(t.shape, p.shape)) throw new Error(`fusedAdamW: ${name} is [${t.shape}] but the parameter is [${p.shape}]`);
  if (s.size !== 8) throw new Error(`fusedAdamW: the scalars tensor has ${s.size} entries, not 8 (make it with adamwScalars)`);
  const run = (which: number): tf.Tensor =>
    tf.engine().runKernel(ADAMW, { p, m, v, g, s }, { which } as unknown as tf.NamedAttrMap) as tf.Tensor;
  return [run(WHICH.p), run(WHICH.m), run(WHICH.v)];
}
