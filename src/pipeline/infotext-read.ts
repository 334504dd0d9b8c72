/**
 * From an A1111 image back to a run: `readInfotext(png)` reads the PNG's `parameters` text (or a
 * pasted infotext), parses it exactly as A1111's PNG Info / "Send to txt2img" does
 * (`parseGenerationParameters`), and returns `txt2img` settings — plus the list of what this project
 * cannot honour, so a user knows when "same settings" will not mean "same picture":
 *
 *     const s = readInfotext("00012-1234.png", { base, hypernetworkDir: "hypernetworks" });
 *     s.cannotHonour;                      // [] when the run can be reproduced
 *     await txt2img(base, s);              // the same image
 *     await txt2img(base, { ...s, seed: 5 });  // change one thing
 *
 * How fields become settings (A1111's names → txt2img's): Prompt and Negative prompt (tags
 * included: `<hypernet:…>` stays in the prompt, as A1111 applies it from there), Steps, Sampler +
 * Schedule type (→ one name such as "DPM++ 2M Karras", resolved as A1111 1.10 resolves it; an
 * unknown name becomes "DPM++ 2M", A1111's own fallback, and is reported), CFG scale, Seed, Size,
 * Variation seed / strength, Seed resize from, ENSD, RNG ("GPU", A1111's default and what a missing
 * field means, is drawn with the "NV" imitation of NVIDIA's generator), Clip skip, Emphasis (the
 * "Original" A1111 fills in for an emphasised prompt is txt2img's default and stays unset), and
 * this project's own `Hypernet timesteps`, and "Old prompt editing timelines" (→ `oldScheduling`; A1111
 * also sets it for images from before 1.6 whose prompt has a `[`). A sampler η other than A1111's default (`Eta`,
 * `Eta DDIM`) is reported as not honoured: txt2img runs every sampler at its default η.
 */
import * as fs from "node:fs";
import { parsePrompt, listHypernetworks } from "../hypernet/prompt";
import { isPng, readPngText } from "../io/png-text";
import { A1111_SAMPLERS } from "../diffusion/sampler-names";
import { loadEmbeddings } from "../text/embeddings";
import type { BaseModel } from "./base-model";
import { type InfotextValue, parseGenerationParameters } from "./infotext";

/** A1111's "Emphasis mode" values. */
export type InfotextEmphasis = "Original" | "No norm" | "Ignore" | "None";

/** The `txt2img` settings an infotext gives (only what it states; txt2img's defaults fill the rest). */
export interface InfotextSettings {
  prompt: string;
  negativePrompt: string;
  steps?: number;
  /** An A1111 sampler name, with the schedule type appended when it is not "Automatic". */
  sampler?: string;
  cfgScale?: number;
  seed?: number;
  width?: number;
  height?: number;
  subseed?: number;
  subseedStrength?: number;
  seedResizeFrom?: { width: number; height: number };
  etaNoiseSeedDelta?: number;
  noiseSource?: "CPU" | "NV";
  clipSkip?: number;
  emphasis?: InfotextEmphasis;
  hypernetworkTimesteps?: [number, number];
  /** A1111's "Use old prompt editing timelines" (infotext "Old prompt editing timelines", or an image from before 1.6 with `[` in its prompt). */
  oldScheduling?: boolean;
}

/** What `readInfotext` returns: the settings, and what stands between them and the same image. */
export interface ReadInfotext extends InfotextSettings {
  /** The infotext as read. */
  readonly text: string;
  /** A1111's parsed fields (`parseGenerationParameters`). */
  readonly parameters: Map<string, InfotextValue>;
  /** Things in the infotext this project cannot reproduce (empty: the run can be made again). */
  readonly cannotHonour: string[];
  /** Assumptions made and fields ignored that do not change the image. */
  readonly notes: string[];
}

/** Options of `readInfotext`: what to check the infotext against. */
export interface ReadInfotextOptions {
  /** The model the run will use: its checkpoint hash is compared with `Model hash`. */
  base?: BaseModel;
  /** Where the prompt's `<hypernet:…>` networks should be. */
  hypernetworkDir?: string;
  /** Where the embeddings named in `TI hashes` should be (their hashes are compared too). */
  embeddingDir?: string;
}

/** A1111 1.10's samplers that this project does not implement. */
const UNIMPLEMENTED_SAMPLERS = ["DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM CFG++", "LCM"];
/** A1111 1.10's schedule types as (label, name) pairs; only the first four are implemented. */
const SCHEDULERS: Array<[string, string]> = [
  ["Automatic", "automatic"],
  ["Uniform", "uniform"],
  ["Karras", "karras"],
  ["Exponential", "exponential"],
  ["Polyexponential", "polyexponential"],
  ["SGM Uniform", "sgm_uniform"],
  ["KL Optimal", "kl_optimal"],
  ["Align Your Steps", "align_your_steps"],
  ["Simple", "simple"],
  ["Normal", "normal"],
  ["DDIM", "ddim"],
  ["Beta", "beta"],
];
const TIMESTEP_SAMPLERS = new Set(["DDIM", "PLMS", "UniPC"]);

/** Fields A1111 fills with these defaults; another value changes the image in a way not reproduced here. */
const MUST_BE_DEFAULT: Record<string, InfotextValue> = {
  "Schedule max sigma": 0,
  "Schedule min sigma": 0,
  "Schedule rho": 0,
  "VAE Encoder": "Full",
  "VAE Decoder": "Full",
  "FP8 weight": "Disable",
  "Hires resize-1": 0,
  "Hires resize-2": 0,
};
/** Fields that, when present, mean something this project does not do. */
const NOT_REPRODUCED: Record<string, string> = {
  "Face restoration": "face restoration",
  Tiling: "seamless tiling",
  "Token merging ratio": "token merging",
  "Token merging ratio hr": "token merging",
  "Image CFG scale": "an instruct-pix2pix model",
  "Conditional mask weight": "an inpainting model",
  "Init image hash": "img2img",
  Refiner: "a refiner model",
  "Sigma churn": "sampler noise settings (s_churn)",
  "Sigma tmin": "sampler noise settings (s_tmin)",
  "Sigma tmax": "sampler noise settings (s_tmax)",
  "Sigma noise": "sampler noise settings (s_noise)",
  "Discard penultimate sigma": "the 'always discard next-to-last sigma' setting",
  NGMS: "negative guidance minimum sigma",
  Eta: "a sampler η other than the default (1)",
  "Eta DDIM": "a DDIM η other than the default (0)",
  "Skip Early CFG": "skipping early CFG",
  "Pad conds v0": "A1111 before 1.6's way of padding conditionings (DDIM/PLMS)",
  "Downcast alphas_cumprod": "A1111 before 1.7's float16 noise schedule (alphas_cumprod downcast)",
  "Lora hashes": "LoRA networks",
};
/** Fields read into settings or checked below, and fields that do not change the image. */
const HANDLED = new Set([
  "Old prompt editing timelines",
  "Prompt",
  "Negative prompt",
  "Steps",
  "Sampler",
  "Schedule type",
  "CFG scale",
  "Seed",
  "Size-1",
  "Size-2",
  "Variation seed",
  "Variation seed strength",
  "Seed resize from-1",
  "Seed resize from-2",
  "ENSD",
  "RNG",
  "Clip skip",
  "Emphasis",
  "Refiner switch by sampling steps",
  "Hypernet timesteps",
  "Model hash",
  "Model",
  "TI hashes",
  "Version",
  "Hires sampler",
  "Hires checkpoint",
  "Hires prompt",
  "Hires negative prompt",
  "Mask mode",
  "Masked content",
  "Inpaint area",
  "Masked area padding",
  "Cache FP16 weight for LoRA",
  "Hypernet",
  "Hypernet strength",
  "Hypernet hash",
  "Batch size",
  "Batch pos",
  "User",
  "VAE hash",
  "VAE",
  // A prompt and negative prompt of different lengths are always padded to the same length here.
  "Pad conds",
]);

/** A number field; `what` goes into the note when it is not a valid one. */
function num(
  d: Map<string, InfotextValue>,
  key: string,
  problems: string[],
  check: (n: number) => boolean = Number.isFinite,
): number | undefined {
  const v = d.get(key);
  if (v === undefined) return undefined;
  const n = typeof v === "number" ? v : Number(String(v).trim());
  if (String(v).trim() === "" || !check(n)) {
    problems.push(`${key}: ${JSON.stringify(v)} is not a usable value; left at txt2img's default`);
    return undefined;
  }
  return n;
}

const isCount = (n: number): boolean => Number.isSafeInteger(n) && n >= 1;
const isSeed = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;

/** A1111 1.10's `get_sampler_and_scheduler` on the infotext's Sampler and Schedule type, as one name for `samplerByName`. */
function samplerSetting(d: Map<string, InfotextValue>, cannot: string[], notes: string[]): string {
  let name = d.has("Sampler") ? String(d.get("Sampler")) : "";
  if (!name) notes.push("no Sampler field: A1111 pastes its first sampler, DPM++ 2M, and so does this");
  let schedule = SCHEDULERS.find(([label, id]) => label === d.get("Schedule type") || id === d.get("Schedule type"))?.[0] ?? "Automatic";
  if (d.has("Schedule type") && !SCHEDULERS.some(([label, id]) => label === d.get("Schedule type") || id === d.get("Schedule type"))) {
    notes.push(`Schedule type: unknown label ${JSON.stringify(d.get("Schedule type"))}; A1111 reads it as Automatic`);
  }
  name = name || "DPM++ 2M";
  for (const [label, id] of SCHEDULERS) {
    const suffix = [label, id].find((s) => name.endsWith(` ${s}`));
    if (suffix) {
      schedule = label;
      name = name.slice(0, -(suffix.length + 1));
      break;
    }
  }
  if (UNIMPLEMENTED_SAMPLERS.includes(name)) {
    cannot.push(`Sampler: ${name} is an A1111 sampler this project does not implement; DPM++ 2M is used instead`);
    name = "DPM++ 2M";
  } else if (!(A1111_SAMPLERS as readonly string[]).includes(name)) {
    cannot.push(`Sampler: unknown sampler ${JSON.stringify(name)} (A1111 itself falls back to DPM++ 2M, and so does this)`);
    name = "DPM++ 2M";
  }
  if (!["Automatic", "Uniform", "Karras", "Exponential"].includes(schedule)) {
    cannot.push(`Schedule type: ${schedule} is not implemented here; the sampler's automatic schedule is used`);
    schedule = "Automatic";
  }
  return schedule === "Automatic" || TIMESTEP_SAMPLERS.has(name) ? name : `${name} ${schedule}`;
}

/** The names and short hashes of A1111's `TI hashes: "name: hash, name2: hash2"`. */
export function parseTiHashes(value: string): Array<[string, string]> {
  return value
    .split(",")
    .map((part) => part.split(":").map((s) => s.trim()))
    .filter((p): p is [string, string] => p.length === 2 && p[0]!.length > 0)
    .map(([n, h]) => [n, h]);
}

/** Check the infotext's networks and model against what this machine has. */
function checkResources(d: Map<string, InfotextValue>, opts: ReadInfotextOptions, cannot: string[], notes: string[]): void {
  const prompt = parsePrompt(String(d.get("Prompt") ?? ""));
  for (const tag of prompt.ignored) cannot.push(`prompt tag ${tag}: only hypernetworks are applied here; it is removed from the prompt`);
  if (prompt.hypernets.length) {
    if (!opts.hypernetworkDir)
      notes.push(
        `the prompt uses ${prompt.hypernets.map((h) => `<hypernet:${h.name}>`).join(", ")}: pass hypernetworkDir to txt2img (and to readInfotext to check they exist)`,
      );
    else {
      const known = listHypernetworks(opts.hypernetworkDir);
      for (const h of prompt.hypernets) if (!known.has(h.name)) cannot.push(`hypernetwork "${h.name}" is not in ${opts.hypernetworkDir}`);
    }
  }
  const ti = d.get("TI hashes");
  if (ti !== undefined) {
    const wanted = parseTiHashes(String(ti));
    if (!opts.embeddingDir)
      notes.push(
        `the run used embeddings ${wanted.map(([n]) => n).join(", ")}: pass embeddingDir to txt2img (and to readInfotext to check them)`,
      );
    else if (opts.base) {
      const db = loadEmbeddings(opts.embeddingDir, opts.base.tokenizer, { width: opts.base.textEncoder.config.width });
      for (const [name, hash] of wanted) {
        const e = db.get(name);
        if (!e) cannot.push(`embedding "${name}" is not in ${opts.embeddingDir} (or cannot be used with this model)`);
        else if (!e.hash.startsWith(hash) && !hash.startsWith(e.hash))
          cannot.push(`embedding "${name}": ${e.file} has hash ${e.hash}, the image was made with ${hash}`);
      }
    } else notes.push("TI hashes: pass base as well as embeddingDir to check the embeddings");
  }
  const hash = d.get("Model hash");
  if (hash !== undefined && opts.base) {
    const own = opts.base.checkpointHash;
    const h = String(hash);
    if (!own) notes.push(`Model hash ${h}: the loaded model "${opts.base.name}" has no file hash to compare`);
    else if (h.length === 8)
      notes.push(`Model hash ${h} is A1111's old 8-digit hash, which cannot be compared with the file's SHA-256 (${own})`);
    else if (!own.startsWith(h) && !h.startsWith(own))
      cannot.push(
        `Model hash ${h}${d.has("Model") ? ` (${String(d.get("Model"))})` : ""} differs from the loaded model's ${own} (${opts.base.name})`,
      );
  }
}

/**
 * txt2img settings from A1111's parsed fields (see the module comment), with what cannot be
 * honoured and the notes. `readInfotext` is this plus reading the text.
 */
export function settingsFromParameters(
  d: Map<string, InfotextValue>,
  opts: ReadInfotextOptions = {},
): InfotextSettings & { cannotHonour: string[]; notes: string[] } {
  const cannot: string[] = [];
  const notes: string[] = [];
  const s: InfotextSettings = { prompt: String(d.get("Prompt") ?? ""), negativePrompt: String(d.get("Negative prompt") ?? "") };
  const set = <K extends keyof InfotextSettings>(k: K, v: InfotextSettings[K] | undefined): void => {
    if (v !== undefined) s[k] = v;
  };
  set("steps", num(d, "Steps", cannot, isCount));
  s.sampler = samplerSetting(d, cannot, notes);
  set("cfgScale", num(d, "CFG scale", cannot));
  set("seed", num(d, "Seed", cannot, isSeed));
  set("width", num(d, "Size-1", cannot, isCount));
  set("height", num(d, "Size-2", cannot, isCount));
  const strength = num(d, "Variation seed strength", cannot);
  if (strength !== undefined && strength !== 0) {
    s.subseedStrength = strength;
    set("subseed", num(d, "Variation seed", cannot, isSeed));
  }
  const rw = num(d, "Seed resize from-1", cannot, isCount);
  const rh = num(d, "Seed resize from-2", cannot, isCount);
  if (rw !== undefined && rh !== undefined) s.seedResizeFrom = { width: rw, height: rh };
  set("etaNoiseSeedDelta", num(d, "ENSD", cannot, Number.isSafeInteger));
  const rng = String(d.get("RNG") ?? "GPU");
  if (rng === "CPU" || rng === "NV") s.noiseSource = rng;
  else {
    s.noiseSource = "NV";
    if (rng === "GPU")
      notes.push(
        "RNG: GPU (A1111's default) — drawn with the NV source, which is what NVIDIA cards draw; images made on AMD, Intel or Apple GPUs differ",
      );
    else cannot.push(`RNG: ${rng} is not an A1111 noise source this project knows; NV is used`);
  }
  const clip = num(d, "Clip skip", cannot, isCount);
  if (clip !== undefined && clip > 1) s.clipSkip = clip;
  // A1111 adds "Emphasis: Original" to any text whose prompt weights something: that is txt2img's
  // default, so only the other modes become a setting.
  const emphasis = d.get("Emphasis");
  if (emphasis !== undefined && emphasis !== "Original") {
    if (["No norm", "Ignore", "None"].includes(String(emphasis))) s.emphasis = String(emphasis) as InfotextEmphasis;
    else cannot.push(`Emphasis: ${String(emphasis)} is not an A1111 emphasis mode this project knows; "Original" is used`);
  }
  // A1111 casts the value to the setting's bool: "False" is false, anything else true
  const isOn = (v: InfotextValue): boolean => v !== "False" && v !== false && v !== "";
  const oldTimelines = d.get("Old prompt editing timelines");
  if (oldTimelines !== undefined) s.oldScheduling = isOn(oldTimelines);
  // A1111 1.10 writes this flag (off) into every parsed text; on, it only changes when a refiner takes over.
  const refinerSwitch = d.get("Refiner switch by sampling steps");
  if (refinerSwitch !== undefined && isOn(refinerSwitch)) {
    if (d.has("Refiner")) cannot.push("Refiner switch by sampling steps: A1111 before 1.8's refiner switch is not reproduced here");
    else notes.push("Refiner switch by sampling steps: on, but there is no refiner, so it changes nothing");
  }
  const gate = /^(\d+)-(\d+)$/.exec(String(d.get("Hypernet timesteps") ?? ""));
  if (gate) s.hypernetworkTimesteps = [Number(gate[1]), Number(gate[2])];
  else if (d.has("Hypernet timesteps")) cannot.push(`Hypernet timesteps: ${JSON.stringify(d.get("Hypernet timesteps"))} is not "min-max"`);
  if (
    d.has("Denoising strength") &&
    (Number(d.get("Hires resize-1")) !== 0 || d.has("Hires upscale") || d.has("Hires upscaler") || d.has("Hires steps"))
  ) {
    const defaults: Record<string, InfotextValue> = {
      "Hires sampler": "Use same sampler",
      "Hires schedule type": "Use same scheduler",
      "Hires checkpoint": "Use same checkpoint",
      "Hires prompt": "",
      "Hires negative prompt": "",
      "Hires resize-1": 0,
      "Hires resize-2": 0,
    };
    const hires = [...d].filter(([k, v]) => k.startsWith("Hires ") && !(k in defaults && defaults[k] === v));
    cannot.push(
      `hires fix (${hires.map(([k, v]) => `${k}: ${String(v)}`).join(", ")}, Denoising strength: ${String(d.get("Denoising strength"))}): only the first pass is made here, at ${s.width ?? "?"}x${s.height ?? "?"}`,
    );
  }
  for (const [k, v] of d) {
    if (k in MUST_BE_DEFAULT) {
      if (String(v) !== String(MUST_BE_DEFAULT[k]))
        cannot.push(`${k}: ${String(v)} (this project does not reproduce a value other than ${String(MUST_BE_DEFAULT[k])})`);
    } else if (k in NOT_REPRODUCED) {
      cannot.push(`${k}: ${String(v)} — ${NOT_REPRODUCED[k]} is not reproduced here`);
    } else if (!HANDLED.has(k) && !k.startsWith("Hires ") && k !== "Denoising strength") {
      notes.push(`${k}: ${String(v)} — not used here`);
    }
  }
  checkResources(d, opts, cannot, notes);
  return { ...s, cannotHonour: cannot, notes };
}

/** The infotext in `source`: PNG bytes, a path to a `.png`, or the text itself. */
function infotextOf(source: string | Uint8Array): string {
  if (typeof source !== "string") {
    const text = readPngText(source, "PNG image").get("parameters");
    if (text === undefined)
      throw new Error(
        'PNG image: it has no A1111 "parameters" text (the generation parameters); was it saved by A1111 or txt2img with its infotext?',
      );
    return text;
  }
  if (!source.includes("\n") && /\.png$/i.test(source.trim())) {
    const file = source.trim();
    if (!fs.existsSync(file)) throw new Error(`${file}: no such file; pass an existing PNG, or the infotext itself`);
    const bytes = fs.readFileSync(file);
    if (!isPng(bytes)) throw new Error(`${file}: not a PNG image`);
    const text = readPngText(bytes, file).get("parameters");
    if (text === undefined)
      throw new Error(`${file}: the PNG has no A1111 "parameters" text; was it saved by A1111 or txt2img with its infotext?`);
    return text;
  }
  return source;
}

/**
 * The txt2img settings of an A1111 image (see the module comment): `source` is PNG bytes, a path
 * to a PNG, or the infotext itself (as copied from A1111's PNG Info). `opts` names what to check
 * the infotext against (the model, the hypernetwork and embedding folders).
 */
export function readInfotext(source: string | Uint8Array, opts: ReadInfotextOptions = {}): ReadInfotext {
  const text = infotextOf(source);
  const parameters = parseGenerationParameters(text);
  return { ...settingsFromParameters(parameters, opts), text, parameters };
}
