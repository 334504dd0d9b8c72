/**
 * conv2d forward+backward on the wasm backend, stock kernels vs hypernet-lab's overrides.
 * Shape from reference/tfjs-on-this-machine.md §3 (b): x 1×64×64×128, W 3×3×128→128, 'same'.
 * Run: npx ts-node --transpile-only bench/wasm-conv.ts
 */
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { registerWasmKernelOverrides } from "../src/backend/wasm-kernels";

function median(fn: () => tf.Tensor[], runs = 7): number {
  tf.dispose(fn()); // warm-up
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const outs = fn();
    outs.forEach((t) => t.dataSync());
    times.push(performance.now() - t0);
    tf.dispose(outs);
  }
  return times.sort((a, b) => a - b)[runs >> 1]!;
}

async function main(): Promise<void> {
  tf.enableProdMode();
  await tf.setBackend("wasm");
  const x = tf.randomNormal([1, 64, 64, 128]) as tf.Tensor4D;
  const w = tf.randomNormal([3, 3, 128, 128]).mul(0.05) as tf.Tensor4D;
  const loss = (a: tf.Tensor, b: tf.Tensor): tf.Scalar =>
    tf
      .conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, "same")
      .square()
      .mean();
  const fwd = (): tf.Tensor[] => [tf.conv2d(x, w, 1, "same")];
  const dx = (): tf.Tensor[] => [tf.grad((a: tf.Tensor) => loss(a, w))(x)];
  const full = (): tf.Tensor[] => tf.grads(loss)([x, w]);
  const gflops = (ms: number, g: number): string => `${ms.toFixed(0)} ms (${(g / (ms / 1000)).toFixed(1)} GFLOP/s)`;

  console.log("stock wasm kernels");
  console.log("  forward           ", gflops(median(fwd), 1.208));
  console.log("  fwd + dx          ", gflops(median(dx), 2.416));
  try {
    median(full, 1);
    console.log("  fwd + dx + dW      ran (unexpected)");
  } catch (e) {
    console.log("  fwd + dx + dW      fails:", (e as Error).message.split("\n")[0]);
  }
  const installed = registerWasmKernelOverrides();
  console.log(`with overrides (${installed.join(", ")})`);
  console.log("  forward           ", gflops(median(fwd), 1.208));
  console.log("  fwd + dx          ", gflops(median(dx), 2.416));
  console.log("  fwd + dx + dW     ", gflops(median(full), 3.62));
  tf.dispose([x, w]);
}

void main();
