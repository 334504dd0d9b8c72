/**
 * A toy training setup shared by the trainer tests and the child-process script: a pixel-space
 * base model (8×8 RGB, widths 32/64, one attention level, 16-wide text context) whose weights are
 * drawn from a seeded JS generator (identical in every process), four constant-colour images with
 * captions, and a small hypernetwork on the cross- and self-attention widths; also the same UNet in
 * latent space behind a tiny seeded VAE (`makeToyLatentBase`).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { Rng } from "../../src/diffusion/random";
import { createHypernetwork, type Hypernetwork } from "../../src/hypernet/network";
import type { Initializer } from "../../src/nn/module";
import { BaseModel } from "../../src/pipeline/base-model";
import { ClipTextModel, tinyClipTextConfig } from "../../src/text/clip";
import { SimpleTokenizer } from "../../src/text/tokenizer";
import type { UNetConfig } from "../../src/unet/config";
import { UNetModel } from "../../src/unet/unet";
import { AutoencoderKL, tinyVaeConfig } from "../../src/vae";
import type { TrainOptions } from "../../src/train/trainer";

export const TOY_UNET: UNetConfig = {
  in_channels: 3,
  out_channels: 3,
  model_channels: 32,
  attention_resolutions: [2],
  num_res_blocks: 1,
  channel_mult: [1, 2],
  num_heads: -1,
  num_head_channels: 32,
  transformer_depth: 1,
  context_dim: 16,
  use_linear_in_transformer: false,
  legacy: false,
  use_spatial_transformer: true,
};

/** The toy tokenizer's vocabulary (captions of the toy dataset use only these words). */
export const TOY_WORDS = ["a", "photo", "of", "red", "blue", "green", "yellow", "art", "by", "toy", ","];

/** PyTorch-like U(±1/√fan_in) init from a seeded host generator: the same weights in every process. */
export function seededInit(seed: number): Initializer {
  const rng = new Rng(seed);
  return (shape, torchShape) => {
    const fanIn = torchShape.length > 1 ? torchShape.slice(1).reduce((a, b) => a * b, 1) : torchShape[0]!;
    const b = 1 / Math.sqrt(Math.max(1, fanIn));
    const n = shape.reduce((a, c) => a * c, 1);
    return tf.tensor(
      Float32Array.from(rng.uniform(n), (u) => (2 * u - 1) * b),
      shape,
    );
  };
}

/** The toy base model (frozen). */
export function makeToyBase(seed = 1): BaseModel {
  const unet = new UNetModel(TOY_UNET, { init: seededInit(seed) });
  const textEncoder = new ClipTextModel(
    tinyClipTextConfig({ vocabSize: 4 + TOY_WORDS.length, maxPositions: 8, width: 16, layers: 1, heads: 2, mlpWidth: 32 }),
    { init: seededInit(seed + 1) },
  );
  const tokenizer = new SimpleTokenizer(TOY_WORDS, { maxLength: 8 });
  return new BaseModel({ name: "toy", unet, textEncoder, tokenizer, imageSize: 8 });
}

/**
 * The latent-space toy model: the toy UNet on 4 latent channels behind the two-level tiny VAE
 * (16×16 images → 8×8×4 latents), weights seeded as in `makeToyBase`.
 */
export function makeToyLatentBase(): BaseModel {
  const unet = new UNetModel({ ...TOY_UNET, in_channels: 4, out_channels: 4 }, { init: seededInit(11) });
  const textEncoder = new ClipTextModel(
    tinyClipTextConfig({ vocabSize: 4 + TOY_WORDS.length, maxPositions: 8, width: 16, layers: 1, heads: 2, mlpWidth: 32 }),
    { init: seededInit(12) },
  );
  const vae = new AutoencoderKL(tinyVaeConfig(), { init: seededInit(13) });
  const tokenizer = new SimpleTokenizer(TOY_WORDS, { maxLength: 8 });
  return new BaseModel({ name: "toy-latent", unet, textEncoder, tokenizer, vae, imageSize: 16 });
}

/** Write four 8×8 constant-colour PNGs with captions into `dir`. */
export async function makeToyDataset(dir: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  const colours: Array<[string, [number, number, number]]> = [
    ["red", [220, 30, 30]],
    ["blue", [30, 40, 220]],
    ["green", [40, 200, 50]],
    ["yellow", [230, 220, 40]],
  ];
  for (const [name, [r, g, b]] of colours) {
    await sharp({ create: { width: 8, height: 8, channels: 3, background: { r, g, b } } })
      .png()
      .toFile(path.join(dir, `${name}.png`));
    fs.writeFileSync(path.join(dir, `${name}.txt`), name);
  }
}

/** The toy hypernetwork: dims 16 (cross-attention context) and 64 (self-attention), tanh + layer norm. */
export function makeToyNet(seed = 3): Hypernetwork {
  return createHypernetwork({
    name: "toy",
    dims: [16, 64],
    layerStructure: [1, 2, 1],
    activation: "tanh",
    layerNorm: true,
    weightInit: "XavierNormal",
    seed,
  });
}

/** Prompt template for the toy data. */
export const TOY_TEMPLATE = ["a photo of [filewords]", "art by [name] , [filewords]"];

/**
 * Trainer options for the toy model: quiet, no periodic checkpoints, no SIGINT handler (vitest
 * owns the process), fixed seed. `extra` overrides any of them.
 */
export function toyTrainOptions(dataDir: string, logDir: string, extra: Partial<TrainOptions> = {}): TrainOptions {
  return {
    dataDir,
    template: TOY_TEMPLATE,
    maxSteps: 10,
    batchSize: 2,
    learningRate: "1e-3",
    seed: 5,
    logDir,
    saveEvery: 0,
    onLog: () => {},
    progress: false,
    handleSigint: false,
    ...extra,
  };
}
