/**
 * Text-to-image with a base model, the way A1111's txt2img tab does it:
 *
 *   prompt ──parsePrompt──▶ text + [<hypernet:name:m>, …]
 *   hypernetworks: the resolved ones passed in, or the tags' networks loaded from `hypernetworkDir`
 *   (`hypernet/prompt-networks.ts`, which caches them), attached in order for this call only
 *   cond = encodeText(text), uncond = encodeText(negative prompt)     A1111's front end (encodePrompts):
 *                                       emphasis, BREAK, 75-token chunks, textual-inversion embeddings
 *   z_T ~ N(0, I) from the seed ──sampler (CFG: ε = ε_u + s·(ε_c − ε_u))──▶ z_0 ──decode──▶ image
 *   prompt editing [a:b:when], alternation [a|b] and `a AND b:0.5`: the conditioning changes per
 *   model call and CFG is u + s·Σ w_i·(c_i − u), as A1111 (sample.ts `promptSyntax`,
 *   prompt-conditioning.ts); a prompt without them takes the plain path
 *   (the last two lines are `sampleImages` in sample.ts, the sampling path previews share; the noise
 *   is A1111's, image i from seed + i, with variation seeds and ENSD: a1111-image-noise.ts)
 *
 * and the A1111 infotext (infotext.ts), returned and written into each PNG's "parameters" text, so
 * that A1111's PNG Info and `readInfotext` read the run back.
 */
import type { StepCallback } from "../diffusion/samplers";
import { type SamplerName, resolveSamplerName, samplerByName } from "../diffusion/sampler-names";
import { a1111BatchSeeds, a1111ImageNoise } from "../diffusion/a1111-image-noise";
import { type StackItem, attachHypernetworks } from "../hypernet/attach";
import { ignoredTags, parsePrompt } from "../hypernet/prompt";
import { encodePng, unitToBytes } from "../io/png";
import { addPngText } from "../io/png-text";
import { type EmbeddingDatabase, type TextualInversionEmbedding, loadEmbeddings } from "../text/embeddings";
import { encodePrompts } from "../text/encode-prompts";
import type { EmphasisMode } from "../text/prompt-chunks";
import { promptSchedules } from "../text/prompt-schedule";
import { type InfotextFieldValue, formatInfotext, samplerUsesEnsd } from "./infotext";
import { type AppliedHypernetwork, type PromptHypernetwork, resolvePromptHypernetworks } from "../hypernet/prompt-networks";
import type { BaseModel } from "./base-model";
import { a1111ScheduleSteps } from "./prompt-conditioning";
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
  sampler?: SamplerName | string;
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
  /** Folder of textual-inversion embeddings (`.pt`, `.bin`, `.safetensors`): a prompt word equal to a file's name is replaced by its vectors. */
  embeddingDir?: string;
  /** Embeddings already loaded (`loadEmbeddings`); used instead of `embeddingDir`. */
  embeddings?: EmbeddingDatabase;
  /** A1111's "Emphasis mode": "Original" (default) reads `(word:1.2)` and `[word]`; "None" reads brackets as text. */
  emphasis?: EmphasisMode;
  /** A1111's "Clip skip" for this call (default: the base model's). */
  clipSkip?: number;
  /**
   * Where the noise comes from, as A1111's "Random number generator source": "NV" (default; what
   * A1111 draws on an NVIDIA GPU, its default "GPU" setting) or "CPU" (torch's CPU generator).
   * Image i of a batch uses seed + i, as in A1111.
   */
  noiseSource?: "CPU" | "NV";
  /** A1111's variation seed and its strength in [0, 1] (0, the default, turns it off). */
  subseed?: number;
  subseedStrength?: number;
  /** A1111's "Resize seed from width/height", in pixels. */
  seedResizeFrom?: { width: number; height: number };
  /** A1111's "Eta noise seed delta" (ENSD, e.g. 31337): re-seeds the per-step noise of ancestral samplers. */
  etaNoiseSeedDelta?: number;
  /**
   * A1111's compatibility setting "Use old prompt editing timelines" (`use_old_scheduling`, default
   * off): `[a:b:when]` reads a `when` ≥ 1 as a step even when written with a dot (`1.5` → step 1)
   * and ignores hires-fix offsets, as A1111 before 1.6 did. Written to the infotext as
   * "Old prompt editing timelines: True" when it changes the prompts' schedules, as A1111 does.
   */
  oldScheduling?: boolean;
}

/** What `txt2img` returns. */
export interface Txt2ImgResult {
  /** Pixels NHWC `[batch, height, width, 3]` in [0, 1], row-major. */
  pixels: Float32Array;
  shape: [number, number, number, number];
  /** One PNG per image (8-bit RGB). */
  png: Buffer[];
  /** A1111 infotext per image ("prompt\nNegative prompt: …\nSteps: …"), also in each PNG's "parameters" text. */
  infotexts: string[];
  /** The seed used. */
  seed: number;
  hypernetworks: AppliedHypernetwork[];
  /** Textual-inversion embeddings the prompt and the negative prompt used. */
  embeddings: TextualInversionEmbedding[];
  /** Tags removed without being applied: other networks (e.g. `<lora:…>`) and any tag in the negative prompt (A1111 applies networks from the prompt only). */
  ignoredTags: string[];
}

/** txt2img's plain settings with their defaults, checked before anything is loaded or sampled. */
function resolveBasics(base: BaseModel, opts: Txt2ImgOptions) {
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
  for (const [name, v] of [
    ["width", width],
    ["height", height],
  ] as const) {
    if (!Number.isInteger(v) || v <= 0 || v % step !== 0)
      throw new Error(
        `txt2img: ${name} ${v} must be a positive multiple of ${step} for this model (e.g. ${Math.max(step, Math.round(v / step) * step)})`,
      );
  }
  samplerByName(samplerName, { steps }); // a wrong sampler name fails before any network is loaded
  return { steps, cfgScale, samplerName, batch, width, height, seed };
}

/** The stack for resolved tags: a `.hns` tag is one group (its sequence, its change scaled by the tag's multiplier). */
function tagStack(resolved: readonly PromptHypernetwork[], gate: { timesteps?: [number, number] }): StackItem[] {
  return resolved.map((h) =>
    h.stack
      ? { parallel: [{ weight: 1, stack: h.stack }], multiplier: h.multiplier, ...gate }
      : { network: h.network, multiplier: h.multiplier, ...gate },
  );
}

/**
 * Generate images from a prompt (see the module comment). The networks in `hypernetworks` — or,
 * when that is absent, the ones the prompt's tags name — are attached for this call and detached
 * afterwards, even when sampling fails; the base model is left exactly as it was. All intermediate
 * tensors are freed.
 */
export async function txt2img(base: BaseModel, opts: Txt2ImgOptions): Promise<Txt2ImgResult> {
  const { steps, cfgScale, samplerName, batch, width, height, seed } = resolveBasics(base, opts);

  // The networks to apply: given, or the prompt tags' networks (in tag order).
  const parsed = parsePrompt(opts.prompt);
  const negative = parsePrompt(opts.negativePrompt ?? "");
  const resolved = opts.hypernetworks ?? resolvePromptHypernetworks(opts.prompt, opts.negativePrompt, opts.hypernetworkDir).networks;
  const applied: AppliedHypernetwork[] = resolved.map(({ name, multiplier, file, hash }) => ({ name, multiplier, file, hash }));
  const gate = opts.hypernetworkTimesteps ? { timesteps: opts.hypernetworkTimesteps } : {};
  const stack = tagStack(resolved, gate);

  const embeddings =
    opts.embeddings ??
    (opts.embeddingDir ? loadEmbeddings(opts.embeddingDir, base.tokenizer, { width: base.textEncoder.config.width }) : undefined);
  const emphasis = opts.emphasis ?? "Original";
  const clipSkip = opts.clipSkip ?? base.clipSkip;
  const noiseSource = opts.noiseSource ?? "NV";
  const h = height / base.downscale;
  const w = width / base.downscale;
  const noise = a1111ImageNoise({
    shape: [batch, h, w, base.channels],
    seed,
    ...(opts.subseed !== undefined ? { subseed: opts.subseed } : {}),
    subseedStrength: opts.subseedStrength ?? 0,
    ...(opts.seedResizeFrom ? { seedResizeFrom: opts.seedResizeFrom } : {}),
    etaNoiseSeedDelta: opts.etaNoiseSeedDelta ?? 0,
    source: noiseSource,
  });
  // The prompts go through A1111's front end (emphasis, BREAK, chunks, embedding names), which the
  // shared sampling path calls in place of the base model's literal encoder.
  let used: TextualInversionEmbedding[][] = [];
  const encodeText = (prompts: string[]): ReturnType<BaseModel["encodeText"]> => {
    const r = encodePrompts(base.textEncoder, base.tokenizer, prompts, { embeddings, emphasis, clipSkip });
    used = r.used;
    return r.context;
  };
  // Prompt editing, alternation and AND: each schedule's texts are one A1111 encoder batch (its
  // emphasis mean taken over the batch); the embeddings any of them used are recorded.
  const scheduledUsed = new Map<string, TextualInversionEmbedding>();
  const encodeBatch = (texts: string[]): ReturnType<BaseModel["encodeText"]> => {
    const r = encodePrompts(base.textEncoder, base.tokenizer, texts, { embeddings, emphasis, clipSkip, emphasisScope: "batch" });
    for (const e of r.used.flat()) if (!scheduledUsed.has(e.name)) scheduledUsed.set(e.name, e);
    return r.context;
  };

  const attachment = stack.length ? attachHypernetworks(base.unet, stack) : undefined;
  let sampled: SampledImages;
  try {
    sampled = await sampleImages(base, {
      prompts: [parsed.prompt],
      count: batch,
      negativePrompt: negative.prompt,
      sampler: samplerName,
      steps,
      cfgScale,
      rng: noise,
      width,
      height,
      callback: opts.callback,
      promptSyntax: { encode: encodeBatch, oldScheduling: opts.oldScheduling === true },
      encodeText,
    });
    if (scheduledUsed.size > 0) used = [[...scheduledUsed.values()]];
  } finally {
    attachment?.detach();
  }

  const pixels = toUnitRange(sampled.pixels);
  const shape = sampled.shape;
  const seeds = a1111BatchSeeds(seed, batch, { subseed: opts.subseed ?? 0, subseedStrength: opts.subseedStrength ?? 0 });
  // Networks passed in without a tag in the prompt get one in the infotext, as A1111 adds its default network's.
  const tagged = new Set(parsed.hypernets.map((t) => t.name));
  const promptText =
    opts.prompt +
    resolved
      .filter((n) => !tagged.has(n.name))
      .map((n) => `<hypernet:${n.name}:${n.multiplier}>`)
      .join("");
  const extra = infotextExtras({
    emphasis,
    prompts: [parsed.prompt, negative.prompt],
    used,
    hypernetworkTimesteps: opts.hypernetworkTimesteps,
    oldTimelines:
      opts.oldScheduling === true && oldSchedulingMatters([parsed.prompt, negative.prompt], a1111ScheduleSteps(samplerName, steps)),
  });
  const infotexts = Array.from({ length: batch }, (_, i) => {
    const sampler = resolveSamplerName(samplerName);
    return formatInfotext({
      prompt: promptText,
      negativePrompt: opts.negativePrompt ?? "",
      steps,
      sampler: sampler.name,
      scheduleType: scheduleLabel(samplerName),
      cfgScale,
      seed: seeds.seeds[i]!,
      width,
      height,
      modelHash: base.checkpointHash,
      model: base.name,
      subseed: seeds.subseeds[i]!,
      subseedStrength: opts.subseedStrength ?? 0,
      ...(opts.seedResizeFrom ? { seedResizeFrom: opts.seedResizeFrom } : {}),
      clipSkip,
      etaNoiseSeedDelta: samplerUsesEnsd(sampler.name) ? opts.etaNoiseSeedDelta : undefined,
      rng: noiseSource,
      extra,
    });
  });
  const png = await Promise.all(
    Array.from({ length: batch }, async (_, i) =>
      addPngText(await encodePng({ data: unitToBytes(pixels, i, width, height), width, height, channels: 3 }), [
        ["parameters", infotexts[i]!],
      ]),
    ),
  );
  const usedAll = [...new Map(used.flat().map((e) => [e.name, e])).values()];
  return { pixels, shape, png, infotexts, seed, hypernetworks: applied, embeddings: usedAll, ignoredTags: ignoredTags(parsed, negative) };
}

/** A1111's schedule-type label for a sampler name: the label it ends with ("DPM++ 2M Karras"), else "Automatic". */
function scheduleLabel(name: string): string {
  const key = name.trim().replace(/\s+/g, " ").toLowerCase();
  if (/^k_\w+_ka$/.test(key)) return "Karras";
  const m = / (karras|exponential|uniform|automatic)$/.exec(key);
  return m ? m[1]![0]!.toUpperCase() + m[1]!.slice(1) : "Automatic";
}

/**
 * Whether A1111 writes "Old prompt editing timelines: True" with the setting on
 * (`get_conds_with_caching`): when the old and the new timelines give different schedules for the
 * prompts, over the schedules' total steps.
 */
export function oldSchedulingMatters(prompts: readonly string[], totalSteps: number): boolean {
  const now = promptSchedules(prompts, totalSteps);
  const old = promptSchedules(prompts, totalSteps, { oldScheduling: true });
  return JSON.stringify(now) !== JSON.stringify(old);
}

/**
 * The infotext fields A1111 adds as it goes (`p.extra_generation_params`), in its order: Old prompt
 * editing timelines (set while the conditionings are made), TI hashes (the prompt's embeddings,
 * then the negative prompt's, names without `:` and `,`), Emphasis (when not "Original" and a
 * prompt has brackets), then this project's Hypernet timesteps.
 */
function infotextExtras(p: {
  emphasis: EmphasisMode;
  prompts: string[];
  used: TextualInversionEmbedding[][];
  hypernetworkTimesteps?: [number, number];
  oldTimelines: boolean;
}): Array<[string, InfotextFieldValue]> {
  const extra: Array<[string, InfotextFieldValue]> = [];
  if (p.oldTimelines) extra.push(["Old prompt editing timelines", "True"]); // Python's str(True)
  const hashes = (list: TextualInversionEmbedding[] = []): string =>
    list.map((e) => `${e.name.replace(/[:,]/g, "")}: ${e.hash}`).join(", ");
  const ti = [hashes(p.used[0]), hashes(p.used[1])].filter((x) => x).join(", ");
  if (ti) extra.push(["TI hashes", ti]);
  if (p.emphasis !== "Original" && p.prompts.some((x) => x.includes("(") || x.includes("["))) extra.push(["Emphasis", p.emphasis]);
  if (p.hypernetworkTimesteps) extra.push(["Hypernet timesteps", `${p.hypernetworkTimesteps[0]}-${p.hypernetworkTimesteps[1]}`]);
  return extra;
}
