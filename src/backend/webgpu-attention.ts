/**
 * Fused multi-head attention for tfjs's `webgpu` backend: `softmax(Q Kᵀ · scale) V` per head in
 * one dispatch, reading q `[B, N, H·D]`, k and v `[B, T, H·D]` as the projections produce them
 * (no head split/merge transposes, no score matrix in memory), and an analytic backward in four
 * dispatches (row statistics, ∂Q, ∂K, ∂V) that recomputes the scores instead of storing them.
 *
 * The scheme is FlashAttention's: a workgroup owns 64 rows of one (batch, head) and walks the
 * other sequence in tiles staged in workgroup memory, each thread keeping its row's running
 * maximum, normaliser and output in registers. Backward (with P = softmax(S), O = P V):
 *
 *   Lᵢ = log Σⱼ exp(Sᵢⱼ),  Δᵢ = Σ_c dOᵢc·Oᵢc,  Pᵢⱼ = exp(Sᵢⱼ − Lᵢ),  dSᵢⱼ = Pᵢⱼ·(dOᵢ·Vⱼ − Δᵢ)
 *   ∂Qᵢ = scale·Σⱼ dSᵢⱼ Kⱼ,   ∂Kⱼ = scale·Σᵢ dSᵢⱼ Qᵢ,   ∂Vⱼ = Σᵢ Pᵢⱼ dOᵢ
 *
 * Registered by `useFusedKernels` (src/backend/webgpu-fused.ts); `attend` in src/unet/attention.ts
 * takes this path while {@link fusedAttentionActive}. `HYPERNET_WEBGPU_FUSED_ATTENTION=0` keeps the
 * composite attention (for comparisons) while the other fused kernels stay on.
 */
import * as tf from "@tensorflow/tfjs";

const ATTN = "HnFusedAttention";
const ATTN_STATS = "HnFusedAttentionStats";
const ATTN_GRAD_Q = "HnFusedAttentionGradQ";
const ATTN_GRAD_K = "HnFusedAttentionGradK";
const ATTN_GRAD_V = "HnFusedAttentionGradV";

/** Rows (threads) per workgroup. */
const WG = 64;
/** WebGPU's default `maxComputeWorkgroupStorageSize`, in floats (16 KiB). */
const SHARED_FLOATS = 4096;

/** The slice of a tfjs WebGPU program object that `runWebGPUProgram` reads. */
interface Program {
  variableNames: string[];
  outputShape: number[];
  uniforms: string;
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

/** Attributes of every attention kernel. */
interface AttnAttrs {
  heads: number;
  scale: number;
}

/** Sizes of one call: batch, query rows, key rows, heads, head width, tile rows. */
interface Dims {
  b: number;
  n: number;
  t: number;
  h: number;
  d: number;
  tile: number;
}

/**
 * Key/query rows per shared-memory tile: two `[tile, D]` blocks and two `[tile]` vectors must fit
 * in 16 KiB of workgroup memory.
 */
export function attentionTileRows(d: number): number {
  return Math.min(WG, Math.floor(SHARED_FLOATS / (2 * d + 2)));
}

function dims(q: tf.TensorInfo, k: tf.TensorInfo, a: AttnAttrs): Dims {
  const [b, n, inner] = q.shape as [number, number, number];
  const d = inner / a.heads;
  return { b, n, t: k.shape[1]!, h: a.heads, d, tile: attentionTileRows(d) };
}

/** Spread `groups` workgroups over x and y (each dimension holds at most 65,535). */
function grid(groups: number): [number, number, number] {
  const x = Math.min(groups, 65535);
  return [x, Math.ceil(groups / x), 1];
}

const UNIFORMS = "N : i32, T : i32, H : i32, BH : i32, scale : f32,";

function uniformData(m: Dims, a: AttnAttrs): { type: string; data: number[] }[] {
  return [
    { type: "int32", data: [m.n] },
    { type: "int32", data: [m.t] },
    { type: "int32", data: [m.h] },
    { type: "int32", data: [m.b * m.h] },
    { type: "float32", data: [a.scale] },
  ];
}

/**
 * WGSL shared by the programs. `R` is the length of the sequence whose rows the threads own (N for
 * the forward, statistics and ∂Q; T for ∂K and ∂V). `own()` says which (b, h, row) this thread
 * has; `rowAt(b, h, r, len)` is the flat offset of row r's head slice in a `[B, len, H·D]` tensor.
 */
function common(m: Dims, owned: "N" | "T"): string {
  return `
  const D = ${m.d};
  const TILE = ${m.tile};
  struct Own { b : i32, h : i32, r : i32, valid : bool, };
  fn own(index : i32) -> Own {
    let blocks = (uniforms.${owned} + ${WG - 1}) / ${WG};
    let wg = index / ${WG};
    let bh = wg / blocks;
    let r = (wg % blocks) * ${WG} + i32(localIndex);
    let valid = bh < uniforms.BH && r < uniforms.${owned};
    let cbh = min(bh, uniforms.BH - 1);
    return Own(cbh / uniforms.H, cbh % uniforms.H, min(r, uniforms.${owned} - 1), valid);
  }
  fn rowAt(b : i32, h : i32, r : i32, len : i32) -> i32 {
    return (b * len + r) * uniforms.H * D + h * D;
  }
  `;
}

/** Workgroup count: one workgroup per 64 owned rows of each (batch, head). */
function dispatchFor(m: Dims, rows: number): [number, number, number] {
  return grid(m.b * m.h * Math.ceil(rows / WG));
}

function program(m: Dims, name: string, variableNames: string[], outputShape: number[], rows: number, code: string): Program {
  return {
    variableNames,
    outputShape,
    uniforms: UNIFORMS,
    workgroupSize: [WG, 1, 1],
    dispatchLayout: { x: outputShape.map((_, i) => i) },
    dispatch: dispatchFor(m, rows),
    shaderKey: `hn_attn_${name}_${m.d}_${m.tile}`,
    getUserCode: () => code,
  };
}

/**
 * The key-side tile loop of the row-owning programs (forward, statistics, ∂Q): stage `TILE` rows
 * of k (and of v when `withV`) in workgroup memory, then run `body` for each staged key `jj` with
 * `s` = this row's score against it.
 */
function keyLoop(withV: boolean, body: string): string {
  return `
  for (var j0 = 0; j0 < uniforms.T; j0 = j0 + TILE) {
    for (var e = i32(localIndex); e < TILE * D; e = e + ${WG}) {
      let j = min(j0 + e / D, uniforms.T - 1);
      let src = rowAt(o.b, o.h, j, uniforms.T) + e % D;
      kt[e] = k[src];
      ${withV ? "vt[e] = v[src];" : ""}
    }
    workgroupBarrier();
    let cnt = min(TILE, uniforms.T - j0);
    for (var jj = 0; jj < cnt; jj = jj + 1) {
      var s = 0.0;
      for (var c = 0; c < D; c = c + 1) { s = s + qr[c] * kt[jj * D + c]; }
      ${body}
    }
    workgroupBarrier();
  }`;
}

/** This row's query, pre-scaled (as the composite path scales q before QKᵀ). */
const LOAD_Q = `
    let qo = rowAt(o.b, o.h, o.r, uniforms.N);
    var qr : array<f32, D>;
    for (var c = 0; c < D; c = c + 1) { qr[c] = q[qo + c] * uniforms.scale; }`;

/** Online softmax: on a new maximum, rescale the normaliser (and `acc` when `withAcc`). */
function onlineMax(withAcc: boolean): string {
  return `
      if (s > mx) {
        let corr = exp(mx - s);
        l = l * corr;
        ${withAcc ? "for (var c = 0; c < D; c = c + 1) { acc[c] = acc[c] * corr; }" : ""}
        mx = s;
      }
      let p = exp(s - mx);
      l = l + p;`;
}

/** Forward: O `[B, N, H·D]`, one thread per query row. */
function forwardProgram(m: Dims): Program {
  const code = `${common(m, "N")}
  var<workgroup> kt : array<f32, ${m.tile * m.d}>;
  var<workgroup> vt : array<f32, ${m.tile * m.d}>;
  fn main(index : i32) {
    let o = own(index);
    ${LOAD_Q}
    var acc : array<f32, D>;
    var mx = -3.0e38;
    var l = 0.0;
    ${keyLoop(
      true,
      `${onlineMax(true)}
      for (var c = 0; c < D; c = c + 1) { acc[c] = acc[c] + p * vt[jj * D + c]; }`,
    )}
    if (o.valid) {
      for (var c = 0; c < D; c = c + 1) { setOutputAtIndex(qo + c, acc[c] / l); }
    }
  }`;
  return program(m, "fwd", ["q", "k", "v"], [m.b, m.n, m.h * m.d], m.n, code);
}

/** Row statistics for the backward: `[B·H·N, 2]` = (Lᵢ = log-sum-exp of the scores, Δᵢ = dOᵢ·Oᵢ). */
function statsProgram(m: Dims): Program {
  const code = `${common(m, "N")}
  var<workgroup> kt : array<f32, ${m.tile * m.d}>;
  fn main(index : i32) {
    let o = own(index);
    ${LOAD_Q}
    var mx = -3.0e38;
    var l = 0.0;
    ${keyLoop(false, onlineMax(false))}
    var delta = 0.0;
    for (var c = 0; c < D; c = c + 1) { delta = delta + dy[qo + c] * res[qo + c]; }
    if (o.valid) {
      let row = (o.b * uniforms.H + o.h) * uniforms.N + o.r;
      setOutputAtIndex(row * 2, mx + log(l));
      setOutputAtIndex(row * 2 + 1, delta);
    }
  }`;
  return program(m, "stats", ["q", "k", "res", "dy"], [m.b * m.h * m.n, 2], m.n, code);
}

/** ∂Q `[B, N, H·D]`, one thread per query row. */
function gradQProgram(m: Dims): Program {
  const code = `${common(m, "N")}
  var<workgroup> kt : array<f32, ${m.tile * m.d}>;
  var<workgroup> vt : array<f32, ${m.tile * m.d}>;
  fn main(index : i32) {
    let o = own(index);
    ${LOAD_Q}
    var dor : array<f32, D>;
    for (var c = 0; c < D; c = c + 1) { dor[c] = dy[qo + c]; }
    let row = (o.b * uniforms.H + o.h) * uniforms.N + o.r;
    let lse = stats[row * 2];
    let delta = stats[row * 2 + 1];
    var acc : array<f32, D>;
    ${keyLoop(
      true,
      `let p = exp(s - lse);
      var dp = 0.0;
      for (var c = 0; c < D; c = c + 1) { dp = dp + dor[c] * vt[jj * D + c]; }
      let ds = p * (dp - delta);
      for (var c = 0; c < D; c = c + 1) { acc[c] = acc[c] + ds * kt[jj * D + c]; }`,
    )}
    if (o.valid) {
      for (var c = 0; c < D; c = c + 1) { setOutputAtIndex(qo + c, acc[c] * uniforms.scale); }
    }
  }`;
  return program(m, "dq", ["q", "k", "v", "dy", "stats"], [m.b, m.n, m.h * m.d], m.n, code);
}

/**
 * ∂K (`which` = "k") or ∂V ("v"), `[B, T, H·D]`, one thread per key row: the query side is staged
 * in tiles (pre-scaled q, dO, L and Δ of `TILE` queries).
 */
function gradKVProgram(m: Dims, which: "k" | "v"): Program {
  const isK = which === "k";
  const code = `${common(m, "T")}
  var<workgroup> qt : array<f32, ${m.tile * m.d}>;
  var<workgroup> dt : array<f32, ${m.tile * m.d}>;
  var<workgroup> lt : array<f32, ${m.tile}>;
  var<workgroup> et : array<f32, ${m.tile}>;
  fn main(index : i32) {
    let o = own(index);
    let ko = rowAt(o.b, o.h, o.r, uniforms.T);
    var kr : array<f32, D>;
    for (var c = 0; c < D; c = c + 1) { kr[c] = k[ko + c]; }
    ${isK ? "var vr : array<f32, D>;\n    for (var c = 0; c < D; c = c + 1) { vr[c] = v[ko + c]; }" : ""}
    var acc : array<f32, D>;
    for (var i0 = 0; i0 < uniforms.N; i0 = i0 + TILE) {
      for (var e = i32(localIndex); e < TILE * D; e = e + ${WG}) {
        let src = rowAt(o.b, o.h, min(i0 + e / D, uniforms.N - 1), uniforms.N) + e % D;
        qt[e] = q[src] * uniforms.scale;
        dt[e] = dy[src];
      }
      for (var e = i32(localIndex); e < TILE; e = e + ${WG}) {
        let row = (o.b * uniforms.H + o.h) * uniforms.N + min(i0 + e, uniforms.N - 1);
        lt[e] = stats[row * 2];
        et[e] = stats[row * 2 + 1];
      }
      workgroupBarrier();
      let cnt = min(TILE, uniforms.N - i0);
      for (var ii = 0; ii < cnt; ii = ii + 1) {
        var s = 0.0;
        for (var c = 0; c < D; c = c + 1) { s = s + qt[ii * D + c] * kr[c]; }
        let p = exp(s - lt[ii]);
        ${
          isK
            ? `var dp = 0.0;
        for (var c = 0; c < D; c = c + 1) { dp = dp + dt[ii * D + c] * vr[c]; }
        let ds = p * (dp - et[ii]);
        for (var c = 0; c < D; c = c + 1) { acc[c] = acc[c] + ds * qt[ii * D + c]; }`
            : "for (var c = 0; c < D; c = c + 1) { acc[c] = acc[c] + p * dt[ii * D + c]; }"
        }
      }
      workgroupBarrier();
    }
    if (o.valid) {
      for (var c = 0; c < D; c = c + 1) { setOutputAtIndex(ko + c, acc[c]); }
    }
  }`;
  const names = isK ? ["q", "k", "v", "dy", "stats"] : ["q", "k", "dy", "stats"];
  return program(m, `d${which}`, names, [m.b, m.t, m.h * m.d], m.t, code);
}

function attrsOf(attrs: unknown): AttnAttrs {
  const a = attrs as AttnAttrs;
  return { heads: a.heads, scale: a.scale };
}

function run(backend: unknown, p: Program, inputs: tf.TensorInfo[], uniforms: { type: string; data: number[] }[]): tf.TensorInfo {
  return (backend as WebgpuBackendLike).runWebGPUProgram(p, inputs, "float32", uniforms);
}

let installed = false;

/**
 * Register the fused attention kernels and their gradient for `webgpu` (idempotent; called by
 * `useFusedKernels`). `HYPERNET_WEBGPU_FUSED_ATTENTION=0` leaves them out.
 */
export function registerFusedAttention(): void {
  if (installed) return;
  const env = process.env.HYPERNET_WEBGPU_FUSED_ATTENTION?.trim().toLowerCase();
  if (env === "0" || env === "off" || env === "false") return;
  type Make = (m: Dims) => Program;
  const kernels: [string, Make, string[]][] = [
    [ATTN, forwardProgram, ["q", "k", "v"]],
    [ATTN_STATS, statsProgram, ["q", "k", "res", "dy"]],
    [ATTN_GRAD_Q, gradQProgram, ["q", "k", "v", "dy", "stats"]],
    [ATTN_GRAD_K, (m) => gradKVProgram(m, "k"), ["q", "k", "v", "dy", "stats"]],
    [ATTN_GRAD_V, (m) => gradKVProgram(m, "v"), ["q", "k", "dy", "stats"]],
  ];
  for (const [kernelName, make, names] of kernels) {
    tf.registerKernel({
      kernelName,
      backendName: "webgpu",
      kernelFunc: ({ inputs, backend, attrs }) => {
        const a = attrsOf(attrs);
        const m = dims(inputs.q!, inputs.k!, a);
        return run(
          backend,
          make(m),
          names.map((n) => inputs[n]!),
          uniformData(m, a),
        );
      },
    });
  }
  tf.registerGradient({
    kernelName: ATTN,
    inputsToSave: ["q", "k", "v"],
    outputsToSave: [true],
    gradFunc: (dy, saved, attrs) => {
      const [q, k, v, out] = saved as tf.Tensor[];
      const at = attrs as unknown as tf.NamedAttrMap;
      const e = tf.engine();
      const stats = e.runKernel(ATTN_STATS, { q: q!, k: k!, res: out!, dy: dy as tf.Tensor }, at) as tf.Tensor;
      const ins = { q: q!, k: k!, v: v!, dy: dy as tf.Tensor, stats };
      return {
        q: () => e.runKernel(ATTN_GRAD_Q, ins, at) as tf.Tensor,
        k: () => e.runKernel(ATTN_GRAD_K, ins, at) as tf.Tensor,
        v: () => e.runKernel(ATTN_GRAD_V, { q: q!, k: k!, dy: dy as tf.Tensor, stats }, at) as tf.Tensor,
      };
    },
  });
  installed = true;
}

/** Whether `attend` should take the fused path now (kernels registered, webgpu active). */
export function fusedAttentionActive(): boolean {
  return installed && tf.getBackend() === "webgpu";
}

/**
 * `concat_h softmax(Q_h K_hᵀ · scale) V_h` for q `[B, N, heads·D]`, k and v `[B, T, heads·D]`,
 * in one dispatch on webgpu (call only when {@link fusedAttentionActive}). Differentiable in q, k
 * and v. Head widths up to 2,047 fit the kernel's workgroup-memory tiles.
 */
export function fusedAttention(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, heads: number, scale: number): tf.Tensor3D {
  const [b, , inner] = q.shape;
  const where = `fusedAttention: q ${JSON.stringify(q.shape)}, k ${JSON.stringify(k.shape)}, v ${JSON.stringify(v.shape)}`;
  if (inner % heads !== 0) throw new Error(`${where}: the width ${inner} does not split into ${heads} heads`);
  if (k.shape[0] !== b || v.shape[0] !== b || k.shape[2] !== inner || v.shape[2] !== inner || v.shape[1] !== k.shape[1])
    throw new Error(`${where}: k and v must be [${b}, T, ${inner}] with the same T`);
  if (attentionTileRows(inner / heads) < 1)
    throw new Error(`${where}: head width ${inner / heads} is too wide for the kernel (at most 2,047)`);
  return tf.engine().runKernel(ATTN, { q, k, v }, { heads, scale } as unknown as tf.NamedAttrMap) as tf.Tensor3D;
}
