/**
 * Fused WebGPU kernels for the model's hot paths, registered from project code (no fork of tfjs):
 * a per-group normalisation with scale, shift and optional SiLU (GroupNorm, and LayerNorm as one
 * group over the last axis), and GEGLU's `value · GELU(gate)`. Each forward is one dispatch
 * instead of 10–15, and each has an analytic gradient that is also one dispatch per input.
 *
 * The model code stays backend-agnostic: src/nn/layers.ts and src/unet/attention.ts ask
 * {@link fusedKernelsActive} and take the fused path only on the `webgpu` backend once
 * {@link useFusedKernels} has registered the kernels; elsewhere they run the plain composite.
 */
import * as tf from "@tensorflow/tfjs";
import { registerFusedAdamW } from "./webgpu-adamw";
import { registerFusedAttention } from "./webgpu-attention";

/** Kernel names (project-private: no clash with tfjs's own). */
const NORM = "HnFusedNorm";
const NORM_GRAD_X = "HnFusedNormGradX";
const NORM_GRAD_AFFINE = "HnFusedNormGradAffine";
const GEGLU = "HnFusedGeglu";
const GEGLU_GRAD = "HnFusedGegluGrad";

/** Threads per workgroup of the reductions (one workgroup reduces one group). */
const WG = 64;

/** The slice of a tfjs WebGPU program object that `runWebGPUProgram` reads. */
interface Program {
  variableNames: string[];
  outputShape: number[];
  uniforms?: string;
  size?: boolean;
  workgroupSize: [number, number, number];
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  shaderKey: string;
  getUserCode(): string;
}

/** The one backend method these kernels call. */
interface WebgpuBackendLike {
  runWebGPUProgram(
    program: Program,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: { type: string; data: number[] }[],
  ): tf.TensorInfo;
}

/** Spread `groups` workgroups over x and y (each dimension holds at most 65,535). */
function grid(groups: number): [number, number, number] {
  const x = Math.min(groups, 65535);
  return [x, Math.ceil(groups / x), 1];
}

/** Attributes of the normalisation kernels: x is `[B, S, C]`, normalised per (b, group). */
interface NormAttrs {
  groups: number;
  eps: number;
  silu: boolean;
}

function normAttrs(attrs: unknown): NormAttrs {
  const a = attrs as NormAttrs;
  return { groups: a.groups, eps: a.eps, silu: a.silu };
}

/**
 * WGSL shared by the normalisation programs: group statistics by a workgroup reduction.
 * Element i of group (b, g) lives at b·S·C + (i / Cg)·C + g·Cg + i % Cg.
 */
function statsCode(silu: boolean): string {
  return `
  var<workgroup> red0 : array<f32, ${WG}>;
  var<workgroup> red1 : array<f32, ${WG}>;
  fn elemIndex(b : i32, g : i32, i : i32) -> i32 {
    let cg = uniforms.C / uniforms.G;
    return b * uniforms.S * uniforms.C + (i / cg) * uniforms.C + g * cg + i % cg;
  }
  fn channelOf(g : i32, i : i32) -> i32 {
    let cg = uniforms.C / uniforms.G;
    return g * cg + i % cg;
  }
  fn reduce2(a : f32, b : f32) -> vec2<f32> {
    let t = i32(localIndex);
    red0[t] = a;
    red1[t] = b;
    workgroupBarrier();
    for (var s = ${WG / 2}; s > 0; s = s / 2) {
      if (t < s) {
        red0[t] = red0[t] + red0[t + s];
        red1[t] = red1[t] + red1[t + s];
      }
      workgroupBarrier();
    }
    let r = vec2<f32>(red0[0], red1[0]);
    workgroupBarrier();
    return r;
  }
  // Mean and 1/sqrt(var + eps) of group (b, g), two passes for accuracy.
  fn groupStats(b : i32, g : i32) -> vec2<f32> {
    let n = uniforms.S * (uniforms.C / uniforms.G);
    let t = i32(localIndex);
    var s = 0.0;
    for (var i = t; i < n; i = i + ${WG}) { s = s + x[elemIndex(b, g, i)]; }
    let mean = reduce2(s, 0.0).x / f32(n);
    var q = 0.0;
    for (var i = t; i < n; i = i + ${WG}) { let d = x[elemIndex(b, g, i)] - mean; q = q + d * d; }
    let v = reduce2(q, 0.0).x / f32(n);
    return vec2<f32>(mean, inverseSqrt(v + uniforms.eps));
  }
  fn sigm(v : f32) -> f32 { return 1.0 / (1.0 + exp(-v)); }
  // d silu(y)/dy when the SiLU is fused, else 1.
  fn actGrad(y : f32) -> f32 {
    ${silu ? "let s = sigm(y); return s * (1.0 + y * (1.0 - s));" : "return 1.0;"}
  }
  fn act(y : f32) -> f32 {
    ${silu ? "return y * sigm(y);" : "return y;"}
  }
  `;
}

const normUniforms = "S : i32, C : i32, G : i32, eps : f32, B : i32,";

function normUniformData(shape: number[], a: NormAttrs): { type: string; data: number[] }[] {
  return [
    { type: "int32", data: [shape[1]!] },
    { type: "int32", data: [shape[2]!] },
    { type: "int32", data: [a.groups] },
    { type: "float32", data: [a.eps] },
    { type: "int32", data: [shape[0]!] },
  ];
}

/** Forward: y = act((x − mean)·rstd·γ + β), one workgroup per (b, group). */
function normProgram(shape: number[], a: NormAttrs): Program {
  const rows = shape[0]! * a.groups;
  return {
    variableNames: ["x", "gamma", "beta"],
    outputShape: shape,
    uniforms: normUniforms,
    workgroupSize: [WG, 1, 1],
    dispatchLayout: { x: [0] },
    dispatch: grid(rows),
    shaderKey: `hn_norm_${a.silu}`,
    getUserCode: () =>
      statsCode(a.silu) +
      `
  fn main(index : i32) {
    let row = min(index / ${WG}, uniforms.B * uniforms.G - 1); // spare workgroups of the grid redo the last row
    let b = row / uniforms.G;
    let g = row % uniforms.G;
    let st = groupStats(b, g);
    let n = uniforms.S * (uniforms.C / uniforms.G);
    for (var i = i32(localIndex); i < n; i = i + ${WG}) {
      let e = elemIndex(b, g, i);
      let c = channelOf(g, i);
      let y = (x[e] - st.x) * st.y * gamma[c] + beta[c];
      setOutputAtIndex(e, act(y));
    }
  }`,
  };
}

/**
 * ∂L/∂x: with gy = dy·act'(y) and d = gy·γ, dx = rstd·(d − mean(d) − x̂·mean(d·x̂)).
 * Recomputes the statistics instead of storing them (one workgroup per (b, group)).
 */
function normGradXProgram(shape: number[], a: NormAttrs): Program {
  const rows = shape[0]! * a.groups;
  return {
    variableNames: ["x", "gamma", "beta", "dy"],
    outputShape: shape,
    uniforms: normUniforms,
    workgroupSize: [WG, 1, 1],
    dispatchLayout: { x: [0] },
    dispatch: grid(rows),
    shaderKey: `hn_norm_gx_${a.silu}`,
    getUserCode: () =>
      statsCode(a.silu) +
      `
  fn main(index : i32) {
    let row = min(index / ${WG}, uniforms.B * uniforms.G - 1); // spare workgroups of the grid redo the last row
    let b = row / uniforms.G;
    let g = row % uniforms.G;
    let st = groupStats(b, g);
    let n = uniforms.S * (uniforms.C / uniforms.G);
    var s1 = 0.0;
    var s2 = 0.0;
    for (var i = i32(localIndex); i < n; i = i + ${WG}) {
      let e = elemIndex(b, g, i);
      let c = channelOf(g, i);
      let xh = (x[e] - st.x) * st.y;
      let d = dy[e] * actGrad(xh * gamma[c] + beta[c]) * gamma[c];
      s1 = s1 + d;
      s2 = s2 + d * xh;
    }
    let m = reduce2(s1, s2) / f32(n);
    for (var i = i32(localIndex); i < n; i = i + ${WG}) {
      let e = elemIndex(b, g, i);
      let c = channelOf(g, i);
      let xh = (x[e] - st.x) * st.y;
      let d = dy[e] * actGrad(xh * gamma[c] + beta[c]) * gamma[c];
      setOutputAtIndex(e, st.y * (d - m.x - xh * m.y));
    }
  }`,
  };
}

/**
 * ∂L/∂γ and ∂L/∂β as one `[2, C]` tensor: Σ gy·x̂ and Σ gy over batch and positions, one
 * workgroup per channel (it recomputes its group's statistics for each batch entry).
 */
function normGradAffineProgram(shape: number[], a: NormAttrs): Program {
  const channels = shape[2]!;
  return {
    variableNames: ["x", "gamma", "beta", "dy"],
    outputShape: [2, channels],
    uniforms: normUniforms,
    workgroupSize: [WG, 1, 1],
    dispatchLayout: { x: [0, 1] },
    dispatch: grid(channels),
    shaderKey: `hn_norm_gab_${a.silu}`,
    getUserCode: () =>
      statsCode(a.silu) +
      `
  fn main(index : i32) {
    let c = min(index / ${WG}, uniforms.C - 1);
    let cg = uniforms.C / uniforms.G;
    let g = c / cg;
    var sg = 0.0;
    var sb = 0.0;
    for (var b = 0; b < uniforms.B; b = b + 1) {
      let st = groupStats(b, g);
      for (var s = i32(localIndex); s < uniforms.S; s = s + ${WG}) {
        let e = b * uniforms.S * uniforms.C + s * uniforms.C + c;
        let xh = (x[e] - st.x) * st.y;
        let gy = dy[e] * actGrad(xh * gamma[c] + beta[c]);
        sg = sg + gy * xh;
        sb = sb + gy;
      }
    }
    let r = reduce2(sg, sb);
    if (localIndex == 0u) {
      setOutputAtIndex(c, r.x);
      setOutputAtIndex(uniforms.C + c, r.y);
    }
  }`,
  };
}

/** GELU pieces in WGSL; erf by Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7), as tfjs's own. */
const GELU_CODE = `
  fn erfA(v : f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
  }
  fn geluA(v : f32) -> f32 { return 0.5 * v * (1.0 + erfA(v * 0.7071067811865476)); }
  fn geluGrad(v : f32) -> f32 {
    return 0.5 * (1.0 + erfA(v * 0.7071067811865476)) + v * 0.3989422804014327 * exp(-0.5 * v * v);
  }
`;

/** Elementwise program over `n` outputs (one thread each). */
function elementwise(variableNames: string[], outputShape: number[], key: string, body: string): Program {
  const n = outputShape.reduce((p, v) => p * v, 1);
  return {
    variableNames,
    outputShape,
    uniforms: "half : i32,",
    size: true,
    workgroupSize: [WG, 1, 1],
    dispatchLayout: { x: outputShape.map((_, i) => i) },
    dispatch: grid(Math.ceil(n / WG)),
    shaderKey: key,
    getUserCode: () => `${GELU_CODE}
  fn main(index : i32) {
    if (index < uniforms.size) {
      ${body}
    }
  }`,
  };
}

/** GEGLU forward: h `[N, 2n]` → `h[:, :n] · GELU(h[:, n:])`, `[N, n]`. */
function gegluProgram(shape: number[]): Program {
  const half = shape[1]! / 2;
  return elementwise(
    ["h"],
    [shape[0]!, half],
    "hn_geglu",
    `
      let r = index / uniforms.half;
      let k = index % uniforms.half;
      let v = h[r * 2 * uniforms.half + k];
      let gt = h[r * 2 * uniforms.half + uniforms.half + k];
      setOutputAtIndex(index, v * geluA(gt));`,
  );
}

/** GEGLU backward: dh `[N, 2n]` = [dy·GELU(gate), dy·value·GELU'(gate)]. */
function gegluGradProgram(shape: number[]): Program {
  return elementwise(
    ["h", "dy"],
    shape,
    "hn_geglu_grad",
    `
      let w = 2 * uniforms.half;
      let r = index / w;
      let k = index % w;
      let j = k % uniforms.half;
      let v = h[r * w + j];
      let gt = h[r * w + uniforms.half + j];
      let d = dy[r * uniforms.half + j];
      if (k < uniforms.half) { setOutputAtIndex(index, d * geluA(gt)); }
      else { setOutputAtIndex(index, d * v * geluGrad(gt)); }`,
  );
}

function run(backend: unknown, program: Program, inputs: tf.TensorInfo[], uniforms: { type: string; data: number[] }[]): tf.TensorInfo {
  return (backend as WebgpuBackendLike).runWebGPUProgram(program, inputs, "float32", uniforms);
}

let installed = false;

/**
 * Register the fused kernels and their gradients for the `webgpu` backend (idempotent). Call it
 * where the backend is selected; the nn functions then route to the kernels while
 * `tf.getBackend() === "webgpu"`. `HYPERNET_WEBGPU_FUSED=0` keeps the composite path.
 */
export function useFusedKernels(): void {
  if (installed) return;
  const env = process.env.HYPERNET_WEBGPU_FUSED?.trim().toLowerCase();
  if (env === "0" || env === "off" || env === "false") return; // the composite path, for comparisons
  const kernels: [string, tf.KernelFunc][] = [
    [
      NORM,
      ({ inputs, backend, attrs }) => {
        const a = normAttrs(attrs);
        const x = inputs.x!;
        return run(backend, normProgram(x.shape, a), [x, inputs.gamma!, inputs.beta!], normUniformData(x.shape, a));
      },
    ],
    [
      NORM_GRAD_X,
      ({ inputs, backend, attrs }) => {
        const a = normAttrs(attrs);
        const x = inputs.x!;
        return run(backend, normGradXProgram(x.shape, a), [x, inputs.gamma!, inputs.beta!, inputs.dy!], normUniformData(x.shape, a));
      },
    ],
    [
      NORM_GRAD_AFFINE,
      ({ inputs, backend, attrs }) => {
        const a = normAttrs(attrs);
        const x = inputs.x!;
        return run(backend, normGradAffineProgram(x.shape, a), [x, inputs.gamma!, inputs.beta!, inputs.dy!], normUniformData(x.shape, a));
      },
    ],
    [
      GEGLU,
      ({ inputs, backend }) => {
        const h = inputs.h!;
        return run(backend, gegluProgram(h.shape), [h], [{ type: "int32", data: [h.shape[1]! / 2] }]);
      },
    ],
    [
      GEGLU_GRAD,
      ({ inputs, backend }) => {
        const h = inputs.h!;
        return run(backend, gegluGradProgram(h.shape), [h, inputs.dy!], [{ type: "int32", data: [h.shape[1]! / 2] }]);
      },
    ],
  ];
  for (const [kernelName, kernelFunc] of kernels) tf.registerKernel({ kernelName, backendName: "webgpu", kernelFunc });
  tf.registerGradient({
    kernelName: NORM,
    inputsToSave: ["x", "gamma", "beta"],
    gradFunc: (dy, saved, attrs) => {
      const [x, gamma, beta] = saved as tf.Tensor[];
      const ins = { x: x!, gamma: gamma!, beta: beta!, dy: dy as tf.Tensor };
      // Each input's gradient runs in its own tidy, so γ and β each run the [2, C] kernel.
      const aff = (): tf.Tensor => tf.engine().runKernel(NORM_GRAD_AFFINE, ins, attrs as unknown as tf.NamedAttrMap) as tf.Tensor;
      return {
        x: () => tf.engine().runKernel(NORM_GRAD_X, ins, attrs as unknown as tf.NamedAttrMap) as tf.Tensor,
        gamma: () => tf.slice(aff(), [0, 0], [1, -1]).reshape([-1]),
        beta: () => tf.slice(aff(), [1, 0], [1, -1]).reshape([-1]),
      };
    },
  });
  tf.registerGradient({
    kernelName: GEGLU,
    inputsToSave: ["h"],
    gradFunc: (dy, saved) => ({ h: () => tf.engine().runKernel(GEGLU_GRAD, { h: saved[0]!, dy: dy as tf.Tensor }) as tf.Tensor }),
  });
  registerFusedAttention(); // attention forward and backward: src/backend/webgpu-attention.ts
  registerFusedAdamW(); // AdamW, three dispatches per parameter: src/backend/webgpu-adamw.ts
  installed = true;
}

/** Whether the nn functions should take the fused path now (kernels registered, webgpu active). */
export function fusedKernelsActive(): boolean {
  return installed && tf.getBackend() === "webgpu";
}

/**
 * Whether tfjs is recording a gradient tape now (inside `tf.grads`/`variableGrads`). tfjs's fused
 * matMul/conv2d compute the gradients of all their inputs (frozen weights included), so the
 * layers use them only outside a tape. Reads engine state that tfjs 4.22 keeps internal.
 */
export function recordingGradients(): boolean {
  const state = (tf.engine() as unknown as { state?: { gradientDepth?: number } }).state;
  return (state?.gradientDepth ?? 1) > 0;
}

/**
 * Normalise `x` (`[B, S, C]`) per batch entry and channel group: `(x − mean)/√(var + eps)·γ + β`,
 * then SiLU if `silu`. One dispatch on webgpu; call only when {@link fusedKernelsActive}.
 */
export function fusedGroupNorm(x: tf.Tensor3D, gamma: tf.Tensor, beta: tf.Tensor, groups: number, eps: number, silu: boolean): tf.Tensor3D {
  if (x.shape[2] % groups !== 0) throw new Error(`fusedGroupNorm: ${x.shape[2]} channels do not split into ${groups} groups`);
  const attrs = { groups, eps, silu } as unknown as tf.NamedAttrMap;
  return tf.engine().runKernel(NORM, { x, gamma, beta }, attrs) as tf.Tensor3D;
}

/** GEGLU's `h[..., :n] · GELU(h[..., n:])` for `h` of shape `[N, 2n]`, one dispatch on webgpu. */
export function fusedGeglu(h: tf.Tensor2D): tf.Tensor2D {
  if (h.shape[1] % 2 !== 0) throw new Error(`fusedGeglu: the last axis (${h.shape[1]}) must be even (value and gate halves)`);
  return tf.engine().runKernel(GEGLU, { h }) as tf.Tensor2D;
}
