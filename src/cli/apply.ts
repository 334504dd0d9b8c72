/**
 * `hypernet apply`: run a hypernetwork's modules on given contexts, so a user can compare this
 * implementation's numbers with another tool's (A1111, ComfyUI, a PyTorch script).
 *
 * For every tensor `x.D` in the input file (shape [..., D]) the output file gets `k.D` and `v.D`:
 * the outputs of dim D's key and value modules in inference mode, `x + mlp(x) · multiplier`.
 *
 * Inputs are checked from the file's header before any data is read: a float dtype, at most
 * `MAX_INPUT_RANK` axes and `MAX_INPUT_VALUES` values, so a crafted input (say a tensor with 10,001
 * axes of size 1) gets an error naming the file and tensor instead of aborting the wasm backend.
 * The modules see every input as rows of D values ([values / D, D]); the outputs keep the input's shape.
 */
import * as tf from "@tensorflow/tfjs";
import type { DType, HostTensor } from "../io/host-tensor";
import { SafetensorsFile, writeSafetensors } from "../io/safetensors";
import { loadHypernetwork } from "../hypernet/file";
import { useBackend } from "../backend/backend";

/** Most axes an input tensor may have (contexts are [batch, tokens, D]; 8 leaves room for any layout). */
export const MAX_INPUT_RANK = 8;
/** Most values one input tensor may hold: 2^25 (128 MiB as float32, e.g. [64, 231, 2048]). */
export const MAX_INPUT_VALUES = 2 ** 25;
const FLOAT_DTYPES: ReadonlySet<DType> = new Set<DType>(["F64", "F32", "F16", "BF16"]);

/**
 * Refuse an input tensor whose header is out of reason for a context: not a float, too many axes,
 * too many values, or a last axis that is not `dim`. Checked before its data is read.
 */
function checkInput(input: string, key: string, dim: number, dtype: DType, shape: readonly number[]): void {
  const where = `${input}: tensor ${key}`;
  if (!FLOAT_DTYPES.has(dtype)) throw new Error(`${where} is ${dtype}; contexts must be floating point (F32, F16, BF16 or F64)`);
  if (shape.length > MAX_INPUT_RANK) {
    throw new Error(
      `${where} has ${shape.length.toLocaleString("en-US")} axes; at most ${MAX_INPUT_RANK} are accepted (a context is [batch, tokens, ${dim}]). Reshape it`,
    );
  }
  const values = shape.reduce((a, b) => a * b, 1);
  if (values > MAX_INPUT_VALUES) {
    throw new Error(
      `${where} has ${values.toLocaleString("en-US")} values (shape [${shape.join(", ")}]); at most ${MAX_INPUT_VALUES.toLocaleString("en-US")} are accepted. Split it into smaller tensors`,
    );
  }
  if (shape.length === 0 || shape[shape.length - 1] !== dim)
    throw new Error(`${where} has shape [${shape.join(", ")}]; its last axis must be ${dim}`);
}

/** Apply `file`'s modules to every `x.D` in `input`; returns the names written to `output`. */
export async function applyToFile(
  file: string,
  input: string,
  output: string,
  opts: { multiplier?: number; overwrite?: boolean } = {},
): Promise<string[]> {
  await useBackend("auto", { quiet: true });
  const net = loadHypernetwork(file);
  const src = SafetensorsFile.open(input);
  const out: Array<[string, HostTensor]> = [];
  try {
    const inputs = src.keys().filter((k) => /^x\.\d+$/.test(k));
    if (inputs.length === 0) throw new Error(`${input}: no tensors named x.<dim> (e.g. x.768 with shape [batch, tokens, 768])`);
    for (const key of inputs) {
      const dim = Number(key.slice(2));
      const entry = src.entries.get(key)!;
      checkInput(input, key, dim, entry.dtype, entry.shape);
      const pair = net.pair(dim);
      if (!pair) throw new Error(`${file} has no module for dim ${dim} (it has ${net.dims.join(", ")})`);
      const x = src.read(key);
      const rows = dim === 0 ? 0 : x.data.length / dim;
      for (const [j, which] of [
        [0, "k"],
        [1, "v"],
      ] as const) {
        const y = tf.tidy(() => pair[j].forward(tf.tensor(x.data, [rows, dim], "float32"), { multiplier: opts.multiplier ?? 1 }));
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
