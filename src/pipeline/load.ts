/**
 * Loading a whole Stable Diffusion 1.x model — UNet, CLIP text encoder, VAE and tokenizer — from
 * the two shapes it comes in:
 *
 * - a **single file** (`.safetensors` or `.ckpt`) in the LDM layout, every component under its
 *   prefix in one flat state dict:
 *
 *       model.diffusion_model.*                       UNet
 *       cond_stage_model.transformer.text_model.*     CLIP text encoder (old files: no `text_model.`)
 *       first_stage_model.*                           VAE (absent in "no-VAE" merges)
 *       model_ema.*                                   EMA copies            ─┐
 *       betas, alphas_cumprod, …                      training schedule     ─┴ ignored, reported
 *
 *   The CLIP tokenizer's `vocab.json` + `merges.txt` are never inside such a file, so they come
 *   from a `tokenizer` path or a `tokenizer/` folder beside the file.
 * - a **diffusers folder**: `unet/`, `text_encoder/`, `vae/`, `tokenizer/`.
 *
 * Every tensor is read on its own at its offset and widened to float32 as it is assigned, so the
 * host never holds the file in one buffer: peak memory is the model plus one tensor (see
 * BENCHMARKS.md for a measured 4.3 GB fp32 checkpoint).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { type DType, numel } from "../io/host-tensor";
import { type WeightSource, openWeights } from "../io/weight-source";
import { shortHash } from "../io/hash";
import { zerosInit } from "../nn/module";
import { CLIP_IGNORED_KEYS, type LoadedTextEncoder, detectClipTextPrefix, loadTextEncoder } from "../text/load";
import { ClipTokenizer } from "../text/tokenizer";
import type { UNetConfig } from "../unet/config";
import { inferUNetConfig } from "../unet/infer-config";
import { LDM_UNET_PREFIX, detectFamily, loadUNetWeights, resolveUNetFile } from "../unet/load";
import { UNetModel } from "../unet/unet";
import type { AutoencoderKL } from "../vae/autoencoder";
import { type LoadedVae, detectVaeLayout, loadVae } from "../vae/load";
import { BaseModel } from "./base-model";

/** Options for `loadBaseModel`. */
export interface LoadBaseModelOptions {
  /**
   * A separate VAE file (standalone LDM names like "vae-ft-mse-840000-ema-pruned.safetensors", an
   * LDM checkpoint, or a diffusers `vae/` file). Replaces the checkpoint's own VAE; required when
   * the checkpoint has none.
   */
  vae?: string;
  /** A folder holding CLIP's `vocab.json` + `merges.txt` (e.g. a diffusers `tokenizer/` folder). */
  tokenizer?: string;
  /** A1111's "Clip skip" (default 1). */
  clipSkip?: number;
  /**
   * UNet config fields to use instead of the ones read from tensor shapes. Only the attention
   * head count is invisible in shapes: it defaults to SD 1.x's rule (8 heads per layer).
   */
  unetConfig?: Partial<UNetConfig>;
  /** Compute A1111's short hash of a single file (default true; reads the whole file once). */
  hash?: boolean;
  /** Name for messages and infotexts (default: the file name without extension). */
  name?: string;
}

/** What was loaded for one component. */
export interface ComponentReport {
  /** The file it came from. */
  file: string;
  /** How its keys were named ("LDM prefix "first_stage_model."", "diffusers", …). */
  layout: string;
  /** Tensors loaded into the model. */
  tensors: number;
  /** Scalar parameters loaded. */
  parameters: number;
  /** How many of the loaded tensors the file stores in each dtype (all become float32). */
  dtypes: Partial<Record<DType, number>>;
}

/** Keys of a single-file checkpoint that were deliberately not loaded. */
export interface IgnoredKeys {
  /** Number of `model_ema.*` tensors (EMA copies of the UNet, plus `decay`/`num_updates`). */
  ema: number;
  /** Training-schedule buffers (`betas`, `alphas_cumprod`, …) — the sampler computes its own. */
  schedule: string[];
  /** Other keys outside the three components, and non-parameter buffers such as `position_ids`. */
  other: string[];
  /** The checkpoint's own VAE tensors when a separate `vae` replaced them. */
  replacedVae: number;
}

/** Everything `loadBaseModel` found out. */
export interface BaseModelLoadReport {
  source: string;
  kind: "single-file" | "diffusers";
  /** "SD 1.x" (other families are refused). */
  family: string;
  unet: ComponentReport;
  textEncoder: ComponentReport;
  vae: ComponentReport;
  tokenizer: string;
  ignored: IgnoredKeys;
  /** A1111's `sd_checkpoint` short hash (first 10 hex digits of the file's SHA-256); null for folders. */
  hash: string | null;
  /** The UNet config read from the shapes. */
  unetConfig: UNetConfig;
}

/** A base model loaded from files, with the report of what was read. */
export class LoadedBaseModel extends BaseModel {
  constructor(
    parts: ConstructorParameters<typeof BaseModel>[0],
    readonly report: BaseModelLoadReport,
  ) {
    super(parts);
  }
}

/** LDM training-schedule buffers stored at the top level of full checkpoints (`ddpm.py register_schedule`). */
export const SCHEDULE_BUFFER_KEYS: readonly string[] = [
  "betas",
  "alphas_cumprod",
  "alphas_cumprod_prev",
  "sqrt_alphas_cumprod",
  "sqrt_one_minus_alphas_cumprod",
  "log_one_minus_alphas_cumprod",
  "sqrt_recip_alphas_cumprod",
  "sqrt_recipm1_alphas_cumprod",
  "posterior_variance",
  "posterior_log_variance_clipped",
  "posterior_mean_coef1",
  "posterior_mean_coef2",
  "logvar",
];

/** Where to get the CLIP vocabulary; appended to every "no tokenizer" error. */
const TOKENIZER_HELP =
  "Single-file checkpoints do not contain CLIP's BPE vocabulary. Get vocab.json and merges.txt from the " +
  '"tokenizer/" folder of the stable-diffusion-v1-5/stable-diffusion-v1-5 repository (or openai/clip-vit-large-patch14) ' +
  'on the Hugging Face hub, put them in a folder, and pass { tokenizer: "that/folder" } — or place the folder, named ' +
  '"tokenizer", next to the checkpoint.';

/** A weight source over one file (`dtypeOf` tells each tensor's stored dtype). */
type CheckpointSource = WeightSource;

/**
 * Load an SD 1.x model from a single `.safetensors`/`.ckpt` file or a diffusers folder (see the
 * module comment). Refuses SD 2.x/SDXL files with a clear message. Returns a `BaseModel` carrying
 * `report`: components, dtypes, key counts, ignored keys and the short hash.
 */
export async function loadBaseModel(source: string, opts: LoadBaseModelOptions = {}): Promise<LoadedBaseModel> {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch {
    throw new Error(`${source}: no such file or folder (expected an SD 1.x .safetensors/.ckpt checkpoint or a diffusers folder)`);
  }
  return stat.isDirectory() ? loadDiffusersFolder(source, opts) : loadSingleFile(source, opts);
}

// ---- single file ------------------------------------------------------------------------------

function loadSingleFile(file: string, opts: LoadBaseModelOptions): LoadedBaseModel {
  if (!/\.(safetensors|ckpt|pt|pth)$/i.test(file)) {
    throw new Error(`${file}: unknown checkpoint type (expected .safetensors or .ckpt, or a diffusers folder)`);
  }
  const raw = openCheckpoint(file);
  const parts: PartialParts = {};
  try {
    const keys = [...raw.keys()];
    refuseOtherFamilies(file, raw, keys, LDM_UNET_PREFIX);
    if (!keys.some((k) => k.startsWith(LDM_UNET_PREFIX))) {
      throw new Error(
        `${file}: no UNet found (no "${LDM_UNET_PREFIX}*" keys). This is not a full SD checkpoint — ` +
          `it may be a VAE, LoRA, embedding or hypernetwork file. Its first keys: ${keys.slice(0, 3).join(", ") || "(none)"}`,
      );
    }
    const textPrefix = detectClipTextPrefix(raw);
    if (textPrefix === undefined || !textPrefix.startsWith("cond_stage_model.")) {
      throw new Error(`${file}: no CLIP text encoder found (no "cond_stage_model.transformer.*" keys); pass a complete SD 1.x checkpoint`);
    }
    const vaeLayout = detectVaeLayout(raw);
    const hasVae = vaeLayout !== undefined && vaeLayout.prefix !== "";
    if (!hasVae && !opts.vae) {
      throw new Error(
        `${file}: this checkpoint has no VAE (no "first_stage_model.*" keys — a "no-VAE" merge). ` +
          `Pass a separate VAE file: loadBaseModel(path, { vae: "vae-ft-mse-840000-ema-pruned.safetensors" }) ` +
          `(any SD 1.x VAE: standalone, from another checkpoint, or a diffusers vae/ file).`,
      );
    }
    const tokenizerDir = findTokenizer(file, opts.tokenizer, path.join(path.dirname(file), "tokenizer"));
    const config = inferUNetConfig(raw, { kind: "ldm", prefix: LDM_UNET_PREFIX }, opts.unetConfig);
    checkBackendCapacity(file, raw, keys, hasVae && !opts.vae ? vaeLayout!.prefix : undefined, textPrefix);

    // Classify what stays out of the model.
    const ignored: IgnoredKeys = { ema: 0, schedule: [], other: [], replacedVae: 0 };
    const scheduleSet = new Set(SCHEDULE_BUFFER_KEYS);
    const vaePrefix = hasVae ? vaeLayout!.prefix : undefined;
    for (const k of keys) {
      if (k.startsWith("model_ema.")) ignored.ema++;
      else if (scheduleSet.has(k)) ignored.schedule.push(k);
      else if (k.startsWith(LDM_UNET_PREFIX)) continue;
      else if (vaePrefix !== undefined && k.startsWith(vaePrefix)) {
        if (opts.vae) ignored.replacedVae++;
      } else if (k.startsWith(textPrefix) && !CLIP_IGNORED_KEYS.some((c) => k === textPrefix + c)) continue;
      else ignored.other.push(k);
    }

    parts.unet = new UNetModel(config, { init: zerosInit });
    const unetReport = loadUNetWeights(parts.unet, file);
    parts.text = loadTextEncoder(raw);
    parts.vae = opts.vae ? loadVaeFile(opts.vae) : loadVae(raw);

    const tokenizer = ClipTokenizer.fromFiles(tokenizerDir, undefined, { maxLength: parts.text.model.config.maxPositions });
    checkTokenizer(tokenizerDir, tokenizer, parts.text);
    const report: BaseModelLoadReport = {
      source: file,
      kind: "single-file",
      family: "SD 1.x",
      unet: component(file, `LDM prefix "${LDM_UNET_PREFIX}"`, unetReport.loaded, raw),
      textEncoder: component(file, `LDM prefix "${parts.text.prefix}"`, parts.text.report.loaded, raw),
      vae: opts.vae
        ? vaeComponent(opts.vae, parts.vae)
        : component(
            file,
            `LDM prefix "${vaePrefix}"`,
            parts.vae.report.loaded.map((k) => vaePrefix + k),
            raw,
          ),
      tokenizer: tokenizerDir,
      ignored,
      hash: opts.hash === false ? null : shortHash(file),
      unetConfig: config,
    };
    return new LoadedBaseModel(
      {
        name: opts.name ?? path.basename(file).replace(/\.(safetensors|ckpt|pt|pth)$/i, ""),
        unet: parts.unet,
        textEncoder: parts.text.model,
        tokenizer,
        vae: parts.vae.model,
        imageSize: nativeImageSize(parts.vae.model),
        clipSkip: opts.clipSkip,
        checkpointHash: report.hash,
      },
      report,
    );
  } catch (err) {
    disposeParts(parts);
    throw err;
  } finally {
    raw.close();
  }
}

// ---- diffusers folder -------------------------------------------------------------------------

function loadDiffusersFolder(dir: string, opts: LoadBaseModelOptions): LoadedBaseModel {
  const unetFile = resolveUNetFile(dir);
  const textFile = firstExisting(dir, ["text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors"]);
  if (!textFile) {
    const bin = fs.existsSync(path.join(dir, "text_encoder", "pytorch_model.bin"));
    throw new Error(
      `${dir}: no text encoder found (looked for text_encoder/model[.fp16].safetensors)${bin ? "; text_encoder/pytorch_model.bin is a pickle — convert it to .safetensors first" : ""}`,
    );
  }
  const vaeFile =
    opts.vae ?? firstExisting(dir, ["vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]);
  if (!vaeFile)
    throw new Error(
      `${dir}: no VAE found (looked for vae/diffusion_pytorch_model[.fp16].safetensors); pass { vae: "path/to/vae.safetensors" }`,
    );
  const tokenizerDir = findTokenizer(dir, opts.tokenizer, path.join(dir, "tokenizer"));

  const unetSrc = openCheckpoint(unetFile);
  let config: UNetConfig;
  let unetDtypes: Map<string, DType | undefined>;
  try {
    const keys = [...unetSrc.keys()];
    refuseOtherFamilies(dir, unetSrc, keys, "");
    config = inferUNetConfig(
      unetSrc,
      { kind: "diffusers", json: readJson(path.join(path.dirname(unetFile), "config.json")) },
      opts.unetConfig,
    );
    unetDtypes = new Map(keys.map((k) => [k, unetSrc.dtypeOf(k)]));
  } finally {
    unetSrc.close();
  }

  const parts: PartialParts = {};
  try {
    parts.unet = new UNetModel(config, { init: zerosInit });
    const unetReport = loadUNetWeights(parts.unet, unetFile);
    const textSrc = openCheckpoint(textFile);
    let textComponent: ComponentReport;
    try {
      parts.text = loadTextEncoder(textSrc);
      textComponent = component(textFile, `diffusers (prefix "${parts.text.prefix}")`, parts.text.report.loaded, textSrc);
    } finally {
      textSrc.close();
    }
    parts.vae = loadVaeFile(vaeFile);
    const tokenizer = ClipTokenizer.fromFiles(tokenizerDir, undefined, { maxLength: parts.text.model.config.maxPositions });
    checkTokenizer(tokenizerDir, tokenizer, parts.text);
    const dtypes: Partial<Record<DType, number>> = {};
    let params = 0;
    for (const [, p] of parts.unet.namedParameters()) params += numel(p.torchShape);
    for (const d of unetDtypes.values()) if (d) dtypes[d] = (dtypes[d] ?? 0) + 1;
    const report: BaseModelLoadReport = {
      source: dir,
      kind: "diffusers",
      family: "SD 1.x",
      unet: { file: unetFile, layout: "diffusers", tensors: unetReport.loaded.length, parameters: params, dtypes },
      textEncoder: textComponent,
      vae: vaeComponent(vaeFile, parts.vae),
      tokenizer: tokenizerDir,
      ignored: { ema: 0, schedule: [], other: [], replacedVae: 0 },
      hash: null,
      unetConfig: config,
    };
    return new LoadedBaseModel(
      {
        name: opts.name ?? path.basename(path.resolve(dir)),
        unet: parts.unet,
        textEncoder: parts.text.model,
        tokenizer,
        vae: parts.vae.model,
        imageSize: nativeImageSize(parts.vae.model),
        clipSkip: opts.clipSkip,
        checkpointHash: null,
      },
      report,
    );
  } catch (err) {
    disposeParts(parts);
    throw err;
  }
}

// ---- helpers ----------------------------------------------------------------------------------

/** Components loaded so far (a failed load frees them all). */
interface PartialParts {
  unet?: UNetModel;
  text?: LoadedTextEncoder;
  vae?: LoadedVae;
}

function disposeParts(parts: PartialParts): void {
  parts.unet?.dispose();
  parts.text?.model.dispose();
  parts.vae?.model.dispose();
}

/** Open a `.safetensors` or torch file as a weight source (it also reports stored dtypes). */
function openCheckpoint(file: string): CheckpointSource {
  return openWeights(file);
}

/** Throw a clear error for SD 2.x / SDXL files, which this loader does not build yet. */
function refuseOtherFamilies(where: string, src: WeightSource, keys: string[], unetPrefix: string): void {
  if (keys.some((k) => k.startsWith("conditioner.embedders."))) {
    throw new Error(
      `${where}: this is an SDXL checkpoint (it has "conditioner.embedders.*" keys); only SD 1.x (1.4/1.5 and their fine-tunes) is supported`,
    );
  }
  const family = detectFamily(src, unetPrefix);
  const openClip = keys.some((k) => k.startsWith("cond_stage_model.model."));
  if (family.name === "SD 2.x" || openClip || family.contextDim === 1024) {
    throw new Error(
      `${where}: this is an SD 2.x checkpoint (cross-attention context ${family.contextDim ?? "?"} wide, ` +
        `${family.linearProj ? "Linear" : "conv"} proj_in${openClip ? ", OpenCLIP text encoder" : ""}). ` +
        `SD 2.x is not supported yet: its OpenCLIP ViT-H text encoder and v-prediction are missing. Use an SD 1.x (1.4/1.5) checkpoint.`,
    );
  }
}

/** The tokenizer folder: the one given, else `fallback` if it holds vocab.json + merges.txt; else an error saying where to get one. */
function findTokenizer(source: string, given: string | undefined, fallback: string): string {
  const ok = (d: string): boolean => fs.existsSync(path.join(d, "vocab.json")) && fs.existsSync(path.join(d, "merges.txt"));
  if (given !== undefined) {
    if (!ok(given)) throw new Error(`tokenizer ${given}: expected a folder holding vocab.json and merges.txt. ${TOKENIZER_HELP}`);
    return given;
  }
  if (ok(fallback)) return fallback;
  throw new Error(
    `${source}: no CLIP tokenizer found (no { tokenizer } option and no ${fallback}/vocab.json + merges.txt). ${TOKENIZER_HELP}`,
  );
}

/** The tokenizer's ids must fit the text encoder's embedding table. */
function checkTokenizer(dir: string, tok: ClipTokenizer, text: LoadedTextEncoder): void {
  const vocab = text.model.config.vocabSize;
  if (tok.vocabSize > vocab || tok.eosId >= vocab || tok.bosId >= vocab) {
    throw new Error(
      `tokenizer ${dir}: ${tok.vocabSize} tokens (end-of-text id ${tok.eosId}) but the text encoder has only ${vocab} embeddings; use the tokenizer that belongs to this model`,
    );
  }
}

/** Load a separate VAE file (any layout `loadVae` knows) and close it. */
function loadVaeFile(file: string): LoadedVae {
  if (!fs.existsSync(file)) throw new Error(`VAE ${file}: no such file`);
  const src = openCheckpoint(file);
  try {
    return loadVae(src);
  } finally {
    src.close();
  }
}

function vaeComponent(file: string, vae: LoadedVae): ComponentReport {
  const src = openCheckpoint(file);
  try {
    const dtypes: Partial<Record<DType, number>> = {};
    let tensors = 0;
    for (const k of src.keys()) {
      if (!k.startsWith(vae.layout.prefix) || !/^(encoder|decoder|quant_conv|post_quant_conv)\./.test(k.slice(vae.layout.prefix.length)))
        continue;
      const d = src.dtypeOf(k);
      if (d) dtypes[d] = (dtypes[d] ?? 0) + 1;
      tensors++;
    }
    return {
      file,
      layout: vae.layout.kind === "ldm" ? `LDM prefix "${vae.layout.prefix}"` : "diffusers",
      tensors,
      parameters: paramCount(vae.model),
      dtypes,
    };
  } finally {
    src.close();
  }
}

function component(file: string, layout: string, loadedKeys: string[], src: CheckpointSource): ComponentReport {
  const dtypes: Partial<Record<DType, number>> = {};
  let parameters = 0;
  for (const k of loadedKeys) {
    const d = src.dtypeOf(k);
    if (d) dtypes[d] = (dtypes[d] ?? 0) + 1;
    parameters += numel(src.shapeOf(k) ?? []);
  }
  return { file, layout, tensors: loadedKeys.length, parameters, dtypes };
}

/** SD 1.x is trained on 64×64 latents: 512 px with the VAE's 8× factor. */
function nativeImageSize(vae: AutoencoderKL): number {
  return 64 * vae.downFactor;
}

function paramCount(m: AutoencoderKL | UNetModel): number {
  let n = 0;
  for (const [, p] of m.namedParameters()) n += numel(p.torchShape);
  return n;
}

/**
 * Refuse, before allocating anything, a model that cannot fit the wasm backend: wasm32 memory
 * is capped at 4 GiB, and SD 1.5 in float32 alone is 4.3 GB.
 */
function checkBackendCapacity(file: string, src: WeightSource, keys: string[], vaePrefix: string | undefined, textPrefix: string): void {
  if (tf.getBackend() !== "wasm") return;
  let n = 0;
  for (const k of keys) {
    if (k.startsWith(LDM_UNET_PREFIX) || k.startsWith(textPrefix) || (vaePrefix !== undefined && k.startsWith(vaePrefix)))
      n += numel(src.shapeOf(k) ?? []);
  }
  const bytes = 4 * n;
  if (bytes > WASM_MODEL_LIMIT_BYTES) {
    throw new Error(
      `${file}: the model needs ${(bytes / 1e9).toFixed(2)} GB as float32 tensors, but the wasm backend's memory is capped at 4 GiB ` +
        `(wasm32), which must also hold the activations. Use a GPU backend — useBackend("tensorflow-gpu") (@tensorflow/tfjs-node-gpu) ` +
        `or useBackend("webgpu") — or useBackend("tensorflow") / useBackend("cpu"), which are limited only by RAM (SD 1.5 loads in ~4.3 GB).`,
    );
  }
}

/** Largest model (float32 bytes) the loader lets the wasm backend try: 4 GiB minus room for activations. */
export const WASM_MODEL_LIMIT_BYTES = 3 * 1024 ** 3;

function firstExisting(dir: string, rels: string[]): string | undefined {
  return rels.map((r) => path.join(dir, r)).find((p) => fs.existsSync(p));
}

function readJson(file: string): Record<string, unknown> | undefined {
  if (!fs.existsSync(file)) return undefined;
  try {
    const v: unknown = JSON.parse(fs.readFileSync(file, "utf8"));
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message})`);
  }
}
