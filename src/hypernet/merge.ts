/**
 * Merging hypernetworks: a weighted sum of the weights of networks that share one structure,
 * written as an ordinary A1111 `.pt` (or `.safetensors`) through the same writer as every other
 * network, so A1111, ComfyUI and hypernet-lab read it like any trained file.
 *
 *     θ_merged = Σ_i w_i · θ_i        (every tensor, element by element)
 *
 * Weights are used as given (0.5 and 0.5 average two networks; 1 and 1 add them). Because each
 * module is an MLP, a merged network is not the same function as mixing the networks' outputs;
 * for that, attach them as a parallel group (`{ parallel: […] }` in `attachHypernetworks`).
 *
 * Structure means: the same widths, and for every module the same tensor names and shapes (which
 * follow from layer_structure, layer norm, activation placement and dropout placement), the same
 * activation, layer norm and output activation, and the same MonkeyPatch residual-block setting.
 * Dropout probabilities may differ (they do not change the weights): the first network's are kept.
 */
import type { HostTensor } from "../io/host-tensor";
import { fromNetwork, type HypernetworkFile, readHypernetworkFile, type SaveOptions, toNetwork, writeHypernetworkFile } from "./file";
import { type Hypernetwork, sanitizeName } from "./network";

/** One network to merge: its contents, its weight, and a label for messages (its file name). */
export interface MergeInput {
  file: HypernetworkFile;
  weight: number;
  /** How messages name this network (its path, or its name for a live network). */
  where: string;
}

/** Options of the merge functions. */
export interface MergeOptions {
  /** Name stored in the merged file (default: the first network's name + "-merged"). */
  name?: string;
}

/**
 * Why two networks cannot be merged, or undefined when they share one structure. `a` and `b`
 * label the two networks in the message.
 */
export function structureMismatch(x: HypernetworkFile, a: string, y: HypernetworkFile, b: string): string | undefined {
  const head = `${a} and ${b} have different structures`;
  const tail = "; only networks with the same structure can be merged (attach them as a parallel group to mix their outputs instead)";
  const xi = x.info;
  const yi = y.info;
  const fields: Array<[string, unknown, unknown]> = [
    ["layer_structure", xi.layerStructure, yi.layerStructure],
    ["activation", xi.activation, yi.activation],
    ["layer norm", xi.layerNorm, yi.layerNorm],
    ["activate_output", xi.activateOutput, yi.activateOutput],
    ["skip_connection (MonkeyPatch residual blocks)", xi.skipConnection ?? false, yi.skipConnection ?? false],
    ["upsample_linear", xi.upsampleLinear ?? null, yi.upsampleLinear ?? null],
  ];
  for (const [what, u, v] of fields) {
    if (JSON.stringify(u) !== JSON.stringify(v))
      return `${head}: ${what} ${JSON.stringify(u)} in ${a}, ${JSON.stringify(v)} in ${b}${tail}`;
  }
  const xd = [...x.weights.keys()];
  const yd = [...y.weights.keys()];
  if (xd.length !== yd.length || xd.some((d) => !y.weights.has(d)))
    return `${head}: widths [${xd.join(", ")}] in ${a}, [${yd.join(", ")}] in ${b}${tail}`;
  for (const [dim, pair] of x.weights) {
    const other = y.weights.get(dim)!;
    for (let j = 0; j < 2; j++) {
      const sx = pair[j]!;
      const sy = other[j]!;
      const which = `width ${dim} ${j === 0 ? "k" : "v"} module`;
      const kx = [...sx.keys()];
      const ky = [...sy.keys()];
      if (kx.length !== ky.length || kx.some((k) => !sy.has(k)))
        return `${head}: the ${which} holds ${kx.join(", ")} in ${a} but ${ky.join(", ")} in ${b} (dropout placement differs)${tail}`;
      for (const [k, t] of sx) {
        const u = sy.get(k)!;
        if (t.shape.length !== u.shape.length || t.shape.some((n, i) => n !== u.shape[i]))
          return `${head}: the ${which}'s "${k}" is [${t.shape.join(", ")}] in ${a} but [${u.shape.join(", ")}] in ${b}${tail}`;
      }
    }
  }
  return undefined;
}

/**
 * The weighted sum of networks' weights as a new network file (float32), refusing networks whose
 * structures differ with a message naming both. Metadata is the first network's, with step 0, the
 * given name, and `optional_info` recording the recipe.
 */
export function mergeHypernetworkData(inputs: readonly MergeInput[], opts: MergeOptions = {}): HypernetworkFile {
  if (inputs.length === 0) throw new Error("merge needs at least one network");
  for (const i of inputs)
    if (!Number.isFinite(i.weight)) throw new Error(`merge weight for ${i.where} must be a finite number, got ${i.weight}`);
  const first = inputs[0]!;
  for (const i of inputs.slice(1)) {
    const why = structureMismatch(first.file, first.where, i.file, i.where);
    if (why) throw new Error(why);
  }
  const weights = new Map<number, [Map<string, HostTensor>, Map<string, HostTensor>]>();
  for (const [dim, pair] of first.file.weights) {
    const merged = pair.map((sd, j) => {
      const out = new Map<string, HostTensor>();
      for (const [k, t] of sd) {
        const acc = new Float64Array(t.data.length);
        for (const i of inputs) {
          const src = i.file.weights.get(dim)![j]!.get(k)!.data;
          for (let e = 0; e < acc.length; e++) acc[e]! += i.weight * src[e]!;
        }
        out.set(k, { dtype: "F32", shape: [...t.shape], data: Float32Array.from(acc) });
      }
      return out;
    }) as [Map<string, HostTensor>, Map<string, HostTensor>];
    weights.set(dim, merged);
  }
  const sameCkpt = inputs.every((i) => i.file.info.sdCheckpoint === first.file.info.sdCheckpoint);
  const recipe = inputs.map((i) => `${i.weight} × ${i.where}`).join(" + ");
  return {
    info: {
      ...first.file.info,
      name: sanitizeName(opts.name ?? `${first.file.info.name}-merged`),
      step: 0,
      layerStructure: [...first.file.info.layerStructure],
      dropoutStructure: [...first.file.info.dropoutStructure],
      sdCheckpoint: sameCkpt ? first.file.info.sdCheckpoint : null,
      sdCheckpointName: sameCkpt ? first.file.info.sdCheckpointName : null,
      optionalInfo: `merged: ${recipe}`,
    },
    format: "a1111",
    weights,
    extra: new Map(),
  };
}

/**
 * Merge network files (`.pt` or `.safetensors`) into `out` (format by its extension), atomically and
 * without replacing an existing file unless `overwrite`. Returns what was written.
 */
export function mergeHypernetworkFiles(
  inputs: ReadonlyArray<{ file: string; weight: number }>,
  out: string,
  opts: MergeOptions & SaveOptions = {},
): HypernetworkFile {
  const read = inputs.map((i) => ({ file: readHypernetworkFile(i.file), weight: i.weight, where: i.file }));
  const merged = mergeHypernetworkData(read, opts);
  writeHypernetworkFile(merged, out, opts);
  return merged;
}

/** The weighted sum of live networks as a new live network (trainable), e.g. to keep training from it. */
export function mergeHypernetworks(
  inputs: ReadonlyArray<{ network: Hypernetwork; weight: number }>,
  opts: MergeOptions = {},
): Hypernetwork {
  const data = mergeHypernetworkData(
    inputs.map((i) => ({ file: fromNetwork(i.network), weight: i.weight, where: `"${i.network.name}"` })),
    opts,
  );
  return toNetwork(data, { trainable: true });
}
