/**
 * A UNet config read from a checkpoint's tensor shapes, so a file loads without a yaml beside it.
 *
 * Both key layouts describe the same tree; only the names differ. From either one this reads:
 * - the stem conv `[model_channels, in_channels, 3, 3]` and the output conv `[out_channels, …]`;
 * - per resolution level: its ResBlocks (their first conv's output width is the level's width,
 *   `model_channels · channel_mult[l]`) and whether SpatialTransformers follow them (the level's
 *   downsample factor 2^l is then in `attention_resolutions`);
 * - `num_res_blocks` = ResBlocks of the first level on the way down; `transformer_depth` from the
 *   middle block's transformer blocks; `context_dim` and Linear vs conv `proj_in` from
 *   `detectFamily`.
 * Heads are not visible in shapes: SD 1.x's 8 heads per layer, or a diffusers `config.json`'s
 * `attention_head_dim` (despite the name, the head count for SD 1.x), unless `overrides` say otherwise.
 */
import type { UNetConfig } from "./config";
import { detectFamily } from "./load";

/** Where the shapes come from: key names and stored shapes (any weight source). */
export interface ShapeSource {
  keys(): Iterable<string>;
  shapeOf(key: string): number[] | undefined;
}

/**
 * How the source names the UNet's tensors: LDM names under `prefix` (`model.diffusion_model.` in a
 * full checkpoint), or diffusers names with the folder's `unet/config.json` when there is one.
 */
export type UNetKeyLayout = { kind: "ldm"; prefix: string } | { kind: "diffusers"; json?: Record<string, unknown> };

/** One resolution level as found in the file. */
interface Level {
  width: number;
  resBlocks: number;
  attention: boolean;
}

/** What the file's names say, before it becomes a config. */
interface Found {
  stem: number[];
  outConv: number[];
  levels: Level[];
  middleDepth: number;
}

/** Read a `UNetConfig` from the shapes in `src` (see the module comment); `overrides` win. */
export function inferUNetConfig(src: ShapeSource, layout: UNetKeyLayout, overrides: Partial<UNetConfig> = {}): UNetConfig {
  const prefix = layout.kind === "ldm" ? layout.prefix : "";
  const shape = (k: string): number[] => {
    const s = src.shapeOf(prefix + k);
    if (!s)
      throw new Error(`UNet weights: no tensor "${prefix}${k}"; the file is not ${layout.kind === "ldm" ? "an LDM" : "a diffusers"} UNet`);
    return s;
  };
  const keys = new Set([...src.keys()].map((k) => (k.startsWith(prefix) ? k.slice(prefix.length) : "")));
  const found = layout.kind === "ldm" ? readLdm(keys, shape) : readDiffusers(keys, shape);
  const [mc, inCh] = found.stem as [number, number];
  const family = detectFamily(src, prefix);
  const heads = layout.kind === "diffusers" ? layout.json?.attention_head_dim : undefined;
  return {
    in_channels: inCh,
    out_channels: found.outConv[0]!,
    model_channels: mc,
    attention_resolutions: found.levels.flatMap((l, i) => (l.attention ? [2 ** i] : [])),
    num_res_blocks: found.levels[0]?.resBlocks ?? 0,
    channel_mult: found.levels.map((l) => l.width / mc),
    num_heads: typeof heads === "number" ? heads : 8,
    num_head_channels: -1,
    transformer_depth: Math.max(found.middleDepth, 1),
    context_dim: family.contextDim ?? 768,
    use_linear_in_transformer: family.linearProj ?? false,
    legacy: false,
    use_spatial_transformer: true,
    ...overrides,
  };
}

/**
 * LDM names: `input_blocks.N.0` is either a ResBlock (`in_layers.2` is its first conv) or a
 * Downsample (`op`), which starts the next level; `input_blocks.N.1` is a SpatialTransformer.
 */
function readLdm(keys: Set<string>, shape: (k: string) => number[]): Found {
  const levels: Level[] = [];
  let current: Level | undefined;
  for (let n = 1; ; n++) {
    const p = `input_blocks.${n}.`;
    if (keys.has(`${p}0.op.weight`)) {
      if (current) levels.push(current);
      current = undefined;
    } else if (keys.has(`${p}0.in_layers.2.weight`)) {
      current ??= { width: 0, resBlocks: 0, attention: false };
      current.width = shape(`${p}0.in_layers.2.weight`)[0]!;
      current.resBlocks++;
      if (keys.has(`${p}1.norm.weight`)) current.attention = true;
    } else break;
  }
  if (current) levels.push(current);
  return { stem: shape("input_blocks.0.0.weight"), outConv: shape("out.2.weight"), levels, middleDepth: depth(keys, "middle_block.1.") };
}

/** Diffusers names: `down_blocks.i.resnets.j` (first conv `conv1`) and `down_blocks.i.attentions.j`. */
function readDiffusers(keys: Set<string>, shape: (k: string) => number[]): Found {
  let count = 0;
  const resBlocks: number[] = [];
  for (const k of keys) {
    const m = /^down_blocks\.(\d+)\.resnets\.(\d+)\./.exec(k);
    if (!m) continue;
    const i = Number(m[1]);
    count = Math.max(count, i + 1);
    resBlocks[i] = Math.max(resBlocks[i] ?? 0, Number(m[2]) + 1);
  }
  const levels = Array.from({ length: count }, (_, i) => ({
    width: shape(`down_blocks.${i}.resnets.0.conv1.weight`)[0]!,
    resBlocks: resBlocks[i] ?? 0,
    attention: keys.has(`down_blocks.${i}.attentions.0.norm.weight`),
  }));
  return { stem: shape("conv_in.weight"), outConv: shape("conv_out.weight"), levels, middleDepth: depth(keys, "mid_block.attentions.0.") };
}

/** BasicTransformerBlocks in the SpatialTransformer at `at`. */
function depth(keys: Set<string>, at: string): number {
  let d = 0;
  while (keys.has(`${at}transformer_blocks.${d}.norm1.weight`)) d++;
  return d;
}
