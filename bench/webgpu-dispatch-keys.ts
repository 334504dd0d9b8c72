/**
 * Where the GPU dispatches of one bench-model training step go, on Dawn's null device: every
 * `runWebGPUProgram` call counted by its program's shader key (tfjs's own programs and this
 * project's fused kernels alike), most frequent first. A guide for the next fusion, not a timing.
 *
 *     npx ts-node --transpile-only bench/webgpu-dispatch-keys.ts [--top 30] [--size 16] [--batch 1]
 *
 * `HYPERNET_WEBGPU_FUSED=0` / `HYPERNET_WEBGPU_FUSED_ATTENTION=0` show the composite paths.
 */
import * as tf from "@tensorflow/tfjs";
import { installWebgpuLaunchPatches } from "../src/backend/webgpu-launch";
import { DEFAULT_CONFIG, buildModel, loadConfig, trainStepAsync } from "./harness";
import { useWebgpuNull } from "./webgpu-launches";

/** The value after `--name` on the command line, as a number, or `fallback`. */
function numArg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} takes a whole number ≥ 1, not ${process.argv[i + 1]}`);
  return v;
}

async function main(): Promise<void> {
  await useWebgpuNull();
  installWebgpuLaunchPatches();
  const { config, contextLen } = loadConfig(DEFAULT_CONFIG, 77);
  const m = buildModel(config, numArg("batch", 1), numArg("size", 16), contextLen);
  await trainStepAsync(m); // compiles the shaders; counted below is a second step
  const backend = tf.backend() as unknown as { runWebGPUProgram: (p: { shaderKey: string }, ...a: unknown[]) => unknown };
  const original = backend.runWebGPUProgram;
  const byKey = new Map<string, number>();
  backend.runWebGPUProgram = function (this: unknown, p: { shaderKey: string }, ...a: unknown[]): unknown {
    byKey.set(p.shaderKey, (byKey.get(p.shaderKey) ?? 0) + 1);
    return original.call(this, p, ...a);
  };
  try {
    await trainStepAsync(m);
  } finally {
    backend.runWebGPUProgram = original;
  }
  const total = [...byKey.values()].reduce((s, v) => s + v, 0);
  console.log(`training step: ${total} dispatches, ${byKey.size} shader keys`);
  for (const [key, n] of [...byKey.entries()].sort((a, b) => b[1] - a[1]).slice(0, numArg("top", 30)))
    console.log(String(n).padStart(6), key);
  m.dispose();
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
