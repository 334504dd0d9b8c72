/**
 * The fused WebGPU kernels checked on the device at hand, for the GPU check: each kernel's output
 * and gradients against the plain tfjs composite it replaces, on the same backend, at the model's
 * shapes, plus how long each takes (median of `--repeat` runs after one warm-up, read-back
 * included). The tests check the kernels on lavapipe; this checks that a real driver compiles and
 * runs them the same way (workgroup memory, private arrays, barriers) and what they cost there.
 *
 *     node bench/webgpu-kernel-check.js [--sd] [--repeat 3]
 *
 * `--sd`: SD 1.5's shapes (attention with 8 heads of 40 over 1,024 tokens and to 77 text tokens,
 * 8 heads of 160 over 64 tokens, and the fused kernel alone at 4,096 tokens, whose composite would
 * not fit WebGPU's 128 MiB buffers; GroupNorm over 4,096 × 320; GEGLU 4,096 × 2,560; AdamW over
 * 1M values). Without it, small shapes that lavapipe runs in seconds. One JSON line per case
 * (`case: "kernel_check"`); exit status 2 when any case is outside its tolerance.
 */
import * as tf from "@tensorflow/tfjs";
import { useBackend } from "../src/backend/backend";
import { adamwScalars, fusedAdamW } from "../src/backend/webgpu-adamw";
import { fusedAttention } from "../src/backend/webgpu-attention";
import { fusedGeglu, fusedGroupNorm, useFusedKernels } from "../src/backend/webgpu-fused";
import { gelu, silu } from "../src/nn/layers";

const sd = process.argv.includes("--sd");
const ri = process.argv.indexOf("--repeat");
const repeat = ri > 0 ? Math.max(1, Number(process.argv[ri + 1]) || 3) : 3;

/** Deterministic values of amplitude about `amp`. */
function values(shape: number[], seed: number, amp = 1): tf.Tensor {
  const n = shape.reduce((p, v) => p * v, 1);
  return tf.tidy(() => tf.mul(tf.sin(tf.add(tf.mul(tf.range(0, n), 0.731), seed)), amp).reshape(shape));
}

/** Output and input gradients of Σ w·f(inputs) (w fixed), read back; tensors disposed. */
async function valueAndGrads(f: (...xs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[], grads: boolean): Promise<Float32Array[]> {
  const out = tf.tidy(() => f(...inputs));
  const w = values(out.shape, 9);
  const gs = grads ? tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(f(...xs), w)))(inputs) : [];
  const r = await Promise.all([out, ...gs].map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([out, w, ...gs]);
  return r;
}

/** Median ms of `repeat` runs of `fn` (after one warm-up), each until its result is read back. */
async function timeIt(fn: () => tf.Tensor | tf.Tensor[]): Promise<number> {
  const once = async (): Promise<number> => {
    const t0 = performance.now();
    const out = tf.tidy(fn); // intermediates (and outputs a caller does not return) freed
    const list = Array.isArray(out) ? out : [out];
    const s = tf.tidy(() => tf.addN(list.map((t) => tf.sum(t))));
    await s.data();
    tf.dispose([s, ...list]);
    return performance.now() - t0;
  };
  await once();
  const ts: number[] = [];
  for (let i = 0; i < repeat; i++) ts.push(await once());
  return Math.round(ts.sort((a, b) => a - b)[Math.floor(ts.length / 2)]! * 100) / 100;
}

/** Largest |a − b| per output, relative to the largest |b| (at least 1). */
function errors(fused: Float32Array[], ref: Float32Array[]): number[] {
  return fused.map((f, i) => {
    const r = ref[i]!;
    let big = 1;
    let worst = 0;
    for (let j = 0; j < r.length; j++) {
      big = Math.max(big, Math.abs(r[j]!));
      const d = Math.abs(f[j]! - r[j]!);
      worst = Number.isNaN(d) ? Number.POSITIVE_INFINITY : Math.max(worst, d);
    }
    return worst / big;
  });
}

let failures = 0;

/** Compare, time and report one case. `composite` undefined: time the fused kernel only. */
async function check(
  kernel: string,
  shape: Record<string, number[] | number>,
  inputs: tf.Tensor[],
  fused: (...xs: tf.Tensor[]) => tf.Tensor,
  composite: ((...xs: tf.Tensor[]) => tf.Tensor) | undefined,
  grads = true,
  tol = 1e-4,
): Promise<void> {
  const line: Record<string, unknown> = { case: "kernel_check", kernel, shape };
  try {
    if (composite) {
      const err = errors(await valueAndGrads(fused, inputs, grads), await valueAndGrads(composite, inputs, grads));
      line.rel_err = err.map((e) => Number(e.toExponential(2)));
      line.tol = tol;
      line.ok = err.every((e) => e <= tol);
      if (!line.ok) failures++;
      line.composite_ms = await timeIt(() => composite(...inputs));
    }
    line.fused_ms = await timeIt(() => fused(...inputs));
    if (grads) {
      const g = (f: (...xs: tf.Tensor[]) => tf.Tensor) => (): tf.Tensor[] => tf.grads((...xs: tf.Tensor[]) => tf.sum(f(...xs)))(inputs);
      line.fused_fwd_bwd_ms = await timeIt(g(fused));
      if (composite) line.composite_fwd_bwd_ms = await timeIt(g(composite));
    }
  } catch (e) {
    failures++;
    line.ok = false;
    line.error = (e as Error).message.split("\n")[0];
  }
  console.log(JSON.stringify(line));
  tf.dispose(inputs);
}

/** Multi-head attention with plain tfjs ops (head split, QKᵀ·scale, softmax, ·V, merge). */
function attentionComposite(heads: number, scale: number) {
  return (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): tf.Tensor => {
    const [b, n, inner] = q.shape as [number, number, number];
    const t = k.shape[1]!;
    const d = inner / heads;
    const split = (x: tf.Tensor, len: number): tf.Tensor => x.reshape([b, len, heads, d]).transpose([0, 2, 1, 3]);
    const p = tf.softmax(tf.mul(tf.matMul(split(q, n), split(k, t), false, true), scale));
    return tf.matMul(p, split(v, t)).transpose([0, 2, 1, 3]).reshape([b, n, inner]);
  };
}

async function attention(n: number, t: number, heads: number, d: number, withComposite: boolean): Promise<void> {
  const scale = 1 / Math.sqrt(d);
  const ins = [values([1, n, heads * d], 1, 2), values([1, t, heads * d], 2, 2), values([1, t, heads * d], 3)];
  await check(
    "attention",
    { q: [1, n, heads * d], kv: [1, t, heads * d], heads },
    ins,
    (q, k, v) => fusedAttention(q as tf.Tensor3D, k as tf.Tensor3D, v as tf.Tensor3D, heads, scale),
    withComposite ? attentionComposite(heads, scale) : undefined,
  );
}

function normComposite(groups: number, act: boolean) {
  return (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor): tf.Tensor => {
    const [b, s, c] = x.shape as [number, number, number];
    const { mean, variance } = tf.moments(x.reshape([b, s, groups, c / groups]), [1, 3], true);
    const xh = tf.div(tf.sub(x.reshape([b, s, groups, c / groups]), mean), tf.sqrt(tf.add(variance, 1e-5))).reshape([b, s, c]);
    const y = tf.add(tf.mul(xh, gamma), beta);
    return act ? silu(y) : y;
  };
}

async function main(): Promise<void> {
  const report = await useBackend("webgpu", { quiet: true });
  useFusedKernels();
  console.log(JSON.stringify({ case: "kernel_check_device", device: report.device, sd }));
  if (sd) {
    await attention(1024, 1024, 8, 40, true);
    await attention(1024, 77, 8, 40, true);
    await attention(64, 64, 8, 160, true);
    await attention(4096, 4096, 8, 40, false);
    await attention(4096, 77, 8, 40, false);
  } else {
    await attention(256, 256, 2, 16, true);
    await attention(64, 77, 2, 40, true);
  }
  const [s, c, g] = sd ? [4096, 320, 32] : [256, 64, 32];
  await check(
    "groupnorm_silu",
    { x: [1, s, c], groups: g },
    [values([1, s, c], 4, 3), values([c], 5), values([c], 6)],
    (x, ga, be) => fusedGroupNorm(x as tf.Tensor3D, ga!, be!, g, 1e-5, true),
    normComposite(g, true),
  );
  const [rows, w] = sd ? [4096, 2560] : [256, 256];
  await check(
    "geglu",
    { h: [rows, w] },
    [values([rows, w], 7, 2)],
    (h) => fusedGeglu(h as tf.Tensor2D),
    (h) => {
      const [a, b] = tf.split(h, 2, 1);
      return tf.mul(a!, gelu(b!));
    },
  );
  const n = sd ? 1 << 20 : 4096;
  const o = {
    lr: 1e-3,
    weightDecay: 0.01,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    bc2Sqrt: Math.sqrt(1 - 0.999 ** 3),
    stepSize: 1e-3 / (1 - 0.9 ** 3),
  };
  const sc = adamwScalars(o);
  await check(
    "adamw_param",
    { n },
    [values([n], 1), values([n], 2, 0.1), tf.abs(values([n], 3, 0.01)), values([n], 4)],
    (p, m, v, gr) => fusedAdamW(p!, m!, v!, gr!, sc)[0]!,
    (p, m, v, gr) => {
      const m2 = tf.add(tf.mul(m!, o.beta1), tf.mul(gr!, 1 - o.beta1));
      const v2 = tf.add(tf.mul(v!, o.beta2), tf.mul(tf.mul(gr!, gr!), 1 - o.beta2));
      const denom = tf.add(tf.div(tf.sqrt(v2), o.bc2Sqrt), o.eps);
      return tf.sub(tf.mul(p!, 1 - o.lr * o.weightDecay), tf.mul(tf.div(m2, denom), o.stepSize));
    },
    false,
    1e-6,
  );
  sc.dispose();
  if (failures > 0) {
    console.error(`webgpu-kernel-check: ${failures} case(s) outside tolerance or failed (see the JSON lines)`);
    process.exit(2);
  }
}

main().catch((e: unknown) => {
  console.error(`webgpu-kernel-check: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
