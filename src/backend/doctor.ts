/**
 * `hypernet doctor`: what this machine runs tfjs on, and the versions that matter when something
 * goes wrong (backend packages, Node, sharp's libvips, CPU and memory).
 */
import * as tf from "@tensorflow/tfjs";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as os from "node:os";
import * as path from "node:path";
import { type BackendChoice, currentBackendReport, formatBackendReport, useBackend } from "./backend";

const nodeRequire = createRequire(__filename);

/**
 * Version of an installed package, read from its package.json found along Node's module search
 * paths (some packages do not export `./package.json`, so it cannot be required directly).
 */
function packageVersion(name: string): string | undefined {
  for (const dir of nodeRequire.resolve.paths(name) ?? []) {
    const file = path.join(dir, name, "package.json");
    if (fs.existsSync(file)) {
      try {
        return (JSON.parse(fs.readFileSync(file, "utf8")) as { version?: string }).version;
      } catch {
        return "unreadable package.json";
      }
    }
  }
  return undefined;
}

/** sharp's own version and its libvips, from the loaded library (`sharp.versions`). */
function sharpVersion(): string {
  try {
    const sharp = nodeRequire("sharp") as { versions?: { sharp?: string; vips?: string } };
    return `${sharp.versions?.sharp ?? "?"} (libvips ${sharp.versions?.vips ?? "?"})`;
  } catch (e) {
    return `not loadable: ${String(e instanceof Error ? e.message : e).split("\n")[0]}`;
  }
}

const gib = (bytes: number): string => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

/**
 * A multi-line report: the active backend (selecting one with `auto`, or `choice`, if none was
 * selected yet; HYPERNET_BACKEND applies), the skipped backends with reasons, package versions,
 * platform, CPUs and memory. Used by the `hypernet doctor` command and from notebooks.
 */
export async function doctorReport(choice?: BackendChoice): Promise<string> {
  const existing = choice === undefined ? currentBackendReport() : undefined;
  const report = existing ?? (await useBackend(choice ?? "auto", { quiet: true }));
  const packages = [
    "@tensorflow/tfjs",
    "@tensorflow/tfjs-core",
    "@tensorflow/tfjs-backend-cpu",
    "@tensorflow/tfjs-backend-wasm",
    "@tensorflow/tfjs-backend-webgpu",
    "@tensorflow/tfjs-node-gpu",
    "@tensorflow/tfjs-node",
    "webgpu",
  ];
  const cpus = os.cpus();
  const lines = [
    "hypernet-lab doctor",
    "",
    formatBackendReport(report),
    "",
    "versions:",
    `  node ${process.version} (v8 ${process.versions.v8})`,
    `  tfjs-core (loaded) ${tf.version_core}`,
    ...packages.map((p) => `  ${p} ${packageVersion(p) ?? "not installed"}`),
    `  sharp ${sharpVersion()}`,
    "",
    `platform: ${process.platform} ${process.arch}, kernel ${os.release()}`,
    `cpu: ${cpus.length} × ${cpus[0]?.model.trim() ?? "unknown"}`,
    `memory: ${gib(os.totalmem())} total, ${gib(os.freemem())} free`,
  ];
  return lines.join("\n");
}
