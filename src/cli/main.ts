/**
 * The `hypernet` command line: inspect, convert and apply hypernetwork files, check the machine.
 *
 *   hypernet inspect FILE [--json]
 *   hypernet convert IN OUT [--dtype f32|f16|bf16] [--overwrite]
 *   hypernet apply FILE --input IN.safetensors --output OUT.safetensors [--multiplier M] [--overwrite]
 *   hypernet doctor
 *   hypernet demo [--out DIR] [--quick]
 */
import * as fs from "node:fs";
import type { DType } from "../io/host-tensor";
import { fileParameterCount, readHypernetworkFile } from "../hypernet/file";
import { printable, terminalSafeJson } from "../io/safe-name";

/** Parsed command-line arguments: positionals and `--flag [value]` options. */
export interface Args {
  positional: string[];
  flags: Map<string, string | true>;
}

const VALUE_FLAGS = new Set(["input", "output", "multiplier", "dtype", "out", "backend", "steps"]);

/** Split argv into positionals and flags; `--name value` for value flags, `--name` for switches. */
export function parseArgs(argv: string[]): Args {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith("--")) {
      const [name, inline] = a.slice(2).split("=", 2) as [string, string | undefined];
      if (inline !== undefined) flags.set(name, inline);
      else if (VALUE_FLAGS.has(name)) {
        const v = argv[++i];
        if (v === undefined) throw new UsageError(`--${name} needs a value`);
        flags.set(name, v);
      } else flags.set(name, true);
    } else positional.push(a);
  }
  return { positional, flags };
}

/** A mistake in how the command was called (exit code 2). */
export class UsageError extends Error {}

const USAGE = `usage:
  hypernet inspect FILE [--json]             what a hypernetwork file holds
  hypernet convert IN OUT [--dtype f16] [--overwrite]
                                             .pt <-> .safetensors, nothing lost: extra .pt keys
                                             go to the "extra" metadata key and come back
  hypernet apply FILE --input IN.safetensors --output OUT.safetensors [--multiplier M]
                                             run each x.D through the k/v modules of dim D
  hypernet doctor                            backend, devices and versions
  hypernet demo [--out DIR] [--quick]        the main job on the embedded model: train a style
                                             hypernetwork, write .pt, loss chart, previews, scores
                                             (--quick: a few steps, to check the pipeline)`;

function flag(args: Args, name: string): string | undefined {
  const v = args.flags.get(name);
  if (v === true) throw new UsageError(`--${name} needs a value`);
  return v;
}

function parseDType(s: string | undefined): DType | undefined {
  if (s === undefined) return undefined;
  const map: Record<string, DType> = {
    f32: "F32",
    float32: "F32",
    f16: "F16",
    fp16: "F16",
    float16: "F16",
    half: "F16",
    bf16: "BF16",
    bfloat16: "BF16",
  };
  const key = s.toLowerCase();
  const d = Object.hasOwn(map, key) ? map[key] : undefined; // not "constructor" & co. from the prototype
  if (!d) throw new UsageError(`--dtype ${s}: use f32, f16 or bf16`);
  return d;
}

/** A human-readable summary of a hypernetwork file (what `inspect` prints). */
export function inspectFile(file: string): Record<string, unknown> {
  const hf = readHypernetworkFile(file, { describeOnly: true }); // lists, never reads or expands values
  const i = hf.info;
  const dtypes = new Set<string>();
  for (const pair of hf.weights.values()) for (const sd of pair) for (const t of sd.values()) dtypes.add(t.dtype);
  return {
    file,
    format: hf.format,
    name: i.name,
    step: i.step,
    dims: [...hf.weights.keys()],
    layer_structure: i.layerStructure,
    activation: i.activation,
    layer_norm: i.layerNorm,
    dropout_structure: i.dropoutStructure,
    use_dropout: i.useDropout,
    weight_initialization: i.weightInit,
    activate_output: i.activateOutput,
    // MonkeyPatch residual-block networks only (A1111 files have neither key).
    ...(i.skipConnection ? { skip_connection: true, upsample_linear: i.upsampleLinear ?? null } : {}),
    parameters: fileParameterCount(hf),
    dtype: [...dtypes].join(", "),
    size_bytes: fs.statSync(file).size,
    sd_checkpoint: i.sdCheckpoint,
    sd_checkpoint_name: i.sdCheckpointName,
    optional_info: i.optionalInfo,
  };
}

/**
 * `inspect`'s text output. Every string comes from the file (names, activation, optional info), so
 * each is passed through `printable`: control characters and terminal escapes are shown escaped,
 * never sent to the terminal, and a line break in a value cannot fake another line.
 */
export function formatInspect(r: Record<string, unknown>): string {
  const fmtBytes = (n: number): string => (n > 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);
  const lines = Object.entries(r).map(([k, v]) => {
    let s: string;
    if (k === "size_bytes") s = `${fmtBytes(v as number)} (${v as number} bytes)`;
    else if (k === "parameters") s = (v as number).toLocaleString("en-US");
    else if (Array.isArray(v)) s = v.map((x) => String(x)).join(", ");
    else s = v === null ? "-" : String(v);
    return `${printable(k).padEnd(22)}${printable(s)}`;
  });
  return lines.join("\n");
}

async function cmdApply(args: Args): Promise<void> {
  const [file] = args.positional;
  const input = flag(args, "input");
  const output = flag(args, "output");
  if (!file || !input || !output) throw new UsageError("apply needs FILE --input IN.safetensors --output OUT.safetensors");
  const multiplier = Number(flag(args, "multiplier") ?? "1");
  if (!Number.isFinite(multiplier)) throw new UsageError("--multiplier must be a number");
  const { applyToFile } = await import("./apply");
  const written = await applyToFile(file, input, output, { multiplier, overwrite: args.flags.has("overwrite") });
  console.log(`wrote ${written.join(", ")} to ${output}`);
}

/** Run the CLI; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    const [cmd, ...rest] = argv;
    const args = parseArgs(rest);
    switch (cmd) {
      case "inspect": {
        const [file] = args.positional;
        if (!file) throw new UsageError("inspect needs a FILE");
        const r = inspectFile(file);
        // JSON escapes C0 controls itself; terminalSafeJson also escapes C1 and bidi characters.
        console.log(args.flags.has("json") ? terminalSafeJson(JSON.stringify(r, null, 2)) : formatInspect(r));
        return 0;
      }
      case "convert": {
        const [src, dst] = args.positional;
        if (!src || !dst) throw new UsageError("convert needs IN and OUT");
        const { convertFile } = await import("./convert");
        const r = convertFile(src, dst, { overwrite: args.flags.has("overwrite"), dtype: parseDType(flag(args, "dtype")) });
        for (const note of r.notes) console.error(`hypernet: ${printable(note)}`);
        console.log(`${src} (${r.format}) -> ${dst}`);
        return 0;
      }
      case "apply":
        await cmdApply(args);
        return 0;
      case "doctor": {
        const { doctorReport } = await import("../backend/doctor");
        console.log(await doctorReport());
        return 0;
      }
      case "demo": {
        const { runDemo } = await import("../demo/run");
        await runDemo({ out: flag(args, "out") ?? "out/demo", quick: args.flags.has("quick") });
        return 0;
      }
      case undefined:
      case "help":
      case "--help":
      case "-h":
        console.log(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${cmd}"`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`hypernet: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    // Messages can quote a file's contents (keys, names): print them terminal-safe.
    console.error(`hypernet: ${printable((err as Error).message, { keepNewlines: true })}`);
    if (process.env.HYPERNET_DEBUG) console.error((err as Error).stack);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
