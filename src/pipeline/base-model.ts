/**
 * The frozen base model a hypernetwork is trained on and sampled with: a UNet, a text encoder
 * with its tokenizer, and — for latent-diffusion models like SD 1.x — a VAE.
 *
 * Everything downstream (trainer, sampler, notebooks) talks to this one class, so the embedded
 * tiny pixel-space model and a real SD 1.5 checkpoint are used the same way:
 *
 *     images ──encodeImages──▶ UNet space ──UNet(x_t, t, encodeText(prompts))──▶ ε
 *     UNet space ──decode──▶ images
 *
 * In pixel space (no VAE) `encodeImages`/`decode` are the identity; in latent space they are the
 * VAE encoder (times the latent scale, 0.18215 for SD) and decoder.
 */
import * as tf from "@tensorflow/tfjs";
import type { LatentDistribution } from "../data/dataset";
import type { ClipTextModel } from "../text/clip";
import type { Tokenizer } from "../text/tokenizer";
import type { UNetModel } from "../unet/unet";
import type { AutoencoderKL } from "../vae/autoencoder";

/** The parts a base model is made of. */
export interface BaseModelParts {
  /** A short name for messages and file metadata (e.g. "tiny-shapes", "v1-5-pruned-emaonly"). */
  name: string;
  unet: UNetModel;
  textEncoder: ClipTextModel;
  tokenizer: Tokenizer;
  /** The VAE for latent-space models; omit for pixel-space models. */
  vae?: AutoencoderKL;
  /** The image side the model was trained at, in pixels (512 for SD 1.x). */
  imageSize: number;
  /** A1111's "Clip skip" used when encoding prompts (default 1). */
  clipSkip?: number;
  /** A1111's `sd_checkpoint` short hash of the file the model came from, if known. */
  checkpointHash?: string | null;
}

/** A frozen diffusion base model; see the module comment. */
export class BaseModel {
  readonly name: string;
  readonly unet: UNetModel;
  readonly textEncoder: ClipTextModel;
  readonly tokenizer: Tokenizer;
  readonly vae: AutoencoderKL | undefined;
  readonly imageSize: number;
  clipSkip: number;
  readonly checkpointHash: string | null;

  constructor(parts: BaseModelParts) {
    this.name = parts.name;
    this.unet = parts.unet;
    this.textEncoder = parts.textEncoder;
    this.tokenizer = parts.tokenizer;
    this.vae = parts.vae;
    this.imageSize = parts.imageSize;
    this.clipSkip = parts.clipSkip ?? 1;
    this.checkpointHash = parts.checkpointHash ?? null;
    const want = this.unet.config.context_dim;
    if (this.textEncoder.config.width !== want) {
      throw new Error(`${this.name}: the text encoder is ${this.textEncoder.config.width} wide but the UNet expects context_dim ${want}`);
    }
  }

  /**
   * Widths whose hypernetwork modules this model uses (its attention layers' context widths):
   * `createHypernetwork({ name, dims: base.contextDims })` gives a network that fits this model.
   */
  get contextDims(): number[] {
    return this.unet.contextDims;
  }

  /** "latent" when a VAE maps images to the UNet's space, "pixel" otherwise. */
  get space(): "latent" | "pixel" {
    return this.vae ? "latent" : "pixel";
  }

  /** Pixels per UNet cell: the VAE's down factor (8 for SD), or 1 in pixel space. */
  get downscale(): number {
    return this.vae ? this.vae.downFactor : 1;
  }

  /** Side of the UNet input at the model's native image size. */
  get sampleSize(): number {
    return this.imageSize / this.downscale;
  }

  /** Channels of the UNet's input (4 for SD latents, 3 for RGB pixel space). */
  get channels(): number {
    return this.unet.config.in_channels;
  }

  /** Width of the text context (768 for SD 1.x). */
  get contextDim(): number {
    return this.unet.config.context_dim;
  }

  /**
   * Prompts → text context `[B, T, contextDim]` (prompts longer than the encoder's window are
   * chunked as A1111 does). The caller owns the tensor.
   */
  encodeText(prompts: string[]): tf.Tensor3D {
    const { ids } = this.tokenizer.encode(prompts);
    return this.textEncoder.encode(ids, { clipSkip: this.clipSkip });
  }

  /** Images NHWC in [-1, 1] → UNet-space tensors (scaled latents, or the pixels themselves). */
  encodeImages(images: tf.Tensor4D, opts: { sample?: boolean; seed?: number } = {}): tf.Tensor4D {
    if (!this.vae) return images.clone();
    return this.vae.encodeToLatents(images, opts);
  }

  /**
   * One training image → its VAE posterior in UNet units, as the training dataset caches it:
   * pixels HWC in [-1, 1] → the mean and standard deviation of `scaleFactor · z` (shape
   * `[H/f, W/f, zChannels]`). Read back with `await data()`, which every backend has (WebGPU in
   * Node cannot read synchronously). Pixel-space models have no posterior and refuse.
   */
  async encodePosterior(pixels: Float32Array, shape: [number, number, number]): Promise<LatentDistribution> {
    const vae = this.vae;
    if (!vae) throw new Error(`${this.name}: a pixel-space model has no VAE; its training images are used as they are`);
    const s = vae.config.scaleFactor;
    const [mean, std] = tf.tidy(() => {
      const dist = vae.encode(tf.tensor4d(pixels, [1, ...shape]));
      return [tf.mul(dist.mean, s).squeeze([0]), tf.mul(tf.exp(tf.mul(dist.logvar, 0.5)), s).squeeze([0])];
    });
    try {
      const [m, sd] = await Promise.all([mean.data(), std.data()]);
      return { shape: mean.shape as [number, number, number], mean: m as Float32Array, std: sd as Float32Array };
    } finally {
      tf.dispose([mean, std]);
    }
  }

  /** UNet-space tensors → images NHWC in [-1, 1]. */
  decode(x: tf.Tensor4D): tf.Tensor4D {
    if (!this.vae) return tf.tidy(() => tf.clipByValue(x, -1, 1) as tf.Tensor4D);
    return this.vae.decode(x);
  }

  /** Free every weight of the model. */
  dispose(): void {
    this.unet.dispose();
    this.textEncoder.dispose();
    this.vae?.dispose();
  }
}
