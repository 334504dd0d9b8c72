/**
 * `hypernet apply`: run a hypernetwork's modules on given contexts, so a user can compare this
 * implementation's numbers with another tool's (A1111, ComfyUI, a PyTorch script).
 *
 * For every tensor `x.D` in the input file (shape [..., D]) the output file gets `k.D` and `v.D`:
 * the outputs of dim D's key and value modules in inference mode, `x + mlp(x) · multiplier`.
 */
import * as tf from "@tensorflow/tfjs";
import type { HostTensor } from "../io/host-tensor";
import { SafetensorsFile, writeSafetensors } from "../io/safetensors";
import { loadHypernetwork } from "../hypernet/file";
import { useBackend } from "../backend/backend";

/** Apply `file`'s modules to every `x.D` in `input`; returns the names written to `output`. */
export async function applyToFile(file: string, input: string, output: string, opts: { multiplier?: number; overwrite?: boolean } = {}): Promise<string[]> {
  await useBackend("auto", { quiet: true });
  const net = loadHypernetwork(file);
  const src = SafetensorsFile.open(input);
  const out: Array<[string, HostTensor]> = [];
  try {
    const inputs = src.keys().filter((k) => /^x\.\d+$/.test(k));
    if (inputs.length === 0) throw new Error(`${input}: no tensors named x.<dim> (e.g. x.768 with shape [batch, tokens, 768])`);
    for (const key of inputs) {
      const dim = Number(key.slice(2));
      const x = src.read(key);
      if (x.shape[x.shape.length - 1] !== dim) throw new Error(`${input}: ${key} has shape [${x.shape.join(", ")}]; its last axis must be ${dim}`);
      const pair = net.pair(dim);
      if (!pair) throw new Error(`${file} has no module for dim ${dim} (it has ${net.dims.join(", ")})`);
      for (const [j, which] of [[0, "k"], [1, "v"]] as const) {
        const y = tf.tidy(() => pair[j].forward(tf.tensor(x.data, x.shape, "float32"), { multiplier: opts.multiplier ?? 1 }));
        out.push([`${which}.${dim}`, { dtype: "F32", shape: [...x.shape], data: (await y.data()) as Float32Array }]);
        y.dispose();
      }
    }
  } finally {
    src.close();
    net.dispose();
  }
  writeSafetensors(output, out, { source: file, multiplier: String(opts.multiplier ?? 1) }, { overwrite: opts.overwrite });
  return out.map(([k]) => k);
}
