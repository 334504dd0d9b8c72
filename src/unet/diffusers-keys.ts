/**
 * Diffusers `UNet2DConditionModel` names ↔ LDM `UNetModel` names, by rule (no table).
 *
 * Both layouts hold the same tensors with the same shapes; only the container names differ.
 * With R = num_res_blocks and level i (diffusers counts up-blocks deepest first, as LDM's
 * output_blocks do):
 *
 *   down_blocks.i.resnets.j          ↔ input_blocks.(i(R+1)+j+1).0
 *   down_blocks.i.attentions.j       ↔ input_blocks.(i(R+1)+j+1).1
 *   down_blocks.i.downsamplers.0.conv ↔ input_blocks.((i+1)(R+1)).0.op
 *   mid_block.resnets.j              ↔ middle_block.(2j)
 *   mid_block.attentions.0           ↔ middle_block.1
 *   up_blocks.i.resnets.j            ↔ output_blocks.(i(R+1)+j).0
 *   up_blocks.i.attentions.j         ↔ output_blocks.(i(R+1)+j).1
 *   up_blocks.i.upsamplers.0.conv    ↔ output_blocks.(i(R+1)+R).(2 if the level has attention else 1).conv
 *   time_embedding.linear_1/2 ↔ time_embed.0/2;  conv_in ↔ input_blocks.0.0;
 *   conv_norm_out ↔ out.0;  conv_out ↔ out.2
 *
 * Inside a resnet: norm1 ↔ in_layers.0, conv1 ↔ in_layers.2, time_emb_proj ↔ emb_layers.1,
 * norm2 ↔ out_layers.0, conv2 ↔ out_layers.3, conv_shortcut ↔ skip_connection.
 * Inside an attention (Transformer2DModel ≡ SpatialTransformer) the names are identical.
 */
import type { UNetConfig } from "./config";

const RESNET_TO_LDM: Record<string, string> = {
  norm1: "in_layers.0",
  conv1: "in_layers.2",
  time_emb_proj: "emb_layers.1",
  norm2: "out_layers.0",
  conv2: "out_layers.3",
  conv_shortcut: "skip_connection",
};
const RESNET_TO_DIFFUSERS: Record<string, string> = Object.fromEntries(Object.entries(RESNET_TO_LDM).map(([d, l]) => [l, d]));

const TOP_TO_LDM: Record<string, string> = {
  "time_embedding.linear_1": "time_embed.0",
  "time_embedding.linear_2": "time_embed.2",
  conv_in: "input_blocks.0.0",
  conv_norm_out: "out.0",
  conv_out: "out.2",
};
const TOP_TO_DIFFUSERS: Record<string, string> = Object.fromEntries(Object.entries(TOP_TO_LDM).map(([d, l]) => [l, d]));

/** Level `level` (0 = full resolution) has SpatialTransformers. */
function levelHasAttention(cfg: UNetConfig, level: number): boolean {
  return cfg.attention_resolutions.includes(2 ** level);
}

/** Rename the tail of a resnet key (`norm1.weight` → `in_layers.0.weight`); undefined if unknown. */
function mapResnetTail(tail: string, table: Record<string, string>): string | undefined {
  const m = /^([a-z_0-9]+(?:\.[0-9]+)?)\.(weight|bias)$/.exec(tail);
  if (!m) return undefined;
  const to = table[m[1]!];
  return to === undefined ? undefined : `${to}.${m[2]}`;
}

/**
 * The LDM key (without `model.diffusion_model.`) of a diffusers UNet key, or undefined when the
 * key has no LDM counterpart under this config.
 */
export function diffusersToLdmKey(key: string, cfg: UNetConfig): string | undefined {
  const R = cfg.num_res_blocks;
  const levels = cfg.channel_mult.length;
  const top = /^(time_embedding\.linear_[12]|conv_in|conv_norm_out|conv_out)\.(weight|bias)$/.exec(key);
  if (top) return `${TOP_TO_LDM[top[1]!]}.${top[2]}`;

  let m = /^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(key);
  if (m) {
    const [, dir, iS, kind, jS, tail] = m as unknown as [string, string, string, string, string, string];
    const i = Number(iS);
    const j = Number(jS);
    const level = dir === "down" ? i : levels - 1 - i;
    if (i >= levels || j >= (dir === "down" ? R : R + 1)) return undefined;
    if (kind === "attentions" && !levelHasAttention(cfg, level)) return undefined;
    const idx = dir === "down" ? i * (R + 1) + j + 1 : i * (R + 1) + j;
    const block = dir === "down" ? "input_blocks" : "output_blocks";
    if (kind === "attentions") return `${block}.${idx}.1.${tail}`;
    const inner = mapResnetTail(tail, RESNET_TO_LDM);
    return inner && `${block}.${idx}.0.${inner}`;
  }
  m = /^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$/.exec(key);
  if (m) {
    const i = Number(m[1]);
    return i < levels - 1 ? `input_blocks.${(i + 1) * (R + 1)}.0.op.${m[2]}` : undefined;
  }
  m = /^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$/.exec(key);
  if (m) {
    const i = Number(m[1]);
    if (i >= levels - 1) return undefined;
    const sub = levelHasAttention(cfg, levels - 1 - i) ? 2 : 1;
    return `output_blocks.${i * (R + 1) + R}.${sub}.conv.${m[2]}`;
  }
  m = /^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(key);
  if (m) {
    const j = Number(m[2]);
    if (m[1] === "attentions") return j === 0 ? `middle_block.1.${m[3]}` : undefined;
    if (j > 1) return undefined;
    const inner = mapResnetTail(m[3]!, RESNET_TO_LDM);
    return inner && `middle_block.${2 * j}.${inner}`;
  }
  return undefined;
}

/** The diffusers key of an LDM UNet key (without `model.diffusion_model.`), or undefined. */
export function ldmToDiffusersKey(key: string, cfg: UNetConfig): string | undefined {
  const R = cfg.num_res_blocks;
  const levels = cfg.channel_mult.length;
  const top = /^(time_embed\.[02]|input_blocks\.0\.0|out\.[02])\.(weight|bias)$/.exec(key);
  if (top) return `${TOP_TO_DIFFUSERS[top[1]!]}.${top[2]}`;

  let m = /^input_blocks\.(\d+)\.(\d+)\.(.+)$/.exec(key);
  if (m) {
    const n = Number(m[1]);
    const sub = Number(m[2]);
    const tail = m[3]!;
    const i = Math.floor((n - 1) / (R + 1));
    const j = (n - 1) % (R + 1);
    if (n < 1 || i >= levels) return undefined;
    if (j === R) {
      // the Downsample slot of level i
      const d = /^op\.(weight|bias)$/.exec(tail);
      return sub === 0 && d && i < levels - 1 ? `down_blocks.${i}.downsamplers.0.conv.${d[1]}` : undefined;
    }
    if (sub === 0) {
      const inner = mapResnetTail(tail, RESNET_TO_DIFFUSERS);
      return inner && `down_blocks.${i}.resnets.${j}.${inner}`;
    }
    return sub === 1 && levelHasAttention(cfg, i) ? `down_blocks.${i}.attentions.${j}.${tail}` : undefined;
  }
  m = /^middle_block\.(\d+)\.(.+)$/.exec(key);
  if (m) {
    const n = Number(m[1]);
    if (n === 1) return `mid_block.attentions.0.${m[2]}`;
    if (n !== 0 && n !== 2) return undefined;
    const inner = mapResnetTail(m[2]!, RESNET_TO_DIFFUSERS);
    return inner && `mid_block.resnets.${n / 2}.${inner}`;
  }
  m = /^output_blocks\.(\d+)\.(\d+)\.(.+)$/.exec(key);
  if (m) {
    const n = Number(m[1]);
    const sub = Number(m[2]);
    const tail = m[3]!;
    const i = Math.floor(n / (R + 1));
    const j = n % (R + 1);
    if (i >= levels) return undefined;
    const attn = levelHasAttention(cfg, levels - 1 - i);
    if (sub === 0) {
      const inner = mapResnetTail(tail, RESNET_TO_DIFFUSERS);
      return inner && `up_blocks.${i}.resnets.${j}.${inner}`;
    }
    if (sub === 1 && attn) return `up_blocks.${i}.attentions.${j}.${tail}`;
    const up = /^conv\.(weight|bias)$/.exec(tail);
    if (up && j === R && i < levels - 1 && sub === (attn ? 2 : 1)) return `up_blocks.${i}.upsamplers.0.conv.${up[1]}`;
    return undefined;
  }
  return undefined;
}
