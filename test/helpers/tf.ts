/** Test helpers: backend setup, tensor comparison and leak checks. */
import * as tf from "@tensorflow/tfjs";
import { expect } from "vitest";

let ready: Promise<void> | undefined;

/**
 * Use the backend named by HYPERNET_TEST_BACKEND: "wasm" (the default: what users get on a CPU
 * machine, with this project's kernel overrides) or "cpu" (the pure-JS reference, ~15× slower).
 */
export function setupBackend(): Promise<void> {
  ready ??= (async () => {
    const name = process.env.HYPERNET_TEST_BACKEND ?? "wasm";
    if (name !== "cpu" && name !== "wasm") throw new Error(`HYPERNET_TEST_BACKEND=${name}: tests run on cpu or wasm`);
    // The project's own backend switch: on wasm it also installs the kernel overrides.
    const { useBackend } = await import("../../src/backend/backend");
    await useBackend(name, { quiet: true });
  })();
  return ready;
}

/** Assert two arrays are elementwise close: |a − b| ≤ atol + rtol·|b|. Reports the worst index. */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 1e-5, rtol = 0): void {
  expect(actual.length).toBe(expected.length);
  let worst = -1;
  let worstErr = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i]! - expected[i]!) - rtol * Math.abs(expected[i]!);
    if (!(err <= atol) && (worst < 0 || err > worstErr || Number.isNaN(err))) {
      worst = i;
      worstErr = err;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `arrays differ at index ${worst}: got ${actual[worst]}, expected ${expected[worst]} (excess error ${worstErr}, atol ${atol})`,
    );
  }
}

/** Assert a tfjs tensor is close to expected values (and, when given, has the expected shape). */
export function expectTensorClose(actual: tf.Tensor, expected: ArrayLike<number>, atol = 1e-5, shape?: number[]): void {
  if (shape) expect(actual.shape).toEqual(shape);
  expectClose(actual.dataSync() as Float32Array, expected, atol);
}

/** Run `fn` and assert it leaves no new tensors alive. Returns fn's result. */
export async function expectNoLeak<T>(fn: () => T | Promise<T>): Promise<T> {
  const before = tf.memory().numTensors;
  const out = await fn();
  const after = tf.memory().numTensors;
  expect(after, `tensors leaked: ${after - before}`).toBe(before);
  return out;
}

/** Path of a test fixture. */
export function fixture(name: string): string {
  return `${__dirname}/../fixtures/${name}`;
}
