/**
 * SD's autoencoder (LDM `AutoencoderKL`): the encoder maps an image to a diagonal Gaussian over
 * latents 8× smaller (4 channels), the decoder maps latents back to pixels. Diffusion runs on
 * latents scaled by `scaleFactor` (0.18215) so that they have roughly unit variance.
 *
 *   encode:  image [B,H,W,3] → encoder → quant_conv → (mean ‖ logvar) [B,H/8,W/8,8]
 *            z = scaleFactor · (mean + exp(logvar/2) · ε)
 *   decode:  z → z / scaleFactor → post_quant_conv → decoder → image [B,H,W,3] in ≈[−1,1]
 *
 * Module paths are LDM's keys below `first_stage_model.` (`encoder.down.1.block.0.conv1.weight`,
 * `decoder.up.3.upsample.conv.weight`, `decoder.mid.attn_1.q.weight`, …).
 */
import * as tf from "@tensorflow/tfjs";
import { Module, type ModuleOptions } from "../nn/module";
import { Conv2d, GroupNorm, ModuleList, silu } from "../nn/layers";
import { DownsamplePadBottomRight, Upsample } from "../nn/resample";
import { AttnBlock, type NormConfig, ResnetBlock } from "./blocks";

/** Shape of an autoencoder (LDM `ddconfig` names, camel-cased). */
export interface VaeConfig {
  /** Image channels (3). */
  inChannels: number;
  /** Base width (128). */
  ch: number;
  /** Width multiplier per resolution level ([1, 2, 4, 4]); one downsample between levels. */
  chMult: number[];
  /** Residual blocks per encoder level (2); the decoder has one more per level. */
  numResBlocks: number;
  /** Latent channels (4); the encoder outputs twice as many (mean and log-variance). */
  zChannels: number;
  /** GroupNorm groups (32) and epsilon (1e-6). */
  normGroups: number;
  normEps: number;
  /** Latent scale (0.18215 for SD 1.x). */
  scaleFactor: number;
}

/** SD 1.x's VAE (83,653,863 parameters). */
export const SD15_VAE: Readonly<VaeConfig> = Object.freeze({
  inChannels: 3,
  ch: 128,
  chMult: [1, 2, 4, 4],
  numResBlocks: 2,
  zChannels: 4,
  normGroups: 32,
  normEps: 1e-6,
  scaleFactor: 0.18215,
});

/** A small autoencoder with the same structure (two levels: images 2× the latent size), for tests. */
export function tinyVaeConfig(overrides: Partial<VaeConfig> = {}): VaeConfig {
  return {
    inChannels: 3,
    ch: 8,
    chMult: [1, 2],
    numResBlocks: 1,
    zChannels: 4,
    normGroups: 4,
    normEps: 1e-6,
    scaleFactor: 0.18215,
    ...overrides,
  };
}

/** `mid`: ResnetBlock → self-attention → ResnetBlock at the lowest resolution. */
export class VaeMid extends Module {
  readonly block_1: ResnetBlock;
  readonly attn_1: AttnBlock;
  readonly block_2: ResnetBlock;
  constructor(channels: number, norm: NormConfig, opts: ModuleOptions = {}) {
    super(opts);
    this.block_1 = this.child("block_1", new ResnetBlock(channels, channels, norm, this.childOptions));
    this.attn_1 = this.child("attn_1", new AttnBlock(channels, norm, this.childOptions));
    this.block_2 = this.child("block_2", new ResnetBlock(channels, channels, norm, this.childOptions));
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    return this.block_2.apply(this.attn_1.apply(this.block_1.apply(x)));
  }
}

/** One resolution level: `block.N` residual blocks, then an optional `downsample`/`upsample`. */
export class VaeLevel extends Module {
  readonly block: ModuleList<ResnetBlock>;
  readonly resample: DownsamplePadBottomRight | Upsample | undefined;
  constructor(
    widths: Array<[number, number]>,
    resample: "downsample" | "upsample" | undefined,
    norm: NormConfig,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    this.block = this.child("block", new ModuleList<ResnetBlock>());
    for (const [cin, cout] of widths) this.block.push(new ResnetBlock(cin, cout, norm, this.childOptions));
    const c = widths[widths.length - 1]![1];
    if (resample === "downsample") this.resample = this.child("downsample", new DownsamplePadBottomRight(c, this.childOptions));
    else if (resample === "upsample") this.resample = this.child("upsample", new Upsample(c, this.childOptions));
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    let h = x;
    for (const b of this.block.items) h = b.apply(h);
    return this.resample ? this.resample.apply(h) : h;
  }
}

function normOf(cfg: VaeConfig): NormConfig {
  return { groups: cfg.normGroups, eps: cfg.normEps };
}

/** Image → 2·z channels, downsampling between levels (LDM `Encoder`, `double_z`). */
export class VaeEncoder extends Module {
  readonly conv_in: Conv2d;
  readonly down: ModuleList<VaeLevel>;
  readonly mid: VaeMid;
  readonly norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  constructor(cfg: VaeConfig, opts: ModuleOptions = {}) {
    super(opts);
    const o = this.childOptions;
    const norm = normOf(cfg);
    const n = cfg.chMult.length;
    this.conv_in = this.child("conv_in", new Conv2d(cfg.inChannels, cfg.ch, 3, 1, 1, o));
    this.down = this.child("down", new ModuleList<VaeLevel>());
    let cin = cfg.ch;
    for (let i = 0; i < n; i++) {
      const cout = cfg.ch * cfg.chMult[i]!;
      const widths: Array<[number, number]> = [];
      for (let j = 0; j < cfg.numResBlocks; j++, cin = cout) widths.push([cin, cout]);
      this.down.push(new VaeLevel(widths, i < n - 1 ? "downsample" : undefined, norm, o));
    }
    this.mid = this.child("mid", new VaeMid(cin, norm, o));
    this.norm_out = this.child("norm_out", new GroupNorm(cfg.normGroups, cin, cfg.normEps, o));
    this.conv_out = this.child("conv_out", new Conv2d(cin, 2 * cfg.zChannels, 3, 1, 1, o));
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    let h = this.conv_in.apply(x);
    for (const level of this.down.items) h = level.apply(h);
    h = this.mid.apply(h);
    return this.conv_out.apply(silu(this.norm_out.apply(h)) as tf.Tensor4D);
  }
}

/**
 * z channels → image, upsampling between levels (LDM `Decoder`). LDM numbers the levels by
 * resolution, so `up.{n−1}` (lowest resolution, widest) runs first and `up.0` last.
 */
export class VaeDecoder extends Module {
  readonly conv_in: Conv2d;
  readonly mid: VaeMid;
  readonly up: ModuleList<VaeLevel>;
  readonly norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  constructor(cfg: VaeConfig, opts: ModuleOptions = {}) {
    super(opts);
    const o = this.childOptions;
    const norm = normOf(cfg);
    const n = cfg.chMult.length;
    let cin = cfg.ch * cfg.chMult[n - 1]!;
    this.conv_in = this.child("conv_in", new Conv2d(cfg.zChannels, cin, 3, 1, 1, o));
    this.mid = this.child("mid", new VaeMid(cin, norm, o));
    // Build from the lowest resolution up (that is where the widths flow from), register as up.0 … up.{n−1}.
    const levels: VaeLevel[] = [];
    for (let i = n - 1; i >= 0; i--) {
      const cout = cfg.ch * cfg.chMult[i]!;
      const widths: Array<[number, number]> = [];
      for (let j = 0; j <= cfg.numResBlocks; j++, cin = cout) widths.push([cin, cout]);
      levels[i] = new VaeLevel(widths, i > 0 ? "upsample" : undefined, norm, o);
    }
    this.up = this.child("up", new ModuleList<VaeLevel>(levels));
    this.norm_out = this.child("norm_out", new GroupNorm(cfg.normGroups, cin, cfg.normEps, o));
    this.conv_out = this.child("conv_out", new Conv2d(cin, cfg.inChannels, 3, 1, 1, o));
  }

  apply(z: tf.Tensor4D): tf.Tensor4D {
    let h = this.mid.apply(this.conv_in.apply(z));
    for (let i = this.up.length - 1; i >= 0; i--) h = this.up.at(i).apply(h);
    return this.conv_out.apply(silu(this.norm_out.apply(h)) as tf.Tensor4D);
  }
}

/** The encoder's output: a diagonal Gaussian over unscaled latents, NHWC `[B, H/f, W/f, zChannels]` each. */
export interface LatentDistribution {
  mean: tf.Tensor4D;
  /** log σ², clamped to [−30, 20] as LDM does. */
  logvar: tf.Tensor4D;
}

/** Options for `AutoencoderKL.decode`. */
export interface DecodeOptions {
  /** Clamp the image to [−1, 1] (default true). */
  clamp?: boolean;
  /**
   * Decode in overlapping latent tiles of this size (e.g. 64 → 512-px tiles) to bound memory;
   * tiles are blended linearly over the overlap. Unset: decode in one piece.
   */
  tileSize?: number;
  /** Overlap of neighbouring tiles, in latent pixels (default tileSize / 4). */
  tileOverlap?: number;
}

/** LDM's `AutoencoderKL`: `encoder`, `quant_conv`, `post_quant_conv`, `decoder`. */
export class AutoencoderKL extends Module {
  readonly encoder: VaeEncoder;
  readonly decoder: VaeDecoder;
  readonly quant_conv: Conv2d;
  readonly post_quant_conv: Conv2d;
  constructor(
    readonly config: VaeConfig,
    opts: ModuleOptions = {},
  ) {
    super(opts);
    const o = this.childOptions;
    const z = config.zChannels;
    this.encoder = this.child("encoder", new VaeEncoder(config, o));
    this.decoder = this.child("decoder", new VaeDecoder(config, o));
    this.quant_conv = this.child("quant_conv", new Conv2d(2 * z, 2 * z, 1, 1, 0, o));
    this.post_quant_conv = this.child("post_quant_conv", new Conv2d(z, z, 1, 1, 0, o));
  }

  /** Image size ÷ latent size (8 for SD). */
  get downFactor(): number {
    return 2 ** (this.config.chMult.length - 1);
  }

  /**
   * Image NHWC `[B, H, W, 3]` in [−1, 1] → the latent Gaussian (unscaled). H and W must be
   * multiples of `downFactor`. The caller owns (and disposes) both returned tensors.
   */
  encode(image: tf.Tensor4D): LatentDistribution {
    const f = this.downFactor;
    const [, h, w, c] = image.shape;
    if (h % f !== 0 || w % f !== 0)
      throw new Error(`AutoencoderKL.encode: image ${h}×${w} is not a multiple of ${f}; resize or crop it first`);
    if (c !== this.config.inChannels) throw new Error(`AutoencoderKL.encode: expected ${this.config.inChannels} channels (NHWC), got ${c}`);
    const moments = tf.tidy(() => this.quant_conv.apply(this.encoder.apply(image)));
    const z = this.config.zChannels;
    const [mean, rawLogvar] = tf.split(moments, [z, z], -1) as [tf.Tensor4D, tf.Tensor4D];
    const logvar = tf.clipByValue(rawLogvar, -30, 20) as tf.Tensor4D;
    moments.dispose();
    rawLogvar.dispose();
    return { mean, logvar };
  }

  /**
   * Scaled latents for diffusion: `scaleFactor · (mean + exp(logvar/2) · ε)` with ε ~ N(0, I)
   * (seeded when `seed` is given), or `scaleFactor · mean` when `sample` is false.
   */
  latentsFrom(dist: LatentDistribution, opts: { sample?: boolean; seed?: number } = {}): tf.Tensor4D {
    return tf.tidy(() => {
      let z: tf.Tensor = dist.mean;
      if (opts.sample ?? true) {
        const eps = tf.randomNormal(dist.mean.shape, 0, 1, "float32", opts.seed);
        z = tf.add(dist.mean, tf.mul(tf.exp(tf.mul(dist.logvar, 0.5)), eps));
      }
      return tf.mul(z, this.config.scaleFactor) as tf.Tensor4D;
    });
  }

  /** Image → scaled latents in one call (encode + `latentsFrom`). */
  encodeToLatents(image: tf.Tensor4D, opts: { sample?: boolean; seed?: number } = {}): tf.Tensor4D {
    const dist = this.encode(image);
    try {
      return this.latentsFrom(dist, opts);
    } finally {
      dist.mean.dispose();
      dist.logvar.dispose();
    }
  }

  /**
   * Scaled latents NHWC `[B, h, w, zChannels]` → image NHWC `[B, h·f, w·f, 3]` in [−1, 1].
   * The caller owns the returned tensor.
   */
  decode(latents: tf.Tensor4D, opts: DecodeOptions = {}): tf.Tensor4D {
    const [, , , c] = latents.shape;
    if (c !== this.config.zChannels)
      throw new Error(`AutoencoderKL.decode: expected ${this.config.zChannels} latent channels (NHWC), got ${c}`);
    const img =
      opts.tileSize === undefined
        ? this.decodeWhole(latents)
        : this.decodeTiled(latents, opts.tileSize, opts.tileOverlap ?? Math.floor(opts.tileSize / 4));
    if (opts.clamp === false) return img;
    const clamped = tf.clipByValue(img, -1, 1) as tf.Tensor4D;
    img.dispose();
    return clamped;
  }

  private decodeWhole(latents: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => this.decoder.apply(this.post_quant_conv.apply(tf.div(latents, this.config.scaleFactor) as tf.Tensor4D)));
  }

  /**
   * Decode overlapping tiles and blend them: each tile's pixels are weighted by a ramp that rises
   * linearly across the overlap (from the tile's edge inwards), and the image is Σ wᵢ·tileᵢ / Σ wᵢ.
   * Tiles see less context than a whole decode (the mid attention is global), so seams are
   * suppressed, not mathematically absent.
   */
  private decodeTiled(latents: tf.Tensor4D, tile: number, overlap: number): tf.Tensor4D {
    const [b, h, w] = latents.shape;
    if (!Number.isInteger(tile) || tile < 1) throw new Error(`AutoencoderKL.decode: tileSize must be a positive integer, got ${tile}`);
    if (!Number.isInteger(overlap) || overlap < 0 || overlap >= tile)
      throw new Error(`AutoencoderKL.decode: tileOverlap must be an integer in [0, tileSize), got ${overlap}`);
    if (h <= tile && w <= tile) return this.decodeWhole(latents);
    const f = this.downFactor;
    const starts = (n: number): number[] => {
      if (n <= tile) return [0];
      const out: number[] = [];
      for (let s = 0; ; s += tile - overlap) {
        if (s + tile >= n) {
          out.push(n - tile);
          break;
        }
        out.push(s);
      }
      return out;
    };
    const ys = starts(h);
    const xs = starts(w);
    const ramp = (len: number, atStart: boolean, atEnd: boolean): Float32Array => {
      const r = new Float32Array(len).fill(1);
      const o = overlap * f;
      for (let i = 0; i < len; i++) {
        let v = 1;
        if (!atStart && o > 0) v = Math.min(v, (i + 0.5) / o);
        if (!atEnd && o > 0) v = Math.min(v, (len - i - 0.5) / o);
        r[i] = Math.min(1, v);
      }
      return r;
    };
    let acc = tf.zeros([b, h * f, w * f, this.config.inChannels]) as tf.Tensor4D;
    let wsum = tf.zeros([1, h * f, w * f, 1]) as tf.Tensor4D;
    for (const y0 of ys) {
      for (const x0 of xs) {
        const th = Math.min(tile, h);
        const tw = Math.min(tile, w);
        const [nextAcc, nextW] = tf.tidy(() => {
          const part = tf.slice(latents, [0, y0, x0, 0], [b, th, tw, -1]);
          const img = this.decodeWhole(part);
          const wy = tf.tensor(ramp(th * f, y0 === 0, y0 + th >= h), [th * f, 1]);
          const wx = tf.tensor(ramp(tw * f, x0 === 0, x0 + tw >= w), [1, tw * f]);
          const weight = tf.mul(wy, wx).reshape([1, th * f, tw * f, 1]);
          const pad: Array<[number, number]> = [
            [0, 0],
            [y0 * f, (h - y0 - th) * f],
            [x0 * f, (w - x0 - tw) * f],
            [0, 0],
          ];
          return [tf.add(acc, tf.pad(tf.mul(img, weight), pad)) as tf.Tensor4D, tf.add(wsum, tf.pad(weight, pad)) as tf.Tensor4D];
        });
        acc.dispose();
        wsum.dispose();
        acc = nextAcc;
        wsum = nextW;
      }
    }
    const out = tf.div(acc, wsum) as tf.Tensor4D;
    acc.dispose();
    wsum.dispose();
    return out;
  }
}
