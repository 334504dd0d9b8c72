/**
 * `npm run demo` — the main job. Until the embedded tiny base model and the trainer land, it walks
 * through the hypernetwork file workflow end to end on real files: create a network the way A1111's
 * "Create hypernetwork" does, save it as an A1111 `.pt`, read it back, convert it to safetensors,
 * and run it on example contexts at several multipliers. Everything goes to `out/demo/`.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { useBackend, formatBackendReport } from "../kernel-helpers/backend";
import { createHypernetwork } from "../hypernet/network";
import { fromNetwork, readHypernetworkFile, saveHypernetwork, writeHypernetworkFile, loadHypernetwork } from "../hypernet/file";
import { inspectFile } from "./main";

export interface DemoOptions {
  out: string;
}

/** Run the demo, printing each step; returns a summary object (also written as summary.json). */
export async function runDemo(opts: DemoOptions): Promise<Record<string, unknown>> {
  const report = await useBackend("auto", { quiet: true });
  console.log(formatBackendReport(report));
  fs.mkdirSync(opts.out, { recursive: true });
  const pt = path.join(opts.out, "demo-style.pt");
  const st = path.join(opts.out, "demo-style.safetensors");
  for (const f of [pt, st]) fs.rmSync(f, { force: true });

  const net = createHypernetwork({ name: "demo-style", dims: [768, 320, 640, 1280], layerStructure: [1, 2, 1], activation: "relu", layerNorm: false, seed: 1 });
  console.log(`created "${net.name}": dims ${net.dims.join(", ")}, ${net.parameterCount().toLocaleString("en-US")} parameters`);
  saveHypernetwork(net, pt);
  console.log(`saved ${pt} (A1111 layout)`);
  const info = inspectFile(pt);
  console.log(JSON.stringify(info, null, 2));
  writeHypernetworkFile(readHypernetworkFile(pt), st);
  console.log(`converted to ${st}`);

  const again = loadHypernetwork(st);
  const norms: Record<string, number> = {};
  tf.tidy(() => {
    const ctx = tf.randomNormal([1, 77, 768], 0, 1, "float32", 5);
    for (const m of [0, 0.5, 1, 2]) {
      const y = again.apply("k", ctx, { multiplier: m });
      norms[String(m)] = tf.norm(tf.sub(y, ctx)).dataSync()[0]!;
    }
  });
  console.log("how far the k-module moves a 77×768 context, by multiplier:", norms);
  const w0 = fromNetwork(net).weights.get(768)![0].get("linear.0.weight")!.data;
  const w1 = fromNetwork(again).weights.get(768)![0].get("linear.0.weight")!.data;
  const same = w0.every((v, i) => v === w1[i]);
  net.dispose();
  again.dispose();
  const summary = { backend: report.backend, file: pt, inspect: info, contextShiftByMultiplier: norms, roundTripExact: same };
  fs.writeFileSync(path.join(opts.out, "summary.json"), JSON.stringify(summary, null, 2));
  console.log(`summary written to ${path.join(opts.out, "summary.json")}`);
  return summary;
}
