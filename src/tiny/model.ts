/**
 * The embedded tiny base model: the project's own SD-1.x-shaped UNet and CLIP text encoder at a
 * laptop-CPU size, working in 32×32 RGB pixel space (no VAE), trained on the "tiny shapes" dataset
 * by `scripts/train-base.ts` and shipped in `models/tiny/`:
 *
 *     models/tiny/config.json         — UNet config (LDM names), text config, vocabulary, training facts
 *     models/tiny/model.safetensors   — weights, fp16: `unet.<LDM path>` and `text.<CLIP path>`
 *
 * Attention widths mirror SD 1.x's arrangement so a hypernetwork behaves as it does on SD: the
 * UNet's self-attention runs at widths 32 (16×16 grid), 64 (8×8) and 96 (4×4 and the middle
 * block), while cross-attention reads an 80-wide text context — four distinct widths, so a
 * hypernetwork module keyed by width (A1111's rule) touches exactly one kind of layer, just as
 * SD 1.x's 768-wide module only touches cross-attention.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { BaseModel } from "../pipeline/base-model";
import { ClipTextModel, type ClipTextConfig, tinyClipTextConfig } from "../text/clip";
import { SimpleTokenizer } from "../text/tokenizer";
import { type UNetConfig, validateConfig } from "../unet/config";
import { UNetModel } from "../unet/unet";
import type { TensorSource } from "../io/weight-source";
import { loadStateDict, stateDict, zerosInit, type Module, type ModuleOptions } from "../nn/module";
import { SafetensorsFile, writeSafetensors } from "../io/safetensors";
import type { HostTensor } from "../io/host-tensor";
import { writeFileAtomic } from "../io/atomic";
import { TINY_SIZE, captionVocabulary } from "./shapes-data/shapes";

/**
 * The tiny UNet: widths 32, 32, 64, 96 at 32×32, 16×16, 8×8, 4×4; one ResBlock per level;
 * attention at downsample factors 2, 4 and 8 (16×16, 8×8, 4×4) — not at 32×32, where
 * self-attention over 1,024 tokens would dominate a CPU training step; 16-channel heads (2 heads
 * at width 32, 4 at 64, 6 at 96). (How the shipped weights got their 16×16 level, `grow.ts`, is
 * in `models/tiny/MODEL_CARD.md`.)
 */
export const TINY_MODEL_UNET: Readonly<UNetConfig> = Object.freeze({
  in_channels: 3,
  out_channels: 3,
  model_channels: 32,
  attention_resolutions: [2, 4, 8],
  num_res_blocks: 1,
  channel_mult: [1, 1, 2, 3],
  num_heads: -1,
  num_head_channels: 16,
  transformer_depth: 1,
  context_dim: 80,
  use_linear_in_transformer: false,
  legacy: false,
  use_spatial_transformer: true,
  // 4 channels per group at width 32: with LDM's 32 groups each channel is normalised on its own,
  // which erases its spatial mean, and the model could not control the image's mean colour.
  norm_num_groups: 8,
});

/** Captions are at most 11 words; 16 positions leave room for BOS/EOS and padding. */
export const TINY_MAX_LENGTH = 16;

/** The tiny CLIP text tower: 80 wide, 2 layers, 4 heads of 20, for a vocabulary of caption words. */
export function tinyTextConfig(vocabSize: number): ClipTextConfig {
  return tinyClipTextConfig({ vocabSize, maxPositions: TINY_MAX_LENGTH, width: 80, layers: 2, heads: 4, mlpWidth: 320 });
}

/** What `models/tiny/config.json` holds. */
export interface TinyModelConfig {
  format: "hypernet-lab/tiny-base-model";
  version: 1;
  name: string;
  imageSize: number;
  unet: UNetConfig;
  text: ClipTextConfig;
  /** The tokenizer's word list (ids 4…; 0–3 are `<pad> <bos> <eos> <unk>`). */
  vocabulary: string[];
  /** Free-form facts about how the weights were made (steps, loss, time). */
  training?: Record<string, unknown>;
}

/** The config of a freshly initialised tiny model (vocabulary = every caption word). */
export function defaultTinyConfig(): TinyModelConfig {
  const vocabulary = captionVocabulary();
  return {
    format: "hypernet-lab/tiny-base-model",
    version: 1,
    name: "tiny-shapes",
    imageSize: TINY_SIZE,
    unet: {
      ...TINY_MODEL_UNET,
      channel_mult: [...TINY_MODEL_UNET.channel_mult],
      attention_resolutions: [...TINY_MODEL_UNET.attention_resolutions],
    },
    text: tinyTextConfig(4 + vocabulary.length),
    vocabulary,
  };
}

/** The parts of a tiny model, before they are wrapped in a `BaseModel`. */
export interface TinyModelParts {
  config: TinyModelConfig;
  unet: UNetModel;
  textEncoder: ClipTextModel;
  tokenizer: SimpleTokenizer;
}

/** Build the modules for a config (random init unless `opts.init` says otherwise). */
export function buildTinyModel(config: TinyModelConfig, opts: ModuleOptions = {}): TinyModelParts {
  const unet = new UNetModel(validateConfig(config.unet, "tiny model UNet config"), opts);
  const textEncoder = new ClipTextModel(config.text, opts);
  const tokenizer = new SimpleTokenizer(config.vocabulary, { maxLength: config.text.maxPositions });
  if (tokenizer.vocabSize !== config.text.vocabSize) {
    throw new Error(
      `tiny model config: the vocabulary has ${tokenizer.vocabSize} tokens (with 4 specials) but the text encoder expects ${config.text.vocabSize}`,
    );
  }
  return { config, unet, textEncoder, tokenizer };
}

/** Wrap tiny-model parts as the `BaseModel` every other part of the project uses. */
export function tinyBaseModel(parts: TinyModelParts): BaseModel {
  return new BaseModel({
    name: parts.config.name,
    unet: parts.unet,
    textEncoder: parts.textEncoder,
    tokenizer: parts.tokenizer,
    imageSize: parts.config.imageSize,
  });
}

/** Where the shipped weights live: `<package root>/models/tiny`. */
export const TINY_MODEL_DIR = path.resolve(__dirname, "..", "..", "models", "tiny");
export const TINY_CONFIG_FILE = "config.json";
export const TINY_WEIGHTS_FILE = "model.safetensors";

/** Read and check `config.json` of a tiny model folder. */
export function readTinyConfig(dir: string = TINY_MODEL_DIR): TinyModelConfig {
  const file = path.join(dir, TINY_CONFIG_FILE);
  if (!fs.existsSync(file))
    throw new Error(
      `${file}: not found; the tiny model folder needs ${TINY_CONFIG_FILE} and ${TINY_WEIGHTS_FILE} (train one with \`npm run train-base\`)`,
    );
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  const c = json as Partial<TinyModelConfig>;
  if (c.format !== "hypernet-lab/tiny-base-model" || c.version !== 1)
    throw new Error(`${file}: not a tiny-model config (expected format "hypernet-lab/tiny-base-model", version 1)`);
  if (!c.unet || !c.text || !Array.isArray(c.vocabulary) || typeof c.imageSize !== "number")
    throw new Error(`${file}: missing unet, text, vocabulary or imageSize`);
  return c as TinyModelConfig;
}

/** A tensor source that reads `prefix`-stripped keys of an open safetensors file. */
function prefixed(file: SafetensorsFile, prefix: string): TensorSource {
  const keys = file.keys().filter((k) => k.startsWith(prefix));
  return {
    keys: () => keys.map((k) => k.slice(prefix.length)),
    get: (k) => file.read(prefix + k),
    shapeOf: (k) => file.entries.get(prefix + k)?.shape,
  };
}

/** Load weights saved by `saveTinyWeights` into tiny-model parts (strict: every key must match). */
export function loadTinyWeights(parts: Pick<TinyModelParts, "unet" | "textEncoder">, file: string): void {
  const f = SafetensorsFile.open(file);
  try {
    loadStateDict(parts.unet, prefixed(f, "unet."), { where: `${file} (unet.*)` });
    loadStateDict(parts.textEncoder, prefixed(f, "text."), { where: `${file} (text.*)` });
  } finally {
    f.close();
  }
}

/** All weights of the tiny model as host tensors keyed `unet.…` / `text.…`, stored as `dtype`. */
export function tinyStateDict(parts: Pick<TinyModelParts, "unet" | "textEncoder">, dtype: "F16" | "F32" = "F32"): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [prefix, m] of [
    ["unet.", parts.unet],
    ["text.", parts.textEncoder],
  ] as Array<[string, Module]>) {
    for (const [k, t] of stateDict(m, prefix)) out.set(k, { ...t, dtype });
  }
  return out;
}

/**
 * Write a tiny model folder: `config.json` and fp16 `model.safetensors`. Existing files are
 * replaced only with `overwrite: true`.
 */
export function saveTinyModel(parts: TinyModelParts, dir: string, opts: { overwrite?: boolean } = {}): void {
  writeTinyModel(dir, parts.config, tinyStateDict(parts, "F16"), opts);
}

/**
 * `saveTinyModel` for weights already read to the host (keys `unet.…` / `text.…`, PyTorch layout),
 * e.g. read with `await` on a backend that cannot read synchronously (WebGPU in Node). Written fp16.
 */
export function writeTinyModel(
  dir: string,
  config: TinyModelConfig,
  weights: Map<string, HostTensor>,
  opts: { overwrite?: boolean } = {},
): void {
  fs.mkdirSync(dir, { recursive: true });
  const cfgFile = path.join(dir, TINY_CONFIG_FILE);
  if (fs.existsSync(cfgFile) && !opts.overwrite) throw new Error(`${cfgFile} exists; pass overwrite: true to replace it`);
  const f16 = new Map([...weights].map(([k, t]) => [k, { ...t, dtype: "F16" as const }]));
  writeSafetensors(path.join(dir, TINY_WEIGHTS_FILE), f16, { format: "pt", model: config.name }, { overwrite: opts.overwrite });
  writeFileAtomic(cfgFile, [Buffer.from(JSON.stringify(config, null, 2) + "\n")], { overwrite: true });
}

/**
 * Load the embedded tiny base model (or a tiny model saved elsewhere with `saveTinyModel`) as a
 * pixel-space `BaseModel`: 32×32 RGB images in [−1, 1], prompts like
 * "a large red circle on the left, white background". Synchronous; the caller owns the model and
 * frees it with `dispose()`.
 */
export function loadTinyModel(dir: string = TINY_MODEL_DIR): BaseModel {
  const config = readTinyConfig(dir);
  const weights = path.join(dir, TINY_WEIGHTS_FILE);
  if (!fs.existsSync(weights))
    throw new Error(`${weights}: not found; the tiny model folder needs ${TINY_WEIGHTS_FILE} (train one with \`npm run train-base\`)`);
  const parts = buildTinyModel(config, { init: zerosInit });
  try {
    loadTinyWeights(parts, weights);
  } catch (e) {
    parts.unet.dispose();
    parts.textEncoder.dispose();
    throw e;
  }
  return tinyBaseModel(parts);
}
