/**
 * Loading CLIP text encoders from checkpoint files.
 *
 * The same `ClipTextModel` tree loads from every layout SD 1.x weights come in; only the prefix
 * in front of the module paths differs:
 * - LDM single file: `cond_stage_model.transformer.text_model.`
 * - old LDM single files (before transformers 4.x): `cond_stage_model.transformer.` (no `text_model.`)
 * - diffusers `text_encoder/model.safetensors`: `text_model.`
 * - a bare tree: no prefix
 */
import * as tf from "@tensorflow/tfjs";
import { type LoadReport, loadStateDict, zerosInit } from "../nn/module";
import { type WeightInput, type WeightSource, openWeights } from "../io/weight-source";
import { CLIP_VIT_L14_TEXT, type ClipTextConfig, ClipTextModel } from "./clip";

/** The prefixes tried, in order, when none is given. */
export const CLIP_TEXT_PREFIXES = ["cond_stage_model.transformer.text_model.", "text_model.", "cond_stage_model.transformer.", ""] as const;

/**
 * Keys that may sit in a text-encoder file without being parameters, relative to the prefix.
 * `embeddings.position_ids` is a buffer holding 0..76; merged checkpoints sometimes carry a
 * corrupted float copy, so it is never read (positions are always 0..T−1).
 */
export const CLIP_IGNORED_KEYS = ["embeddings.position_ids"] as const;

/** Options for `loadTextEncoder`. */
export interface LoadTextEncoderOptions {
  /** Key prefix in the file; detected from `CLIP_TEXT_PREFIXES` when absent. */
  prefix?: string;
  /** Config overrides. Unset fields are read from tensor shapes; `heads` defaults to width/64. */
  config?: Partial<ClipTextConfig>;
  /** Throw on missing/unexpected/mis-shaped keys (default true). */
  strict?: boolean;
  /** Make the parameters trainable (default false). */
  trainable?: boolean;
}

/** A loaded text encoder with what the loader found. */
export interface LoadedTextEncoder {
  model: ClipTextModel;
  prefix: string;
  report: LoadReport;
  /** Keys present in the file that were deliberately not loaded (e.g. `position_ids`). */
  ignored: string[];
}

/** Find the text-encoder prefix of a source, or undefined if it holds no text encoder. */
export function detectClipTextPrefix(src: { keys(): Iterable<string> }): string | undefined {
  const keys = new Set(src.keys());
  return CLIP_TEXT_PREFIXES.find((p) => keys.has(`${p}embeddings.token_embedding.weight`));
}

/**
 * Read a text tower's config from tensor shapes: vocabulary and width from the token embedding,
 * positions from the position embedding, MLP width from `fc1`, layers by counting. The number of
 * heads is not visible in any shape: it comes from `overrides.heads` or defaults to width/64
 * (CLIP's head width).
 */
export function inferClipTextConfig(src: WeightSource, prefix: string, overrides: Partial<ClipTextConfig> = {}): ClipTextConfig {
  const shape = (k: string): number[] => {
    const s = src.shapeOf(prefix + k);
    if (!s) throw new Error(`${src.where}: no tensor "${prefix}${k}"; this does not look like a CLIP text encoder`);
    return s;
  };
  const [vocabSize, width] = shape("embeddings.token_embedding.weight") as [number, number];
  const maxPositions = shape("embeddings.position_embedding.weight")[0]!;
  const mlpWidth = shape("encoder.layers.0.mlp.fc1.weight")[0]!;
  let layers = 0;
  const re = new RegExp(`^${prefix.replace(/\./g, "\\.")}encoder\\.layers\\.(\\d+)\\.`);
  for (const k of src.keys()) {
    const m = re.exec(k);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  const heads = overrides.heads ?? width / 64;
  if (!Number.isInteger(heads) || heads < 1) {
    throw new Error(`${src.where}: cannot tell the number of attention heads for width ${width}; pass { config: { heads } }`);
  }
  const base = width === CLIP_VIT_L14_TEXT.width ? CLIP_VIT_L14_TEXT : { activation: "quick_gelu" as const, eps: 1e-5 };
  return { ...base, vocabSize, width, maxPositions, mlpWidth, layers, heads, ...overrides };
}

/**
 * Load a CLIP text encoder from a `.safetensors` file (LDM single file or diffusers
 * `text_encoder/model.safetensors`), a tensor map or any tensor source. Reads one tensor at a
 * time; F16/BF16 are widened to float32. The `position_ids` buffer is ignored by design.
 */
export function loadTextEncoder(input: WeightInput, opts: LoadTextEncoderOptions = {}): LoadedTextEncoder {
  const src = openWeights(input);
  try {
    const prefix = opts.prefix ?? detectClipTextPrefix(src);
    if (prefix === undefined) {
      throw new Error(
        `${src.where}: no CLIP text encoder found (looked for "embeddings.token_embedding.weight" under ${CLIP_TEXT_PREFIXES.map((p) => JSON.stringify(p)).join(", ")}); pass { prefix } if it uses another`,
      );
    }
    const config = inferClipTextConfig(src, prefix, opts.config);
    const ignoredSet = new Set(CLIP_IGNORED_KEYS.map((k) => prefix + k));
    const ignored = [...src.keys()].filter((k) => ignoredSet.has(k));
    const filtered = {
      keys: () => [...src.keys()].filter((k) => !ignoredSet.has(k)),
      get: (k: string) => src.get(k),
      shapeOf: (k: string) => src.shapeOf(k),
    };
    const model = new ClipTextModel(config, { init: zerosInit, trainable: opts.trainable ?? false });
    try {
      const report = loadStateDict(model, filtered, {
        prefix,
        strict: opts.strict ?? true,
        where: `${src.where} (text encoder, prefix "${prefix}")`,
      });
      return { model, prefix, report, ignored };
    } catch (err) {
      model.dispose();
      throw err;
    }
  } finally {
    src.close();
  }
}

/**
 * Every parameter path and PyTorch shape of a text tower, without allocating its weights (the
 * tree is built with scalar placeholders and disposed). Useful to check key sets and count
 * parameters of the full-size model cheaply.
 */
export function clipTextParamShapes(config: ClipTextConfig, prefix = ""): Array<[string, number[]]> {
  const model = new ClipTextModel(config, { init: () => tf.scalar(0) });
  try {
    return model.namedParameters(prefix).map(([k, p]) => [k, [...p.torchShape]]);
  } finally {
    model.dispose();
  }
}
