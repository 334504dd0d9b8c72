/**
 * Backend selection. tfjs backends are process-global; every call here switches the one backend
 * of this test process, so the tests run in order.
 */
import * as tf from "@tensorflow/tfjs";
import { createRequire } from "node:module";
import * as os from "node:os";
import { afterEach, describe, expect, it } from "vitest";
import { AUTO_ORDER, formatBackendReport, useBackend } from "../src/backend/backend";
import { doctorReport } from "../src/backend/doctor";
import { expectClose } from "./helpers/tf";

const nodeRequire = createRequire(__filename);
const installed = (pkg: string): boolean => {
  try {
    nodeRequire.resolve(pkg);
    return true;
  } catch {
    return false;
  }
};

/** A tiny computation with a hand-computed answer, run on whatever backend is active. */
/** A 2×2 matMul on the active backend, read with `await data()` (WebGPU in Node has no dataSync). */
async function sanity(): Promise<void> {
  const t = tf.tidy(() => tf.matMul(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor2d([5, 6, 7, 8], [2, 2])));
  const out = await t.data();
  t.dispose();
  expectClose(out, [19, 22, 43, 50]);
}

afterEach(() => {
  delete process.env.HYPERNET_BACKEND;
});

describe("useBackend", () => {
  it("selects cpu and wasm explicitly and reports the device", async () => {
    const cpu = await useBackend("cpu", { quiet: true });
    expect(cpu).toMatchObject({ backend: "cpu", tfjsBackend: "cpu", requested: "cpu", requestedBy: "argument", skipped: [] });
    expect(cpu.device).toMatch(/pure JavaScript/);
    expect(tf.getBackend()).toBe("cpu");
    await sanity();

    const wasm = await useBackend("wasm", { quiet: true, threads: 2 });
    expect(wasm).toMatchObject({ backend: "wasm", tfjsBackend: "wasm", skipped: [] });
    expect(wasm.device).toMatch(/^CPU \(wasm (SIMD|without SIMD), \d+ threads?\)$/);
    expect(wasm.notes.join("\n")).toMatch(/Conv2DBackpropFilter/);
    // Node never gets the threaded wasm build, so the request for 2 threads is reported, not met.
    expect(wasm.notes.join("\n")).toMatch(/asked for 2 wasm threads, running 1/);
    expect(tf.getBackend()).toBe("wasm");
    await sanity();
  });

  it("auto takes the first usable backend in order and gives a reason for each skipped one", async () => {
    const r = await useBackend("auto", { quiet: true });
    const chosen = AUTO_ORDER.indexOf(r.backend);
    expect(r.skipped.map((s) => s.backend)).toEqual(AUTO_ORDER.slice(0, chosen));
    for (const s of r.skipped) expect(s.reason.length).toBeGreaterThan(20);
    const reason = (b: string): string => r.skipped.find((s) => s.backend === b)?.reason ?? "";
    if (!installed("@tensorflow/tfjs-node-gpu")) {
      expect(reason("tensorflow-gpu")).toMatch(
        /@tensorflow\/tfjs-node-gpu: not installed \(optional dependency; needs CUDA 11\.2 \+ cuDNN 8\.1/,
      );
    }
    if (!installed("@tensorflow/tfjs-node")) expect(reason("tensorflow")).toMatch(/@tensorflow\/tfjs-node: not installed/);
    if (chosen > AUTO_ORDER.indexOf("webgpu")) {
      // Either Dawn found no adapter (its own message is quoted) or only a slow software one.
      expect(reason("webgpu")).toMatch(/no WebGPU adapter \(Dawn: .+\)|software Vulkan adapter|not installed/);
    }
    if (
      !installed("@tensorflow/tfjs-node-gpu") &&
      !installed("@tensorflow/tfjs-node") &&
      /no WebGPU adapter|software/.test(reason("webgpu"))
    ) {
      expect(r.backend).toBe("wasm"); // this machine: no GPU, no libtensorflow
    }
    expect(formatBackendReport(r).split("\n")).toHaveLength(1 + r.skipped.length + r.notes.length);
    await sanity();
  });

  it("is safe to call repeatedly and does not leak tensors", async () => {
    const before = tf.memory().numTensors;
    const a = await useBackend("auto", { quiet: true });
    const b = await useBackend("auto", { quiet: true });
    const [c, d] = await Promise.all([useBackend("wasm", { quiet: true }), useBackend("auto", { quiet: true })]);
    expect(b.backend).toBe(a.backend);
    expect(b.skipped).toEqual(a.skipped);
    expect(c.backend).toBe("wasm");
    expect(d.backend).toBe(a.backend);
    expect(c.notes[0]).toMatch(/already installed/);
    expect(tf.memory().numTensors).toBe(before);
    await sanity();
  });

  it("HYPERNET_BACKEND overrides the argument", async () => {
    process.env.HYPERNET_BACKEND = "CPU";
    const r = await useBackend("wasm", { quiet: true });
    expect(r).toMatchObject({ backend: "cpu", requested: "cpu", requestedBy: "HYPERNET_BACKEND" });
    expect(tf.getBackend()).toBe("cpu");
    expect(formatBackendReport(r)).toMatch(/HYPERNET_BACKEND=cpu/);
  });

  it("rejects unknown names clearly, from the argument or the environment", async () => {
    await expect(useBackend("webgl" as never, { quiet: true })).rejects.toThrow(
      'Unknown backend "webgl" (from useBackend()). Choose one of: auto, tensorflow-gpu, tensorflow, webgpu, wasm, cpu.',
    );
    process.env.HYPERNET_BACKEND = "cuda";
    await expect(useBackend("auto", { quiet: true })).rejects.toThrow(
      /Unknown backend "cuda" \(from the HYPERNET_BACKEND environment variable\)/,
    );
  });

  it("an explicit backend that cannot run throws with the reason instead of falling back", async () => {
    if (!installed("@tensorflow/tfjs-node-gpu")) {
      await expect(useBackend("tensorflow-gpu", { quiet: true })).rejects.toThrow(/Backend "tensorflow-gpu" .*not usable: .*not installed/);
    }
    let webgpu: Error | undefined;
    try {
      const r = await useBackend("webgpu", { quiet: true });
      expect(r.backend).toBe("webgpu"); // a machine with a working Vulkan adapter
      await sanity();
    } catch (e) {
      webgpu = e as Error;
    }
    if (webgpu) {
      expect(webgpu.message).toMatch(/Backend "webgpu" .*not usable: /);
      expect(webgpu.message).toMatch(/environment\/README\.md/);
    }
  });
});

describe("doctorReport", () => {
  it("reports backend, versions, platform, CPUs and memory", async () => {
    const report = await doctorReport("cpu");
    const sharp = nodeRequire("sharp") as { versions: { sharp: string; vips: string } };
    expect(report).toMatch(/^tfjs backend: cpu — CPU \(pure JavaScript\)$/m);
    expect(report).toContain(`node ${process.version}`);
    expect(report).toContain(`tfjs-core (loaded) ${tf.version_core}`);
    expect(report).toContain(`@tensorflow/tfjs-backend-wasm ${tf.version_core}`);
    expect(report).toContain(`sharp ${sharp.versions.sharp} (libvips ${sharp.versions.vips})`);
    expect(report).toMatch(/@tensorflow\/tfjs-node-gpu (not installed|\d+\.\d+\.\d+)/);
    expect(report).toMatch(new RegExp(`^cpu: ${os.cpus().length} × `, "m"));
    expect(report).toMatch(/^memory: \d+\.\d GiB total/m);
  });
});
