/**
 * AUTOMATIC1111's infotext — the "generation parameters" text under an image and in its PNG's
 * `parameters` chunk — written and parsed exactly as A1111 1.10 does:
 *
 *     masterpiece, (best quality:1.2) <hypernet:watery:0.8>
 *     Negative prompt: blurry
 *     Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly
 *
 * - `formatInfotext` = processing.py `create_infotext`: the prompt as typed (extra-network tags
 *   included — A1111 writes no `Hypernet:` field for them), `Negative prompt:` when there is one,
 *   then `key: value` pairs in A1111's order, each value quoted as `infotext_utils.quote` does (JSON
 *   when it holds `,`, `:` or a newline); numbers as Python prints them.
 * - `parseGenerationParameters` = infotext_utils.py `parse_generation_parameters` with A1111's
 *   default settings (no styles, nothing skipped): the same keys, values and defaults, in the same
 *   order, including its quirks (the prompts come after the text's own fields; an empty value drops
 *   its key; `Size: 512x512` becomes `Size-1` and `Size-2`; a legacy `Hypernet:` field is appended
 *   to the prompt as a tag; a text naming one hires prompt gets both; old hires-fix fields are
 *   converted; `Emphasis: Original` is added when a prompt weights anything, `Hires schedule type`
 *   and `Refiner switch by sampling steps` whenever missing; the `Version` backward-compatibility
 *   flags). Checked against A1111's own function (test/scripts/run_a1111_infotext.py).
 *
 * `readInfotext` (infotext-read.ts) turns the parsed fields into txt2img settings.
 */

import { parsePromptAttention } from "../text/prompt-attention";

/** A value in A1111's parsed dict: strings as read, and the few ints/bools its defaults add. */
export type InfotextValue = string | number | boolean;

// Python's `\s` and `\w` for str patterns (JavaScript's differ outside ASCII).
const WS = "[\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const WORD = "[\\p{L}\\p{N}_]";
/** `re_param` of infotext_utils.py, in JavaScript. */
const RE_PARAM = new RegExp(`${WS}*(${WORD}(?:${WORD}|[ \\-/])+):${WS}*("(?:\\\\[^\\n]|[^\\\\"])+"|[^,]*)(?:,|$)`, "gu");
/** `re_imagesize`; Python's `$` also matches before a final newline. */
const RE_IMAGESIZE = /^(\p{Nd}+)x(\p{Nd}+)\n?$/u;
const RE_STRIP = new RegExp(`^${WS}+|${WS}+$`, "gu");

/** Python's `str.strip()`. */
function pyStrip(s: string): string {
  return s.replace(RE_STRIP, "");
}

/** `infotext_utils.quote`: JSON-quoted when the value holds a comma, a newline or a colon. */
export function quoteInfotext(value: string): string {
  return /[,\n:]/.test(value) ? JSON.stringify(value) : value;
}

/** `infotext_utils.unquote`: a `"…"` value read as a JSON string, anything else (or invalid JSON) as is. */
export function unquoteInfotext(text: string): string {
  if (text.length === 0 || text[0] !== '"' || text[text.length - 1] !== '"') return text;
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === "string" ? v : text;
  } catch {
    return text;
  }
}

/** A number as Python's `str()` prints it: ints plainly, floats as `repr` (`0.5`, `1e-05`, `1e+16`). */
export function pyNumberText(n: number, float = !Number.isInteger(n)): string {
  if (!Number.isFinite(n)) return Number.isNaN(n) ? "nan" : n > 0 ? "inf" : "-inf";
  if (!float) return String(n);
  const [mant, expText] = n.toExponential().split("e") as [string, string];
  const exp = Number(expText);
  const neg = mant.startsWith("-");
  const digits = mant.replace("-", "").replace(".", "");
  let body: string;
  if (exp < -4 || exp >= 16) {
    body = `${digits[0]}${digits.length > 1 ? "." + digits.slice(1) : ""}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  } else if (exp < 0) {
    body = `0.${"0".repeat(-exp - 1)}${digits}`;
  } else {
    const whole = digits.slice(0, exp + 1).padEnd(exp + 1, "0");
    body = `${whole}.${digits.slice(exp + 1) || "0"}`;
  }
  return neg ? `-${body}` : body;
}

/** A field value for `formatInfotext`: text, a number (an int unless it has a fraction), or omitted. */
export type InfotextFieldValue = string | number | bigint | null | undefined;

/** What `formatInfotext` writes, in A1111 1.10's order (see `create_infotext`). */
export interface InfotextParams {
  prompt: string;
  negativePrompt?: string;
  steps: number;
  /** A1111's sampler name without a schedule label ("DPM++ 2M"). */
  sampler: string;
  /** A1111's schedule-type label ("Automatic", "Karras", "Exponential", "Uniform"). */
  scheduleType: string;
  cfgScale: number;
  seed: number | bigint;
  width: number;
  height: number;
  modelHash?: string | null;
  model?: string | null;
  /** Variation seed and strength (written only when the strength is not 0). */
  subseed?: number | bigint;
  subseedStrength?: number;
  seedResizeFrom?: { width: number; height: number };
  /** Written when > 1. */
  clipSkip?: number;
  /** Written only when the sampler uses it (A1111's `is_sampler_using_eta_noise_seed_delta`). */
  etaNoiseSeedDelta?: number;
  /** A1111's "RNG" setting; "GPU" (its default) is not written. */
  rng?: "GPU" | "CPU" | "NV";
  /** `p.extra_generation_params` in insertion order (TI hashes, Emphasis, Eta, …). */
  extra?: ReadonlyArray<readonly [string, InfotextFieldValue]>;
}

/** A1111 1.10's samplers that draw fresh noise every step and so use ENSD (`uses_ensd`). */
const ENSD_SAMPLERS = new Set(["Euler a", "DPM2 a", "DPM++ 2S a", "DPM fast", "DPM adaptive"]);

/** Whether A1111 writes ENSD for this sampler and η (η = 0 draws no noise). */
export function samplerUsesEnsd(sampler: string, eta = 1): boolean {
  return eta !== 0 && ENSD_SAMPLERS.has(sampler);
}

function fieldText(v: string | number | bigint): string {
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "number") return pyNumberText(v);
  return quoteInfotext(v);
}

/** A1111's infotext for one image (see the module comment). */
export function formatInfotext(p: InfotextParams): string {
  const strength = p.subseedStrength ?? 0;
  const resize =
    p.seedResizeFrom && p.seedResizeFrom.width > 0 && p.seedResizeFrom.height > 0
      ? `${p.seedResizeFrom.width}x${p.seedResizeFrom.height}`
      : null;
  const ensd = p.etaNoiseSeedDelta && samplerUsesEnsd(p.sampler) ? p.etaNoiseSeedDelta : null;
  const fields: Array<readonly [string, InfotextFieldValue]> = [
    ["Steps", p.steps],
    ["Sampler", p.sampler],
    ["Schedule type", p.scheduleType],
    ["CFG scale", p.cfgScale],
    ["Seed", p.seed],
    ["Size", `${p.width}x${p.height}`],
    ["Model hash", p.modelHash],
    ["Model", p.model],
    ["Variation seed", strength === 0 ? null : (p.subseed ?? 0)],
    ["Variation seed strength", strength === 0 ? null : strength],
    ["Seed resize from", resize],
    ["Clip skip", (p.clipSkip ?? 1) <= 1 ? null : p.clipSkip],
    ["ENSD", ensd],
    ["RNG", p.rng && p.rng !== "GPU" ? p.rng : null],
    ...(p.extra ?? []),
  ];
  // A later duplicate key replaces the value in place, as a Python dict literal with ** does.
  const merged = new Map<string, InfotextFieldValue>();
  for (const [k, v] of fields) merged.set(k, v);
  const params = [...merged]
    .filter((e): e is [string, string | number | bigint] => e[1] !== null && e[1] !== undefined)
    .map(([k, v]) => (k === v ? k : `${k}: ${fieldText(v)}`))
    .join(", ");
  const negative = p.negativePrompt ? `\nNegative prompt: ${p.negativePrompt}` : "";
  return pyStrip(`${p.prompt}${negative}\n${params}`);
}

// ---- parsing ----------------------------------------------------------------------------------

/** `re_param.findall`: the (key, raw value) pairs of a parameters line. */
function findParams(line: string): Array<[string, string]> {
  return [...line.matchAll(RE_PARAM)].map((m) => [m[1]!, m[2]!]);
}

/** A PEP 440 version (packaging's pattern), as a comparable key; undefined when it is not one. */
function versionKey(text: string): number[] | undefined {
  const m =
    /^\s*v?(?:(\d+)!)?(\d+(?:\.\d+)*)(?:[-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?(\d+)?)?(?:-(\d+)|[-_.]?(post|rev|r)[-_.]?(\d+)?)?(?:[-_.]?(dev)[-_.]?(\d+)?)?(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?\s*$/i.exec(
      text,
    );
  if (!m) return undefined;
  const release = m[2]!.split(".").map(Number);
  while (release.length > 1 && release[release.length - 1] === 0) release.pop();
  const INF = Number.MAX_SAFE_INTEGER;
  const preRank: Record<string, number> = { a: 0, alpha: 0, b: 1, beta: 1, c: 2, rc: 2, pre: 2, preview: 2 };
  const hasPost = m[5] !== undefined || m[6] !== undefined;
  const pre =
    m[3] !== undefined ? [preRank[m[3].toLowerCase()]!, Number(m[4] ?? 0)] : !hasPost && m[8] !== undefined ? [-INF, 0] : [INF, 0];
  const post = hasPost ? Number(m[5] ?? m[7] ?? 0) : -INF;
  const dev = m[8] !== undefined ? Number(m[9] ?? 0) : INF;
  // Fixed-width key: epoch, 8 release parts (padded with 0), pre (2), post, dev.
  return [Number(m[1] ?? 0), ...release.concat(new Array(Math.max(0, 8 - release.length)).fill(0)).slice(0, 8), ...pre, post, dev];
}

function versionLess(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! < b[i]!;
  return false;
}

/**
 * A `Version` field as A1111 reads it: `v1.7.0-224-g1234567` is cut to its first two dash-separated
 * parts (a git describe's version and commit count) before being read as a PEP 440 version.
 */
function parseVersionField(raw: string): number[] | undefined {
  const m = /^([^-]+-[^-]+)-/.exec(raw);
  return versionKey(m ? m[1]! : raw);
}

/** infotext_versions.py `backcompat`: flags for infotexts written by older A1111 versions. */
function backcompat(d: Map<string, InfotextValue>): void {
  const raw = d.get("Version");
  if (raw === undefined) return;
  const ver = parseVersionField(String(raw));
  if (!ver) return;
  const lt = (v: string): boolean => versionLess(ver, versionKey(v)!);
  if (lt("1.6.0") && String(d.get("Prompt") ?? "").includes("[")) d.set("Old prompt editing timelines", true);
  if (lt("1.6.0") && ["DDIM", "PLMS"].includes(String(d.get("Sampler") ?? ""))) d.set("Pad conds v0", true);
  if (lt("v1.7.0-225")) d.set("Downcast alphas_cumprod", true);
  if (lt("1.8.0") && d.get("Refiner")) d.set("Refiner switch by sampling steps", true);
}

/** processing.py `old_hires_fix_first_pass_dimensions`. */
function oldHiresFirstPass(width: number, height: number): [number, number] {
  const scale = Math.sqrt((512 * 512) / (width * height));
  return [Math.ceil((scale * width) / 64) * 64, Math.ceil((scale * height) / 64) * 64];
}

/** The value 0–9 of a Unicode decimal digit: its distance from the start of its run of digits, mod 10. */
function digitValue(ch: string): string {
  let cp = ch.codePointAt(0)!;
  let n = 0;
  while (n < 200 && /\p{Nd}/u.test(String.fromCodePoint(cp - 1))) {
    cp--;
    n++;
  }
  return String(n % 10);
}

/** Python's `int()` of a parsed field (Unicode digits allowed); throws like Python on anything else. */
function pyInt(v: InfotextValue, key: string): number {
  if (typeof v === "number") return Math.trunc(v);
  const s = pyStrip(String(v)).replace(/\p{Nd}/gu, digitValue);
  if (!/^[+-]?\d+(_\d+)*$/.test(s)) throw new Error(`infotext: "${key}: ${String(v)}" is not an integer (A1111's parser fails here too)`);
  return Number(s.replace(/_/g, ""));
}

/** infotext_utils.py `restore_old_hires_fix_params` (with `use_old_hires_fix_width_height` off). */
function restoreOldHiresFix(res: Map<string, InfotextValue>): void {
  const fw0 = res.get("First pass size-1");
  const fh0 = res.get("First pass size-2");
  if (fw0 === undefined || fh0 === undefined) return;
  let fw = pyInt(fw0, "First pass size-1");
  let fh = pyInt(fh0, "First pass size-2");
  const width = pyInt(res.get("Size-1") ?? 512, "Size-1");
  const height = pyInt(res.get("Size-2") ?? 512, "Size-2");
  if (fw === 0 || fh === 0) [fw, fh] = oldHiresFirstPass(width, height);
  res.set("Size-1", fw);
  res.set("Size-2", fh);
  res.set("Hires resize-1", width);
  res.set("Hires resize-2", height);
}

/**
 * The defaults A1111 1.10 fills in for keys the text lacks, in its order: those before the
 * old-hires-fix conversion, then those after it.
 */
const DEFAULTS_BEFORE: Array<[string, InfotextValue]> = [
  ["Hires sampler", "Use same sampler"],
  // The hires pass's own schedule type (older parsers lack it): none in the text means "same as the first pass".
  ["Hires schedule type", "Use same scheduler"],
  ["Hires checkpoint", "Use same checkpoint"],
  ["Hires prompt", ""],
  ["Hires negative prompt", ""],
  ["Mask mode", "Inpaint masked"],
  ["Masked content", "original"],
  ["Inpaint area", "Whole picture"],
  ["Masked area padding", 32],
];
const DEFAULTS_AFTER: Array<[string, InfotextValue]> = [
  ["RNG", "GPU"],
  ["Schedule type", "Automatic"],
  ["Schedule max sigma", 0],
  ["Schedule min sigma", 0],
  ["Schedule rho", 0],
  ["VAE Encoder", "Full"],
  ["VAE Decoder", "Full"],
  ["FP8 weight", "Disable"],
];

/** Infotexts from A1111 after this version (1.8.0-139) keep the hires prompts apart from styles. */
const HR_STYLES_VERSION = versionKey("1.8.0-139")!;

/**
 * The hires-prompt step of A1111's style extraction, with no styles defined (a fresh install,
 * "Apply if any"): when the text names a hires prompt or hires negative prompt — and either has no
 * readable `Version` or one after 1.8.0-139 — both hires fields are set, each to "" when it equals
 * the main prompt (a missing one counts as equal), otherwise to itself. A field the text lacked is
 * thereby added here, right after the text's own fields.
 */
function hiresPromptsWithoutStyles(res: Map<string, InfotextValue>, prompt: string, negative: string): void {
  if (!res.has("Hires prompt") && !res.has("Hires negative prompt")) return;
  const ver = res.has("Version") ? parseVersionField(String(res.get("Version"))) : undefined;
  if (ver && !versionLess(HR_STYLES_VERSION, ver)) return;
  const hrPrompt = res.get("Hires prompt") ?? prompt;
  const hrNegative = res.get("Hires negative prompt") ?? negative;
  res.set("Hires prompt", hrPrompt === prompt ? "" : hrPrompt);
  res.set("Hires negative prompt", hrNegative === negative ? "" : hrNegative);
}

/**
 * Whether A1111's emphasis parser gives any run of the prompt or negative prompt a weight other
 * than 1 (chunk-break markers aside). A prompt whose weight Python cannot read (`(a:1.2.3)`)
 * throws, as A1111's parser does.
 */
function usesEmphasis(prompt: string, negative: string): boolean {
  const runs = [prompt, negative].flatMap((text) => {
    try {
      return parsePromptAttention(text);
    } catch (e) {
      throw new Error(`infotext: ${(e as Error).message} (A1111's parser fails on this prompt too)`);
    }
  });
  return runs.some(([text, weight]) => weight !== 1 && text !== "BREAK");
}

/**
 * A1111 1.10's `parse_generation_parameters` (see the module comment): the infotext's fields as
 * an ordered map with A1111's keys and values. Throws only where A1111's throws (a non-numeric
 * "First pass size", an unreadable emphasis weight).
 */
export function parseGenerationParameters(text: string): Map<string, InfotextValue> {
  const res = new Map<string, InfotextValue>();
  let prompt = "";
  let negative = "";
  let done = false;
  const all = pyStrip(text).split("\n");
  let lastline = all.pop()!;
  const lines = all;
  if (findParams(lastline).length < 3) {
    lines.push(lastline);
    lastline = "";
  }
  for (let line of lines) {
    line = pyStrip(line);
    if (line.startsWith("Negative prompt:")) {
      done = true;
      line = pyStrip(line.slice(16));
    }
    if (done) negative += (negative === "" ? "" : "\n") + line;
    else prompt += (prompt === "" ? "" : "\n") + line;
  }
  for (const [k, raw] of findParams(lastline)) {
    if (raw.length === 0) continue; // v[0] raises IndexError in A1111: the key is dropped
    const v = raw[0] === '"' && raw[raw.length - 1] === '"' ? unquoteInfotext(raw) : raw;
    const m = RE_IMAGESIZE.exec(v);
    if (m) {
      res.set(`${k}-1`, m[1]!);
      res.set(`${k}-2`, m[2]!);
    } else {
      res.set(k, v);
    }
  }
  hiresPromptsWithoutStyles(res, prompt, negative);
  // 1.10 stores the prompts after the fields (older parsers put them first); a field named "Prompt"
  // keeps its place and takes this value.
  res.set("Prompt", prompt);
  res.set("Negative prompt", negative);
  if (!res.has("Clip skip")) res.set("Clip skip", "1");
  const hypernet = res.get("Hypernet");
  if (hypernet !== undefined)
    res.set("Prompt", `${String(res.get("Prompt"))}<hypernet:${String(hypernet)}:${String(res.get("Hypernet strength") ?? "1.0")}>`);
  if (!res.has("Hires resize-1")) {
    res.set("Hires resize-1", 0);
    res.set("Hires resize-2", 0);
  }
  for (const [k, v] of DEFAULTS_BEFORE) if (!res.has(k)) res.set(k, v);
  restoreOldHiresFix(res);
  for (const [k, v] of DEFAULTS_AFTER) if (!res.has(k)) res.set(k, v);
  if (!res.has("Cache FP16 weight for LoRA") && res.get("FP8 weight") !== "Disable") res.set("Cache FP16 weight for LoRA", false);
  // 1.10 (older parsers lack it): a text without an Emphasis field whose prompts (as typed, before the
  // legacy Hypernet tag) weight anything means the default mode, so pasting it into a UI set otherwise
  // restores it. Chunk breaks (BREAK) are not emphasis.
  if (!res.has("Emphasis") && usesEmphasis(prompt, negative)) res.set("Emphasis", "Original");
  // 1.10 (older parsers lack it): a missing "Refiner switch by sampling steps" means off; the
  // old-version flags below may still turn it on.
  if (!res.has("Refiner switch by sampling steps")) res.set("Refiner switch by sampling steps", false);
  backcompat(res);
  return res;
}
