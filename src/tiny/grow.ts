/**
 * Growing a trained tiny model: give its UNet attention at one more level without changing what
 * it computes, so that training can go on from the same weights.
 *
 * An LDM UNet level with attention holds, per ResBlock, `[ResBlock, SpatialTransformer]`; the
 * output blocks end with the upsample conv. Adding attention at a level therefore
 *
 *   - inserts a SpatialTransformer after each ResBlock of that level (input and output blocks), and
 *   - moves the output block's upsample conv one index along (`output_blocks.N.1.conv` → `.2.conv`).
 *
 * A SpatialTransformer is residual — `x + proj_out(transformer(proj_in(norm(x))))` — so with
 * `proj_out` zeroed it adds nothing: the grown model computes exactly what the old one did (the
 * test checks this bit for bit), and training starts from the old model's behaviour, with the new
 * layers free to learn. The new layers' other weights keep a fresh random init (all-zero attention
 * weights would leave the gradient of `proj_out` zero as well).
 *
 * `scripts/tiny-add-attention.ts` runs it from the command line.
 */
import * as path from "node:path";
import { SafetensorsFile } from "../io/safetensors";
import type { HostTensor } from "../io/host-tensor";
import { TINY_WEIGHTS_FILE, buildTinyModel, readTinyConfig, tinyStateDict, writeTinyModel } from "./model";

/** What `addAttentionLevel` did. */
export interface GrowReport {
  /** The new config's attention levels (downsample factors). */
  attentionResolutions: number[];
  /** New weights (the inserted SpatialTransformers). */
  added: string[];
  /** Old weights stored under a new key: [old, new]. */
  moved: Array<[string, string]>;
}

/**
 * Read the tiny model in `srcDir`, add attention at downsample factor `level` (1 = full
 * resolution, 2 = half, …) and write the grown model to `dstDir` (refusing to replace an existing
 * model unless `overwrite`). Needs a tfjs backend (the new layers are initialised by building them).
 */
export function addAttentionLevel(srcDir: string, dstDir: string, level: number, opts: { overwrite?: boolean } = {}): GrowReport {
  const cfg = readTinyConfig(srcDir);
  const levels = cfg.unet.attention_resolutions;
  const possible = cfg.unet.channel_mult.map((_, i) => 2 ** i);
  if (!possible.includes(level))
    throw new Error(`addAttentionLevel: level ${level} is not a UNet level of ${srcDir} (its levels are ${possible.join(", ")})`);
  if (levels.includes(level))
    throw new Error(
      `addAttentionLevel: ${srcDir} already has attention at level ${level} (attention_resolutions ${JSON.stringify(levels)})`,
    );
  const attentionResolutions = [...levels, level].sort((a, b) => a - b);
  const grown = { ...cfg, unet: { ...cfg.unet, attention_resolutions: attentionResolutions } };

  // The new model's keys (and fresh values for the new layers), from building it once.
  const parts = buildTinyModel(grown);
  let fresh: Map<string, HostTensor>;
  try {
    fresh = tinyStateDict(parts);
  } finally {
    parts.unet.dispose();
    parts.textEncoder.dispose();
  }

  const old = SafetensorsFile.open(path.join(srcDir, TINY_WEIGHTS_FILE));
  try {
    const oldKeys = new Set(old.keys());
    const moved: Array<[string, string]> = [];
    const weights = new Map<string, HostTensor>();
    for (const k of oldKeys) {
      const target = fresh.has(k) ? k : movedKey(k, fresh);
      if (target === undefined) throw new Error(`addAttentionLevel: ${srcDir} has ${k}, which the grown model has no place for`);
      if (target !== k) moved.push([k, target]);
      weights.set(target, old.read(k));
    }
    const added: string[] = [];
    for (const [k, t] of fresh) {
      if (weights.has(k)) continue;
      added.push(k);
      // proj_out = 0 makes each new SpatialTransformer an identity (see the module comment).
      weights.set(k, /\.proj_out\.(weight|bias)$/.test(k) ? { ...t, data: new Float32Array(t.data.length) } : t);
    }
    if (added.length === 0 || !added.every((k) => k.includes("input_blocks") || k.includes("output_blocks"))) {
      throw new Error(`addAttentionLevel: unexpected new weights ${added.slice(0, 4).join(", ")}`);
    }
    const training = { ...(cfg.training ?? {}), grown: { from: srcDir, attentionResolutions: levels, added: level } };
    writeTinyModel(dstDir, { ...grown, training }, weights, opts);
    return { attentionResolutions, added, moved };
  } finally {
    old.close();
  }
}

/** Where an old output block's upsample conv goes when a SpatialTransformer is inserted before it. */
function movedKey(key: string, fresh: Map<string, HostTensor>): string | undefined {
  const m = /^(unet\.output_blocks\.\d+)\.1\.(conv\.(weight|bias))$/.exec(key);
  if (!m) return undefined;
  const k = `${m[1]}.2.${m[2]}`;
  return fresh.has(k) ? k : undefined;
}
