/**
 * Shared setup for the WebGPU tests (Dawn via the optional `webgpu` package on the private Mesa
 * lavapipe that environment/setup-webgpu-cpu.sh unpacks into .cache/lavapipe). Each test file asks
 * once whether it can run here; where it cannot, it is told why, the reason is printed, and the
 * file's WebGPU describe blocks skip via `describe.runIf(skipReason === null)`.
 */
import { createRequire } from "node:module";
import { findPrivateLavapipe } from "../../src/backend/backend";

/** True when the optional `webgpu` package (Dawn for Node) can be resolved from the tests. */
function webgpuPackageInstalled(): boolean {
  try {
    createRequire(__filename).resolve("webgpu");
    return true;
  } catch {
    return false;
  }
}

/** Whether the WebGPU tests can run, and the private driver they use. */
export interface WebgpuSetup {
  /** Why the WebGPU tests skip here, or null when they run. */
  skipReason: string | null;
  /** Path of the private lavapipe ICD file, or null when it is not unpacked. */
  icd: string | null;
}

/**
 * Checks for the `webgpu` package and the private lavapipe; when either is missing, warns
 * `"<label> skipped: <reason>"` so a skipped run says why (label e.g. "webgpu.test.ts").
 */
export function webgpuSetup(label: string): WebgpuSetup {
  const icd = findPrivateLavapipe();
  const skipReason = !webgpuPackageInstalled()
    ? "the optional `webgpu` package is not installed"
    : icd === null
      ? "no private lavapipe in .cache/lavapipe (run environment/setup-webgpu-cpu.sh)"
      : null;
  if (skipReason) console.warn(`${label} skipped: ${skipReason}`);
  return { skipReason, icd };
}
