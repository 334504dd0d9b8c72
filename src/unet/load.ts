/**
 * Load Stable Diffusion UNet weights into a `UNetModel`, tensor by tensor.
 *
 * Accepted sources (all map onto the same module tree, whose paths are LDM keys):
 * - an LDM single-file checkpoint `.safetensors` (keys `model.diffusion_model.*`; the VAE, text
 *   encoder, EMA copies and schedule buffers in the same file are ignored);
 * - a bare UNet `.safetensors` with LDM names and no prefix (`input_blocks.…`);
 * - a diffusers UNet: `unet/diffusion_pytorch_model[.fp16].safetensors`, its `unet/` folder or the
 *   pipeline folder above it — names are mapped by the rules in `diffusers-keys.ts`;
 * - a PyTorch `.ckpt` / `.pt` / `.pth` checkpoint (`state_dict` inside, or a flat dict), read with
 *   the safe torch-file reader (no pickle code is executed).
 * F32, F16 and BF16 tensors become float32. Strict by default: missing, unexpected or mis-shaped
 * keys throw a `StateDictError` that names them (and says when the file is an SD 2.x model).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { type TensorSource, openWeights } from "../io/weight-source";
import { type LoadReport, StateDictError, loadStateDict } from "../nn/module";
import type { UNetConfig } from "./config";
import { diffusersToLdmKey } from "./diffusers-keys";
import type { UNetModel } from "./unet";

/** The prefix of UNet tensors in an LDM single-file checkpoint. */
export const LDM_UNET_PREFIX = "model.diffusion_model.";

/** How the file names its UNet tensors. */
export type UNetFileLayout = "ldm" | "ldm-bare" | "diffusers";

/** What the file's shapes say about the model it holds. */
export interface UNetFamily {
  /** "SD 1.x", "SD 2.x", or "custom". */
  name: string;
  /** Width of the cross-attention context (`attn2.to_k` input width), when found. */
  contextDim?: number;
  /** True when `proj_in`/`proj_out` are Linear (SD 2.x) rather than 1×1 convs. */
  linearProj?: boolean;
}

/** `loadStateDict`'s report plus what was recognised about the file. */
export interface UNetLoadReport extends LoadReport {
  file: string;
  layout: UNetFileLayout;
  family: UNetFamily;
}

/** A tensor source over a file, with shapes known before reading. */
interface FileSource extends TensorSource {
  shapeOf(key: string): number[] | undefined;
  close(): void;
}

/**
 * Load weights from `source` (a file or folder path, see the module doc) into `unet`.
 * Returns the report (loaded / missing / unexpected / mismatched keys, in LDM names, and the
 * detected layout and model family). With `strict: false`, loads what matches and reports the rest.
 */
export function loadUNetWeights(unet: UNetModel, source: string, opts: { strict?: boolean } = {}): UNetLoadReport {
  const file = resolveUNetFile(source);
  const raw = openSource(file);
  try {
    const { layout, view, prefix } = recognise(file, raw, unet.config);
    const family = detectFamily(view, prefix);
    const hint = familyMismatch(family, unet.config);
    const where = `${file} (${layoutName(layout)}${hint ? `; ${hint}` : ""})`;
    const report = loadStateDict(unet, view, { prefix, strict: opts.strict ?? true, where });
    return { ...report, file, layout, family };
  } finally {
    raw.close();
  }
}

/** Turn a folder into the diffusers UNet file inside it; check a file exists and is a known kind. */
export function resolveUNetFile(source: string): string {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch {
    throw new Error(`${source}: no such file or folder (expected a .safetensors/.ckpt file or a diffusers folder)`);
  }
  if (stat.isDirectory()) {
    const names = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"];
    const candidates = [...names.map((n) => path.join(source, "unet", n)), ...names.map((n) => path.join(source, n))];
    const found = candidates.find((c) => fs.existsSync(c));
    if (found) return found;
    const bin = [path.join(source, "unet", "diffusion_pytorch_model.bin"), path.join(source, "diffusion_pytorch_model.bin")].find((c) =>
      fs.existsSync(c),
    );
    throw new Error(
      `${source}: no diffusers UNet found (looked for unet/diffusion_pytorch_model[.fp16].safetensors)` +
        (bin ? `; ${bin} is a pickle — convert it to .safetensors first` : ""),
    );
  }
  if (!/\.(safetensors|ckpt|pt|pth)$/i.test(source)) {
    throw new Error(`${source}: unknown weight file type (expected .safetensors, .ckpt, .pt or .pth)`);
  }
  return source;
}

function openSource(file: string): FileSource {
  return openWeights(file);
}

/** Decide the naming layout from the keys; for diffusers, wrap the file in an LDM-named view. */
function recognise(file: string, src: FileSource, cfg: UNetConfig): { layout: UNetFileLayout; view: FileSource; prefix: string } {
  const keys = [...src.keys()];
  if (keys.some((k) => k.startsWith(LDM_UNET_PREFIX))) return { layout: "ldm", view: src, prefix: LDM_UNET_PREFIX };
  if (keys.some((k) => k.startsWith("input_blocks.") || k.startsWith("time_embed."))) return { layout: "ldm-bare", view: src, prefix: "" };
  if (keys.some((k) => k.startsWith("down_blocks.") || k.startsWith("time_embedding.") || k.startsWith("conv_in."))) {
    return { layout: "diffusers", view: diffusersView(file, src, cfg), prefix: "" };
  }
  throw new Error(
    `${file}: no UNet weights found (looked for "${LDM_UNET_PREFIX}*", "input_blocks.*" and diffusers "down_blocks.*" keys; ` +
      `the file starts with ${
        keys
          .slice(0, 3)
          .map((k) => `"${k}"`)
          .join(", ") || "no tensors"
      })`,
  );
}

/**
 * The file's tensors under LDM names. Keys with no LDM counterpart keep their diffusers names, so a
 * strict load reports them as unexpected.
 */
function diffusersView(file: string, src: FileSource, cfg: UNetConfig): FileSource {
  const toFile = new Map<string, string>();
  for (const k of src.keys()) {
    const ldm = diffusersToLdmKey(k, cfg) ?? k;
    if (toFile.has(ldm)) throw new Error(`${file}: tensors "${toFile.get(ldm)}" and "${k}" both map to "${ldm}"`);
    toFile.set(ldm, k);
  }
  const fileKey = (k: string): string => {
    const f = toFile.get(k);
    if (f === undefined) throw new Error(`${file}: no tensor maps to "${k}"`);
    return f;
  };
  return {
    keys: () => toFile.keys(),
    get: (k) => src.get(fileKey(k)),
    shapeOf: (k) => (toFile.has(k) ? src.shapeOf(fileKey(k)) : undefined),
    close: () => src.close(),
  };
}

/**
 * Recognise SD 1.x vs SD 2.x from shapes: the cross-attention context width (`attn2.to_k` is
 * `[inner, context_dim]`: 768 in SD 1.x, 1024 in SD 2.x) and whether `proj_in` is a 1×1 conv
 * (4-D, SD 1.x) or a Linear (2-D, SD 2.x, which also uses 64-channel heads).
 */
export function detectFamily(src: { keys(): Iterable<string>; shapeOf(key: string): number[] | undefined }, prefix = ""): UNetFamily {
  let contextDim: number | undefined;
  let linearProj: boolean | undefined;
  for (const k of src.keys()) {
    if (!k.startsWith(prefix)) continue;
    if (contextDim === undefined && k.endsWith(".attn2.to_k.weight")) contextDim = src.shapeOf(k)?.[1];
    if (linearProj === undefined && k.endsWith(".proj_in.weight")) linearProj = src.shapeOf(k)?.length === 2;
    if (contextDim !== undefined && linearProj !== undefined) break;
  }
  let name = "custom";
  if (contextDim === 768 && linearProj === false) name = "SD 1.x";
  else if (contextDim === 1024 && linearProj === true) name = "SD 2.x";
  return { name, contextDim, linearProj };
}

/** A sentence saying how the file's family differs from the model's config, or "" when it does not. */
function familyMismatch(f: UNetFamily, cfg: UNetConfig): string {
  const parts: string[] = [];
  if (f.contextDim !== undefined && f.contextDim !== cfg.context_dim) parts.push(`context_dim ${f.contextDim} (model: ${cfg.context_dim})`);
  if (f.linearProj !== undefined && f.linearProj !== cfg.use_linear_in_transformer) {
    parts.push(
      `${f.linearProj ? "Linear" : "1×1-conv"} proj_in/proj_out (model: ${cfg.use_linear_in_transformer ? "Linear" : "1×1 conv"})`,
    );
  }
  if (!parts.length) return "";
  const advice =
    f.name === "SD 2.x"
      ? " — build the UNet with an SD 2.x config (context_dim 1024, num_head_channels 64, use_linear_in_transformer true)"
      : "";
  return `the file looks like ${f.name === "custom" ? "a different model" : `an ${f.name} UNet`}: ${parts.join(", ")}${advice}`;
}

function layoutName(l: UNetFileLayout): string {
  return l === "ldm" ? "LDM checkpoint" : l === "ldm-bare" ? "LDM UNet without prefix" : "diffusers UNet";
}

export { StateDictError };
