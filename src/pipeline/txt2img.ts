/**
 * Text-to-image with a base model, the way A1111's txt2img tab does it:
 *
 *   prompt ──parsePrompt──▶ text + [<hypernet:name:m>, …]
 *   hypernetworks: the resolved ones passed in, or the tags' networks loaded from `hypernetworkDir`
 *   (`hypernet/prompt-networks.ts`, which caches them), attached in order for this call only
 *   cond = encodeText(text), uncond = encodeText(negative prompt)
 *   z_T ~ N(0, I) from the seed ──sampler (CFG: ε = ε_u + s·(ε_c − ε_u))──▶ z_0 ──decode──▶ image
 *   (the last two lines are `sampleImages` in sample.ts, the sampling path previews share)
 *
 * and the A1111 infotext ("parameters" text) that lets the image be reproduced.
 */
import { type SamplerName, type StepCallback, samplerByName } from "../diffusion/samplers";
import { type StackEntry, attachHypernetworks } from "../hypernet/attach";
import { ignoredTags, parsePrompt } from "../hypernet/prompt";
import { encodePng, unitToBytes } from "../io/png";
import { type AppliedHypernetwork, type PromptHypernetwork, resolvePromptHypernetworks } from "../hypernet/prompt-networks";
import type { BaseModel } from "./base-model";
import { type SampledImages, sampleImages, toUnitRange } from "./sample";

export type { AppliedHypernetwork, PromptHypernetwork };

/** Options for `txt2img` (A1111's names in camelCase; defaults are A1111's). */
export interface Txt2ImgOptions {
  /** The prompt; may contain `<hypernet:NAME:MULTIPLIER>` tags and `#` comment lines. */
  prompt: string;
  negativePrompt?: string;
  /** Classifier-free guidance scale (default 7; 1 turns guidance off). */
  cfgScale?: number;
  /** Sampling steps (default 20). */
  steps?: number;
  /** Any A1111 sampler name ("Euler a", the default; "DPM++ 2M", "DPM++ 2M Karras", "UniPC", …; see `samplerByName`). */
  sampler?: SamplerName;
  /** Noise seed; a random 32-bit seed when absent or −1 (the one used is in the result). */
  seed?: number;
  /** Image size in pixels (default: the model's native size); a multiple of the model's size step. */
  width?: number;
  height?: number;
  /** Images generated together (default 1). */
  batch?: number;
  /** Folder searched (recursively) for the hypernetworks named in prompt tags. */
  hypernetworkDir?: string;
  /**
   * Networks already resolved (e.g. by `resolvePromptHypernetworks`), applied in this order and
   * recorded in the infotext. When given, the prompt's tags are not looked up again: they are
   * removed from the text that is encoded and kept, as typed, in the infotext.
   */
  hypernetworks?: readonly PromptHypernetwork[];
  /**
   * Apply the tagged hypernetworks only in sampler steps at timesteps `[min, max)` (0–999; e.g.
   * `[0, 250]`: the last, low-noise steps, which draw colour and texture, leaving the layout to
   * the base model). Default: every step, as A1111. Not an A1111 option; written to the infotext.
   */
  hypernetworkTimesteps?: [number, number];
  /** Called after every sampler step (e.g. for a live preview). */
  callback?: StepCallback;
}

/** What `txt2img` returns. */
export interface Txt2ImgResult {
  /** Pixels NHWC `[batch, height, width, 3]` in [0, 1], row-major. */
  pixels: Float32Array;
  shape: [number, number, number, number];
  /** One PNG per image (8-bit RGB). */
  png: Buffer[];
  /** A1111 infotext per image ("prompt\nNegative prompt: …\nSteps: …"). */
  infotexts: string[];
  /** The seed used. */
  seed: number;
  hypernetworks: AppliedHypernetwork[];
  /** Tags removed without being applied: other networks (e.g. `<lora:…>`) and any tag in the negative prompt (A1111 applies networks from the prompt only). */
  ignoredTags: string[];
}

/**
 * Generate images from a prompt (see the module comment). The networks in `hypernetworks` — or,
 * when that is absent, the ones the prompt's tags name — are attached for this call and detached
 * afterwards, even when sampling fails; the base model is left exactly as it was. All intermediate
 * tensors are freed.
 */
export async function txt2img(base: BaseModel, opts: Txt2ImgOptions): Promise<Txt2ImgResult> {
  const steps = opts.steps ?? 20;
  const cfgScale = opts.cfgScale ?? 7;
  const samplerName = opts.sampler ?? "Euler a";
  const batch = opts.batch ?? 1;
  const width = opts.width ?? base.imageSize;
  const height = opts.height ?? base.imageSize;
  const seed = opts.seed === undefined || opts.seed === -1 ? Math.floor(Math.random() * 2 ** 32) : opts.seed;
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`txt2img: steps must be a positive integer, got ${steps}`);
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`txt2img: batch must be a positive integer, got ${batch}`);
  if (!Number.isFinite(cfgScale)) throw new Error(`txt2img: cfgScale must be a number, got ${cfgScale}`);
  const step = base.downscale * 2 ** (base.unet.config.channel_mult.length - 1);
  for (const [name, v] of [["width", width], ["height", height]] as const) {
    if (!Number.isInteger(v) || v <= 0 || v % step !== 0) throw new Error(`txt2img: ${name} ${v} must be a positive multiple of ${step} for this model (e.g. ${Math.max(step, Math.round(v / step) * step)})`);
  }
  samplerByName(samplerName, { steps }); // a wrong sampler name fails before any network is loaded

  // The networks to apply: given, or the prompt tags' networks (in tag order).
  const parsed = parsePrompt(opts.prompt);
  const negative = parsePrompt(opts.negativePrompt ?? "");
  const resolved = opts.hypernetworks ?? resolvePromptHypernetworks(opts.prompt, opts.negativePrompt, opts.hypernetworkDir).networks;
  const applied: AppliedHypernetwork[] = resolved.map(({ name, multiplier, file, hash }) => ({ name, multiplier, file, hash }));
  const gate = opts.hypernetworkTimesteps ? { timesteps: opts.hypernetworkTimesteps } : {};
  const stack: StackEntry[] = resolved.map((h) => ({ network: h.network, multiplier: h.multiplier, ...gate }));

  const attachment = stack.length ? attachHypernetworks(base.unet, stack) : undefined;
  let sampled: SampledImages;
  try {
    sampled = await sampleImages(base, { prompts: [parsed.prompt], count: batch, negativePrompt: negative.prompt, sampler: samplerName, steps, cfgScale, seed, width, height, callback: opts.callback });
  } finally {
    attachment?.detach();
  }

  const pixels = toUnitRange(sampled.pixels);
  const shape = sampled.shape;
  const png = await Promise.all(Array.from({ length: batch }, (_, i) => encodePng({ data: unitToBytes(pixels, i, width, height), width, height, channels: 3 })));
  const infotexts = Array.from({ length: batch }, (_, i) =>
    infotext({ prompt: opts.prompt, negativePrompt: opts.negativePrompt ?? "", steps, sampler: samplerName, cfgScale, seed, width, height, base, hypernetworks: applied, hypernetworkTimesteps: opts.hypernetworkTimesteps, batch, index: i }),
  );
  return { pixels, shape, png, infotexts, seed, hypernetworks: applied, ignoredTags: ignoredTags(parsed, negative) };
}

/** An infotext value, quoted as A1111 does when it holds a comma, colon or quote. */
function quote(v: string): string {
  return /[,:\n"]/.test(v) ? JSON.stringify(v) : v;
}

/**
 * A1111's generation-parameters text: the prompt (tags included, as typed), the negative prompt,
 * then `key: value` pairs. With a batch, every image shares the seed (the batch is sampled as one
 * tensor), so `Batch size`/`Batch pos` say where in the batch it was.
 */
export function infotext(p: {
  prompt: string;
  negativePrompt: string;
  steps: number;
  sampler: string;
  cfgScale: number;
  seed: number;
  width: number;
  height: number;
  base: BaseModel;
  hypernetworks: AppliedHypernetwork[];
  hypernetworkTimesteps?: [number, number];
  batch?: number;
  index?: number;
}): string {
  const fields: Array<[string, string | number]> = [
    ["Steps", p.steps],
    ["Sampler", p.sampler],
    ["CFG scale", p.cfgScale],
    ["Seed", p.seed],
    ["Size", `${p.width}x${p.height}`],
  ];
  if (p.base.checkpointHash) fields.push(["Model hash", p.base.checkpointHash]);
  fields.push(["Model", p.base.name]);
  if (p.base.clipSkip > 1) fields.push(["Clip skip", p.base.clipSkip]);
  if (p.hypernetworks.length) {
    fields.push(["Hypernet", p.hypernetworks.map((h) => h.name).join(", ")]);
    fields.push(["Hypernet hash", p.hypernetworks.map((h) => h.hash).join(", ")]);
    fields.push(["Hypernet strength", p.hypernetworks.map((h) => h.multiplier).join(", ")]);
    if (p.hypernetworkTimesteps) fields.push(["Hypernet timesteps", `${p.hypernetworkTimesteps[0]}-${p.hypernetworkTimesteps[1]}`]);
  }
  if ((p.batch ?? 1) > 1) {
    fields.push(["Batch size", p.batch!]);
    fields.push(["Batch pos", p.index ?? 0]);
  }
  const lines = [p.prompt];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  lines.push(fields.map(([k, v]) => `${k}: ${typeof v === "number" ? v : quote(v)}`).join(", "));
  return lines.join("\n");
}
