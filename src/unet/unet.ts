/**
 * The Stable Diffusion 1.x UNet (LDM `openaimodel.UNetModel` with SpatialTransformers), in tfjs.
 *
 * It predicts the noise ε in a noisy latent x_t, given the step t and a text context:
 *
 *   emb  = time_embed(sinusoid(t))                       Linear → SiLU → Linear, 4·model_channels wide
 *   down: input_blocks[0] = conv3×3; then per level: (ResBlock [+ SpatialTransformer]) × num_res_blocks,
 *         and a stride-2 Downsample between levels — every block's output is pushed on a skip stack
 *   mid:  ResBlock → SpatialTransformer → ResBlock
 *   up:   per level, deepest first: (concat(h, skip.pop()) → ResBlock [+ SpatialTransformer]) ×
 *         (num_res_blocks + 1), and an Upsample after the last block of every level but the top
 *   out:  GroupNorm → SiLU → conv3×3 → ε
 *
 * Every module's path is its LDM checkpoint key (`input_blocks.1.1.transformer_blocks.0.attn2.to_k`),
 * so `namedParameters()` lists exactly the keys of a `model.diffusion_model.*` state dict.
 * Tensors are NHWC throughout.
 */
import * as tf from "@tensorflow/tfjs";
import { Conv2d, GroupNorm, IndexedModules, Linear, ModuleList, silu } from "../nn/layers";
import { numel } from "../io/host-tensor";
import { Module, type ModuleOptions } from "../nn/module";
import { type AttentionProcessor, CrossAttention, SpatialTransformer, defaultProcessor } from "./attention";
import { type UNetConfig, headsFor, levelWidth, normGroups, validateConfig } from "./config";
import { ResBlock } from "./resblock";
import { timestepEmbedding } from "./timestep";
import { DownsamplePadAllSides, Upsample } from "../nn/resample";

/**
 * One entry of `input_blocks` / `output_blocks` / `middle_block` (LDM `TimestepEmbedSequential`):
 * its layers run in order; ResBlocks also get the time embedding, transformers the context.
 */
export class UNetStage extends ModuleList<Module> {
  apply(h: tf.Tensor4D, emb: tf.Tensor2D, context: tf.Tensor): tf.Tensor4D {
    for (const layer of this.items) {
      if (layer instanceof ResBlock) h = layer.apply(h, emb);
      else if (layer instanceof SpatialTransformer) h = layer.apply(h, context);
      else if (layer instanceof DownsamplePadAllSides || layer instanceof Upsample || layer instanceof Conv2d) h = layer.apply(h);
      else throw new Error(`UNetStage: unexpected layer ${layer.constructor.name}`);
    }
    return h;
  }
}

/** Callbacks around one `UNetModel.forward` (see `addForwardHook`). */
export interface ForwardHook {
  /** Called before the pass with its timesteps (undefined when they came as a tensor). */
  begin(t?: readonly number[]): void;
  end(): void;
}

/** The UNet. Build with a config (`SD15_UNET`, `TINY_LATENT_UNET`, or `fromJson(...)`), then load weights (`loadUNetWeights`). */
export class UNetModel extends Module {
  readonly config: Readonly<UNetConfig>;
  readonly timeEmbed1: Linear;
  readonly timeEmbed2: Linear;
  readonly input_blocks: ModuleList<UNetStage>;
  readonly middle_block: UNetStage;
  readonly output_blocks: ModuleList<UNetStage>;
  readonly outNorm: GroupNorm;
  readonly outConv: Conv2d;
  private readonly attention: Array<[string, CrossAttention]>;
  private readonly forwardHooks = new Set<ForwardHook>();

  /**
   * `opts.init` chooses how weights start (default: PyTorch-like random); pass `zerosInit` when the
   * weights will be loaded from a file anyway — it is much faster for SD 1.5's 860 M parameters.
   */
  constructor(config: UNetConfig, opts: ModuleOptions = {}) {
    super(opts);
    const cfg = validateConfig({
      ...config,
      channel_mult: [...config.channel_mult],
      attention_resolutions: [...config.attention_resolutions],
    });
    this.config = Object.freeze(cfg);
    const o = this.childOptions;
    const mc = cfg.model_channels;
    const embDim = 4 * mc;
    const levels = cfg.channel_mult.length;
    const groups = normGroups(cfg);
    const transformer = (ch: number): SpatialTransformer => {
      const { heads, dimHead } = headsFor(cfg, ch);
      return new SpatialTransformer(ch, heads, dimHead, cfg.transformer_depth, cfg.context_dim, cfg.use_linear_in_transformer, o, groups);
    };
    const stage = (...layers: Module[]): UNetStage => {
      const s = new UNetStage();
      for (const l of layers) s.push(l);
      return s;
    };

    this.timeEmbed1 = new Linear(mc, embDim, o);
    this.timeEmbed2 = new Linear(embDim, embDim, o);
    this.child(
      "time_embed",
      new IndexedModules([
        [0, this.timeEmbed1],
        [2, this.timeEmbed2],
      ]),
    );

    // Down: record the width of every stage's output; the up path consumes them in reverse.
    this.input_blocks = this.child("input_blocks", new ModuleList<UNetStage>());
    this.input_blocks.push(stage(new Conv2d(cfg.in_channels, mc, 3, 1, 1, o)));
    const skipWidths = [mc];
    let ch = mc;
    let ds = 1;
    for (let level = 0; level < levels; level++) {
      for (let i = 0; i < cfg.num_res_blocks; i++) {
        const layers: Module[] = [new ResBlock(ch, levelWidth(cfg, level), embDim, o, groups)];
        ch = levelWidth(cfg, level);
        if (cfg.attention_resolutions.includes(ds)) layers.push(transformer(ch));
        this.input_blocks.push(stage(...layers));
        skipWidths.push(ch);
      }
      if (level !== levels - 1) {
        this.input_blocks.push(stage(new DownsamplePadAllSides(ch, o)));
        skipWidths.push(ch);
        ds *= 2;
      }
    }

    this.middle_block = this.child(
      "middle_block",
      stage(new ResBlock(ch, ch, embDim, o, groups), transformer(ch), new ResBlock(ch, ch, embDim, o, groups)),
    );

    this.output_blocks = this.child("output_blocks", new ModuleList<UNetStage>());
    for (let level = levels - 1; level >= 0; level--) {
      for (let i = 0; i <= cfg.num_res_blocks; i++) {
        const skip = skipWidths.pop()!;
        const layers: Module[] = [new ResBlock(ch + skip, levelWidth(cfg, level), embDim, o, groups)];
        ch = levelWidth(cfg, level);
        if (cfg.attention_resolutions.includes(ds)) layers.push(transformer(ch));
        if (level !== 0 && i === cfg.num_res_blocks) {
          layers.push(new Upsample(ch, o));
          ds /= 2;
        }
        this.output_blocks.push(stage(...layers));
      }
    }

    this.outNorm = new GroupNorm(groups, ch, 1e-5, o);
    this.outConv = new Conv2d(mc, cfg.out_channels, 3, 1, 1, o);
    this.child(
      "out",
      new IndexedModules([
        [0, this.outNorm],
        [2, this.outConv],
      ]),
    );

    this.attention = this.namedModules()
      .filter((e): e is [string, CrossAttention] => e[1] instanceof CrossAttention)
      .map(([p, m]) => [p, m]);
  }

  /**
   * Predict the noise.
   * @param x latents, NHWC `[B, H, W, in_channels]`; H and W divisible by 2^(levels−1) (8 for SD 1.5)
   * @param t timesteps: B numbers (or one, used for the whole batch); fractional values are allowed
   * @param context conditioning `[B, T, context_dim]` (the text encoder's output)
   * @returns ε̂, NHWC `[B, H, W, out_channels]`. Intermediate tensors are freed; the caller owns the result.
   */
  forward(x: tf.Tensor4D, t: number[] | tf.Tensor1D, context: tf.Tensor3D): tf.Tensor4D {
    this.checkInputs(x, t, context);
    const hooks = [...this.forwardHooks];
    const steps = Array.isArray(t) ? t : undefined;
    try {
      // inside the try: a hook that refuses the call (a hypernetwork's timestep gate) still gets every hook's end()
      for (const hk of hooks) hk.begin(steps);
      return this.forwardInner(x, t, context);
    } finally {
      for (const hk of hooks) hk.end();
    }
  }

  private forwardInner(x: tf.Tensor4D, t: number[] | tf.Tensor1D, context: tf.Tensor3D): tf.Tensor4D {
    return tf.tidy(() => {
      const [b] = x.shape;
      let steps: tf.Tensor1D = Array.isArray(t) ? tf.tensor1d(t, "float32") : t;
      if (steps.shape[0] === 1 && b !== 1) steps = tf.tile(steps, [b]);
      const emb = this.timeEmbed2.apply(silu(this.timeEmbed1.apply(timestepEmbedding(steps, this.config.model_channels)))) as tf.Tensor2D;

      const skips: tf.Tensor4D[] = [];
      let h: tf.Tensor4D = x;
      for (const block of this.input_blocks.items) {
        h = block.apply(h, emb, context);
        skips.push(h);
      }
      h = this.middle_block.apply(h, emb, context);
      for (const block of this.output_blocks.items) {
        h = tf.concat([h, skips.pop()!], 3); // [h, skip] on channels, h first
        h = block.apply(h, emb, context);
      }
      return this.outConv.apply(this.outNorm.applySilu(h) as tf.Tensor4D);
    });
  }

  private checkInputs(x: tf.Tensor, t: number[] | tf.Tensor1D, context: tf.Tensor): void {
    const cfg = this.config;
    const f = 2 ** (cfg.channel_mult.length - 1);
    const shape = (s: readonly number[]): string => `[${s.join(", ")}]`;
    if (x.rank !== 4 || x.shape[3] !== cfg.in_channels) {
      throw new Error(
        `UNet.forward: x must be NHWC [B, H, W, ${cfg.in_channels}], got ${shape(x.shape)} (from NCHW data, transpose with [0, 2, 3, 1])`,
      );
    }
    const [b, h, w] = x.shape as number[];
    if (h! % f !== 0 || w! % f !== 0)
      throw new Error(
        `UNet.forward: latent size ${h}×${w} must be divisible by ${f} (the UNet halves it ${cfg.channel_mult.length - 1} times)`,
      );
    if (context.rank !== 3 || context.shape[0] !== b || context.shape[2] !== cfg.context_dim) {
      throw new Error(`UNet.forward: context must be [${b}, T, ${cfg.context_dim}], got ${shape(context.shape)}`);
    }
    const n = Array.isArray(t) ? t.length : t.rank === 1 ? t.shape[0] : -1;
    if (n !== 1 && n !== b) throw new Error(`UNet.forward: t must hold 1 or ${b} timesteps, got ${Array.isArray(t) ? n : shape(t.shape)}`);
  }

  // ---- the attention-processor hook ----------------------------------------------------------

  /** Every attention layer with its path (`input_blocks.1.1.transformer_blocks.0.attn1`), in forward order. */
  attentionLayers(): Array<[path: string, layer: CrossAttention]> {
    return [...this.attention];
  }

  /**
   * Set attention processors: one for every layer, or a map from layer path to processor (layers
   * not named keep their current processor). Unknown paths are an error.
   */
  setProcessor(p: AttentionProcessor | Map<string, AttentionProcessor>): void {
    if (typeof p === "function") {
      for (const [, layer] of this.attention) layer.processor = p;
      return;
    }
    const byPath = new Map(this.attention);
    const unknown = [...p.keys()].filter((k) => !byPath.has(k));
    if (unknown.length) {
      throw new Error(
        `setProcessor: no attention layer at ${unknown.slice(0, 5).join(", ")}${unknown.length > 5 ? ", …" : ""} (paths look like "${this.attention[0]?.[0]}"; see attentionLayers())`,
      );
    }
    for (const [path, proc] of p) byPath.get(path)!.processor = proc;
  }

  /**
   * The context widths this UNet's attention layers feed to `to_k`/`to_v`, ascending: the text
   * width (cross-attention) and each level's channel width (self-attention). A hypernetwork module
   * of any other width is never called.
   */
  get contextDims(): number[] {
    return [...new Set(this.attention.map(([, layer]) => layer.contextDim))].sort((a, b) => a - b);
  }

  /** The current processor of every attention layer, by path. */
  getProcessors(): Map<string, AttentionProcessor> {
    return new Map(this.attention.map(([path, layer]) => [path, layer.processor]));
  }

  /**
   * Register callbacks run just before and just after every `forward` (also when it throws), so a
   * processor can hold per-forward state — e.g. the hypernetwork's once-per-forward cross-attention
   * context — and free it when the pass ends. Returns a function that unregisters the hook.
   *
   * Why a second hook beside the attention processor: a processor sees one layer's `(x, context)`
   * and nothing else — not the timesteps (they reach the ResBlocks, never the attention layers) and
   * not where one pass ends and the next begins. Those two facts are all this hook carries; passing
   * them through every block into every processor call instead would widen the one interface that
   * every layer and every processor shares, for the sake of one user (`hypernet/attach.ts`: its
   * timestep gate and its per-pass context cache). What a layer computes is still decided only by
   * its processor.
   */
  addForwardHook(hook: ForwardHook): () => void {
    this.forwardHooks.add(hook);
    return () => {
      this.forwardHooks.delete(hook);
    };
  }

  /** Put `defaultProcessor` back on every attention layer. */
  resetProcessors(): void {
    this.setProcessor(defaultProcessor);
  }
}

/**
 * Every parameter's checkpoint key and PyTorch shape for a config, without allocating the weights
 * (SD 1.5 would need 3.4 GB): the tree is built with one-element placeholders and freed.
 */
export function unetParameterShapes(config: UNetConfig): Array<[key: string, shape: number[]]> {
  const m = new UNetModel(config, { init: () => tf.zeros([1]) });
  try {
    return m.namedParameters().map(([k, p]) => [k, [...p.torchShape]]);
  } finally {
    m.dispose();
  }
}

/** Total number of scalar parameters of a config, computed from shapes alone. */
export function unetParameterCount(config: UNetConfig): number {
  return unetParameterShapes(config).reduce((n, [, s]) => n + numel(s), 0);
}
