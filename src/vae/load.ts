/**
 * Loading SD's VAE from checkpoint files.
 *
 * The model tree uses LDM names. Files come as:
 * - LDM single file: `first_stage_model.` + LDM names (some tools write `vae.`);
 * - standalone VAE files (e.g. "vae-ft-mse-840000"): LDM names with no prefix;
 * - diffusers `vae/diffusion_pytorch_model.safetensors`: diffusers names, mapped onto LDM names
 *   by the rules in `diffusersVaeKeyToLdm` (the mid-attention weights are `[C, C]` there and
 *   `[C, C, 1, 1]` in LDM; the values are the same).
 */
import * as tf from "@tensorflow/tfjs";
import { type LoadReport, loadStateDict, zerosInit } from "../nn/module";
import { type WeightInput, type WeightSource, openWeights, renamedSource } from "../io/weight-source";
import { AutoencoderKL, SD15_VAE, type VaeConfig } from "./autoencoder";

/** LDM prefixes tried, in order, when none is given. */
export const VAE_LDM_PREFIXES = ["first_stage_model.", "vae.", ""] as const;

const ATTN_LDM_TO_DIFFUSERS: Record<string, string> = { norm: "group_norm", q: "to_q", k: "to_k", v: "to_v", proj_out: "to_out.0" };
const ATTN_DIFFUSERS_TO_LDM: Record<string, string> = {
  group_norm: "norm",
  to_q: "q",
  to_k: "k",
  to_v: "v",
  "to_out.0": "proj_out",
  // diffusers < 0.17 names, still used by the SD 1.x hub files
  query: "q",
  key: "k",
  value: "v",
  proj_attn: "proj_out",
};
const RESNET_DIFFUSERS_TO_LDM: Record<string, string> = { conv_shortcut: "nin_shortcut" };

/**
 * A diffusers VAE key → its LDM key (no prefix), or undefined if the key is not a VAE parameter.
 * `levels` is the number of resolution levels (4 for SD): diffusers numbers decoder up blocks from
 * the lowest resolution (`up_blocks.0` runs first), LDM by resolution (`up.3` runs first).
 */
export function diffusersVaeKeyToLdm(key: string, levels: number): string | undefined {
  let m: RegExpExecArray | null;
  if ((m = /^(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)$/.exec(key))) {
    return `${m[1]}.mid.block_${Number(m[2]) + 1}.${RESNET_DIFFUSERS_TO_LDM[m[3]!] ?? m[3]}.${m[4]}`;
  }
  if (
    (m =
      /^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.(weight|bias)$/.exec(
        key,
      ))
  ) {
    return `${m[1]}.mid.attn_1.${ATTN_DIFFUSERS_TO_LDM[m[2]!]}.${m[3]}`;
  }
  if ((m = /^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$/.exec(key))) {
    return `encoder.down.${m[1]}.block.${m[2]}.${RESNET_DIFFUSERS_TO_LDM[m[3]!] ?? m[3]}.${m[4]}`;
  }
  if ((m = /^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$/.exec(key))) {
    return `encoder.down.${m[1]}.downsample.conv.${m[2]}`;
  }
  if ((m = /^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$/.exec(key))) {
    return `decoder.up.${levels - 1 - Number(m[1])}.block.${m[2]}.${RESNET_DIFFUSERS_TO_LDM[m[3]!] ?? m[3]}.${m[4]}`;
  }
  if ((m = /^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$/.exec(key))) {
    return `decoder.up.${levels - 1 - Number(m[1])}.upsample.conv.${m[2]}`;
  }
  if ((m = /^(encoder|decoder)\.conv_norm_out\.(weight|bias)$/.exec(key))) return `${m[1]}.norm_out.${m[2]}`;
  if (/^(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)$/.test(key) || /^(quant_conv|post_quant_conv)\.(weight|bias)$/.test(key))
    return key;
  return undefined;
}

/** An LDM VAE key (no prefix) → its diffusers key (current `to_q` naming). Inverse of `diffusersVaeKeyToLdm`. */
export function ldmVaeKeyToDiffusers(key: string, levels: number): string {
  let m: RegExpExecArray | null;
  const resnet = (n: string): string => (n === "nin_shortcut" ? "conv_shortcut" : n);
  if ((m = /^(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)$/.exec(key)))
    return `${m[1]}.mid_block.resnets.${Number(m[2]) - 1}.${resnet(m[3]!)}.${m[4]}`;
  if ((m = /^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$/.exec(key)))
    return `${m[1]}.mid_block.attentions.0.${ATTN_LDM_TO_DIFFUSERS[m[2]!]}.${m[3]}`;
  if ((m = /^encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$/.exec(key)))
    return `encoder.down_blocks.${m[1]}.resnets.${m[2]}.${resnet(m[3]!)}.${m[4]}`;
  if ((m = /^encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)$/.exec(key)))
    return `encoder.down_blocks.${m[1]}.downsamplers.0.conv.${m[2]}`;
  if ((m = /^decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$/.exec(key)))
    return `decoder.up_blocks.${levels - 1 - Number(m[1])}.resnets.${m[2]}.${resnet(m[3]!)}.${m[4]}`;
  if ((m = /^decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)$/.exec(key)))
    return `decoder.up_blocks.${levels - 1 - Number(m[1])}.upsamplers.0.conv.${m[2]}`;
  if ((m = /^(encoder|decoder)\.norm_out\.(weight|bias)$/.exec(key))) return `${m[1]}.conv_norm_out.${m[2]}`;
  return key;
}

/** True for the diffusers mid-attention projection weights, stored `[C, C]` instead of LDM's `[C, C, 1, 1]`. */
function isDiffusersAttnMatrix(key: string): boolean {
  return /\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.weight$/.test(key);
}

/** Which layout a source holds its VAE in. */
export type VaeLayout = { kind: "ldm"; prefix: string } | { kind: "diffusers"; prefix: string };

/** Find the VAE in a source: LDM keys under `first_stage_model.`/`vae.`/none, or diffusers keys. */
export function detectVaeLayout(src: { keys(): Iterable<string> }): VaeLayout | undefined {
  const keys = new Set(src.keys());
  for (const p of VAE_LDM_PREFIXES) if (keys.has(`${p}decoder.mid.block_1.norm1.weight`)) return { kind: "ldm", prefix: p };
  for (const p of ["vae.", ""]) if (keys.has(`${p}decoder.mid_block.resnets.0.norm1.weight`)) return { kind: "diffusers", prefix: p };
  return undefined;
}

/** Options for `loadVae`. */
export interface LoadVaeOptions {
  /** Config overrides; unset fields are read from tensor shapes (groups/eps/scale default to SD's). */
  config?: Partial<VaeConfig>;
  /** Throw on missing/unexpected/mis-shaped keys (default true). */
  strict?: boolean;
  trainable?: boolean;
}

/** A loaded VAE with what the loader found. */
export interface LoadedVae {
  model: AutoencoderKL;
  layout: VaeLayout;
  report: LoadReport;
}

/**
 * Read the VAE config from LDM-named shapes: base width and image channels from `decoder.conv_out`, level widths
 * from each decoder level's `conv2`, blocks per level by counting (the decoder has one more than the encoder).
 */
export function inferVaeConfig(src: WeightSource, overrides: Partial<VaeConfig> = {}): VaeConfig {
  const shape = (k: string): number[] => {
    const s = src.shapeOf(k);
    if (!s) throw new Error(`${src.where}: no VAE tensor "${k}"`);
    return s;
  };
  const [inChannels, ch] = shape("decoder.conv_out.weight") as [number, number];
  const zChannels = shape("post_quant_conv.weight")[0]!;
  let levels = 0;
  let blocks = 0;
  for (const k of src.keys()) {
    const m = /^decoder\.up\.(\d+)\.block\.(\d+)\./.exec(k);
    if (m) {
      levels = Math.max(levels, Number(m[1]) + 1);
      blocks = Math.max(blocks, Number(m[2]) + 1);
    }
  }
  const chMult: number[] = [];
  for (let i = 0; i < levels; i++) chMult.push(shape(`decoder.up.${i}.block.0.conv2.weight`)[0]! / ch);
  return { ...SD15_VAE, inChannels, ch, chMult, numResBlocks: blocks - 1, zChannels, ...overrides };
}

/**
 * Load SD's VAE from a `.safetensors` file (LDM single file, standalone VAE file, or diffusers
 * `vae/diffusion_pytorch_model.safetensors`), a tensor map or any tensor source. Reads one tensor
 * at a time; F16/BF16 are widened to float32. Keys outside the VAE (UNet, text encoder, schedule
 * buffers) are ignored.
 */
export function loadVae(input: WeightInput, opts: LoadVaeOptions = {}): LoadedVae {
  const raw = openWeights(input);
  try {
    const layout = detectVaeLayout(raw);
    if (!layout) {
      throw new Error(
        `${raw.where}: no VAE found (looked for "decoder.mid.block_1.norm1.weight" under ${VAE_LDM_PREFIXES.map((p) => JSON.stringify(p)).join(", ")} and diffusers "decoder.mid_block.resnets.0.norm1.weight"). A "no VAE" merge needs a separate VAE file.`,
      );
    }
    let src: WeightSource;
    if (layout.kind === "ldm") {
      const p = layout.prefix;
      src = renamedSource(raw, (k) => (k.startsWith(p) && isVaeLdmKey(k.slice(p.length)) ? k.slice(p.length) : undefined));
    } else {
      const p = layout.prefix;
      const keys = [...raw.keys()];
      let levels = 0;
      for (const k of keys) {
        const m = /^decoder\.up_blocks\.(\d+)\./.exec(k.startsWith(p) ? k.slice(p.length) : "");
        if (m) levels = Math.max(levels, Number(m[1]) + 1);
      }
      src = renamedSource(
        raw,
        (k) => (k.startsWith(p) ? diffusersVaeKeyToLdm(k.slice(p.length), levels) : undefined),
        (k, s) => (isDiffusersAttnMatrix(k) && s.length === 2 ? [...s, 1, 1] : s),
      );
    }
    const config = inferVaeConfig(src, opts.config);
    const model = new AutoencoderKL(config, { init: zerosInit, trainable: opts.trainable ?? false });
    try {
      const report = loadStateDict(model, src, {
        strict: opts.strict ?? true,
        where: `${raw.where} (VAE, ${layout.kind} layout, prefix "${layout.prefix}")`,
      });
      return { model, layout, report };
    } catch (err) {
      model.dispose();
      throw err;
    }
  } finally {
    raw.close();
  }
}

/** LDM VAE keys start with one of these (used to tell them apart from UNet/CLIP keys when there is no prefix). */
function isVaeLdmKey(k: string): boolean {
  return /^(encoder|decoder|quant_conv|post_quant_conv)\./.test(k);
}

/** Every parameter path and PyTorch shape of a VAE, without allocating its weights. */
export function vaeParamShapes(config: VaeConfig, prefix = ""): Array<[string, number[]]> {
  const model = new AutoencoderKL(config, { init: () => tf.scalar(0) });
  try {
    return model.namedParameters(prefix).map(([k, p]) => [k, [...p.torchShape]]);
  } finally {
    model.dispose();
  }
}
