/**
 * UNet configuration, named exactly as the LDM yaml names it (`model.params.unet_config.params` in
 * `v1-inference.yaml`), so a config can be copied from a yaml or a fixture without translation.
 *
 * The architecture these numbers describe (LDM `openaimodel.UNetModel` with `SpatialTransformer`):
 * - `channel_mult.length` resolution levels; level `l` has width `model_channels · channel_mult[l]`
 *   and sits at downsample factor `ds = 2^l` (1, 2, 4, …);
 * - `num_res_blocks` ResBlocks per level on the way down, one more on the way up;
 * - a SpatialTransformer after each ResBlock of a level whose `ds` is in `attention_resolutions`,
 *   and always one in the middle block;
 * - attention heads: `num_head_channels` wide each when set (SD 2.x: 64), else `num_heads` heads per
 *   layer (SD 1.x: 8, so the head width grows with the layer width: 40/80/160).
 */

/** Constructor arguments of the LDM UNet (only the ones that change the architecture). */
export interface UNetConfig {
  /** Channels of the latent input (4 for SD). */
  in_channels: number;
  /** Channels of the predicted noise (4 for SD). */
  out_channels: number;
  /** Width of the first level; the time embedding is `4 · model_channels` wide. */
  model_channels: number;
  /** Downsample factors (1, 2, 4, …) whose levels get SpatialTransformers. */
  attention_resolutions: number[];
  /** ResBlocks per level on the way down (the way up has one more). */
  num_res_blocks: number;
  /** Width multiplier per level. */
  channel_mult: number[];
  /** Heads per attention layer, used when `num_head_channels` is -1. */
  num_heads: number;
  /** Width of each head (overrides `num_heads` when not -1). */
  num_head_channels: number;
  /** BasicTransformerBlocks per SpatialTransformer. */
  transformer_depth: number;
  /** Width of the conditioning sequence (text-encoder output): 768 for SD 1.x, 1024 for SD 2.x. */
  context_dim: number;
  /** SD 2.x: `proj_in`/`proj_out` are Linear `[c, c]` instead of 1×1 convs `[c, c, 1, 1]`. */
  use_linear_in_transformer: boolean;
  /** LDM's legacy head-width rule; with spatial transformers it gives the same widths either way. */
  legacy: boolean;
  /** Must be true: attention layers are SpatialTransformers (the only kind SD uses). */
  use_spatial_transformer: boolean;
  /**
   * Groups of every GroupNorm (diffusers' `norm_num_groups`; LDM hard-codes 32, the default). A small
   * UNet needs fewer: with one channel per group, GroupNorm removes each channel's spatial mean, so the
   * output can no longer follow the input's mean colour (see models/tiny/MODEL_CARD.md).
   */
  norm_num_groups?: number;
}

/** Stable Diffusion 1.x (1.4 / 1.5), from CompVis `configs/stable-diffusion/v1-inference.yaml`. */
export const SD15_UNET: Readonly<UNetConfig> = Object.freeze({
  in_channels: 4,
  out_channels: 4,
  model_channels: 320,
  attention_resolutions: [4, 2, 1],
  num_res_blocks: 2,
  channel_mult: [1, 2, 4, 4],
  num_heads: 8,
  num_head_channels: -1,
  transformer_depth: 1,
  context_dim: 768,
  use_linear_in_transformer: false,
  legacy: false,
  use_spatial_transformer: true,
});

/**
 * A small latent-space UNet (4 channels in and out, as SD): the same architecture at CPU size, for
 * tests and the bench (`--config tiny`). The embedded tiny model is a different, pixel-space
 * config (`TINY_MODEL_UNET` in `src/tiny/model.ts`).
 * Three levels of widths 32, 128, 128 (GroupNorm needs multiples of 32) at 1×, ½×, ¼× resolution;
 * attention at the first two levels and in the middle, so the self-attention widths are 32 and 128
 * and the cross-attention context width (the tiny text encoder's width) is 64 — three distinct
 * widths, as in SD 1.x (320/640/1280 self, 768 cross), so a hypernetwork module keyed by width
 * touches exactly one kind of layer. Heads are 16 channels wide (2 heads at 32, 8 at 128).
 * One ResBlock per level keeps a training step fast on the cpu/wasm backends.
 */
export const TINY_LATENT_UNET: Readonly<UNetConfig> = Object.freeze({
  in_channels: 4,
  out_channels: 4,
  model_channels: 32,
  attention_resolutions: [1, 2],
  num_res_blocks: 1,
  channel_mult: [1, 4, 4],
  num_heads: -1,
  num_head_channels: 16,
  transformer_depth: 1,
  context_dim: 64,
  use_linear_in_transformer: false,
  legacy: false,
  use_spatial_transformer: true,
});

/** The presets by the names the bench and scripts take (`--config sd15`). */
export const UNET_PRESETS = { sd15: SD15_UNET, tiny: TINY_LATENT_UNET } as const;

/** Width of level `level`. */
export function levelWidth(cfg: UNetConfig, level: number): number {
  return cfg.model_channels * cfg.channel_mult[level]!;
}

/** Heads and head width of a SpatialTransformer of width `ch` (LDM's rule, legacy included). */
export function headsFor(cfg: UNetConfig, ch: number): { heads: number; dimHead: number } {
  let heads = cfg.num_heads;
  let dimHead: number;
  if (cfg.num_head_channels === -1) {
    dimHead = Math.floor(ch / heads);
  } else {
    heads = Math.floor(ch / cfg.num_head_channels);
    dimHead = cfg.num_head_channels;
  }
  if (cfg.legacy) dimHead = Math.floor(ch / heads);
  return { heads, dimHead };
}

/**
 * Check a config and throw one error listing every problem (what is wrong, what to change).
 * Returns the config for chaining.
 */
export function validateConfig(cfg: UNetConfig, where = "UNet config"): UNetConfig {
  const errs: string[] = [];
  const posInt = (name: keyof UNetConfig): void => {
    const v = cfg[name];
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) errs.push(`${name} must be a positive integer (got ${JSON.stringify(v)})`);
  };
  posInt("in_channels");
  posInt("out_channels");
  posInt("model_channels");
  posInt("num_res_blocks");
  posInt("transformer_depth");
  posInt("context_dim");
  if (!Array.isArray(cfg.channel_mult) || cfg.channel_mult.length === 0 || !cfg.channel_mult.every((m) => Number.isInteger(m) && m > 0)) {
    errs.push(`channel_mult must be a non-empty list of positive integers (got ${JSON.stringify(cfg.channel_mult)})`);
  }
  if (
    !Array.isArray(cfg.attention_resolutions) ||
    !cfg.attention_resolutions.every((r) => Number.isInteger(r) && r > 0 && (r & (r - 1)) === 0)
  ) {
    errs.push(`attention_resolutions must be a list of downsample factors 1, 2, 4, … (got ${JSON.stringify(cfg.attention_resolutions)})`);
  }
  if (cfg.use_spatial_transformer !== true) {
    errs.push("use_spatial_transformer must be true: only the SpatialTransformer attention of Stable Diffusion is implemented");
  }
  const nh = cfg.num_heads;
  const nhc = cfg.num_head_channels;
  if (!Number.isInteger(nh) || !Number.isInteger(nhc)) errs.push("num_heads and num_head_channels must be integers (-1 for unset)");
  else if (nh === -1 && nhc === -1) errs.push("set num_heads (SD 1.x: 8) or num_head_channels (SD 2.x: 64); both are -1");
  else if ((nhc === -1 && nh <= 0) || (nhc !== -1 && nhc <= 0))
    errs.push(`num_heads (${nh}) / num_head_channels (${nhc}) must be positive or -1`);
  const groups = normGroups(cfg);
  if (!Number.isInteger(groups) || groups <= 0)
    errs.push(`norm_num_groups must be a positive integer (got ${JSON.stringify(cfg.norm_num_groups)})`);
  if (errs.length === 0) {
    const widths = new Set<number>(cfg.channel_mult.map((_, l) => levelWidth(cfg, l)));
    for (const w of [...widths].sort((a, b) => a - b)) {
      if (w % groups !== 0)
        errs.push(
          `level width ${w} is not a multiple of ${groups} (GroupNorm uses ${groups} groups); pick model_channels/channel_mult (or norm_num_groups) so every width is`,
        );
    }
    const levelsWithAttn = cfg.channel_mult.map((_, l) => l).filter((l) => cfg.attention_resolutions.includes(2 ** l));
    const attnWidths = new Set([...levelsWithAttn.map((l) => levelWidth(cfg, l)), levelWidth(cfg, cfg.channel_mult.length - 1)]);
    for (const w of attnWidths) {
      const { heads, dimHead } = headsFor(cfg, w);
      if (heads * dimHead !== w)
        errs.push(`attention width ${w} does not split into ${heads} heads of ${dimHead} channels; change num_heads/num_head_channels`);
    }
    const maxDs = 2 ** (cfg.channel_mult.length - 1);
    for (const r of cfg.attention_resolutions) {
      if (r > maxDs) errs.push(`attention_resolutions has ${r} but the deepest level is at downsample factor ${maxDs}`);
    }
  }
  for (const k of ["use_linear_in_transformer", "legacy"] as const) {
    if (typeof cfg[k] !== "boolean") errs.push(`${k} must be true or false (got ${JSON.stringify(cfg[k])})`);
  }
  if (errs.length) throw new Error(`${where} is invalid:\n  - ${errs.join("\n  - ")}`);
  return cfg;
}

/** LDM yaml keys that do not change the inference architecture; accepted and ignored. */
const IGNORED_KEYS = new Set(["image_size", "use_checkpoint", "use_fp16", "dropout", "use_new_attention_order"]);

/** LDM keys accepted only at the value that SD uses (anything else is a different architecture). */
const FIXED_KEYS: Record<string, (v: unknown, raw: Record<string, unknown>) => boolean> = {
  dims: (v) => v === 2,
  conv_resample: (v) => v === true,
  use_scale_shift_norm: (v) => v === false,
  resblock_updown: (v) => v === false,
  num_classes: (v) => v === null || v === undefined,
  n_embed: (v) => v === null || v === undefined,
  num_heads_upsample: (v, raw) => v === -1 || v === raw.num_heads,
};

/**
 * Build a config from parsed JSON (e.g. `test/fixtures/ldm-tiny.config.json`, or the
 * `unet_config.params` block of an LDM yaml converted to JSON). Keys missing from `json` take
 * SD 1.5's values except the ones that define a model's size, which are required. Unknown keys
 * and unsupported variants are errors, so a typo cannot silently build a different network.
 */
export function fromJson(json: unknown, where = "UNet config JSON"): UNetConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw new Error(`${where}: expected a JSON object of LDM unet_config params`);
  const raw = json as Record<string, unknown>;
  const required = ["model_channels", "channel_mult", "attention_resolutions", "num_res_blocks", "context_dim"];
  const missing = required.filter((k) => !(k in raw));
  if (missing.length)
    throw new Error(`${where}: missing ${missing.join(", ")} (these define the model's size; copy them from the model's yaml)`);
  const known = new Set([...Object.keys(SD15_UNET), "norm_num_groups"]);
  const cfg: Record<string, unknown> = { ...SD15_UNET, num_heads: -1, num_head_channels: -1 };
  for (const [k, v] of Object.entries(raw)) {
    if (known.has(k)) cfg[k] = v;
    else if (IGNORED_KEYS.has(k)) continue;
    else if (k in FIXED_KEYS) {
      if (!FIXED_KEYS[k]!(v, raw))
        throw new Error(`${where}: ${k} = ${JSON.stringify(v)} is not supported (this UNet implements the Stable Diffusion variant only)`);
    } else {
      throw new Error(`${where}: unknown key "${k}" (expected LDM unet_config names such as ${[...known].slice(0, 5).join(", ")}, …)`);
    }
  }
  if (!("num_heads" in raw) && !("num_head_channels" in raw)) cfg.num_heads = SD15_UNET.num_heads;
  if (Array.isArray(cfg.transformer_depth)) {
    throw new Error(`${where}: transformer_depth as a per-level list (SDXL) is not supported; give one number`);
  }
  return validateConfig(cfg as unknown as UNetConfig, where);
}

/** GroupNorm groups of a config: `norm_num_groups`, or LDM's fixed 32 when unset. */
export function normGroups(cfg: Pick<UNetConfig, "norm_num_groups">): number {
  return cfg.norm_num_groups ?? 32;
}
