/**
 * A1111's samplers by A1111's names: `samplerByName("DPM++ 2M Karras", { steps: 20 })`.
 *
 * The table is A1111 1.10's (`modules/sd_samplers_kdiffusion.py`, `sd_samplers_timesteps.py`):
 * each k-diffusion sampler has a default σ schedule, used when the schedule type is "Automatic",
 * and DPM2 / DPM2 a drop the next-to-last σ:
 *
 *   Euler a, Euler, LMS, Heun   → discrete ("Uniform": the denoiser's own spacing)
 *   DPM2, DPM2 a                → Karras, next-to-last σ discarded
 *   DPM++ 2M, DPM++ 2S a, DPM++ SDE → Karras
 *   DPM++ 2M SDE                → Exponential
 *   DDIM, PLMS, UniPC           → their own timesteps (a schedule type is ignored, as A1111 does)
 *
 * "DDIM" is A1111's current DDIM (timestep-samplers.ts: one model call fewer than steps, ending at
 * t = 1); CompVis's DDIM, which A1111 ran before 1.6, is still `ddim()` in samplers.ts.
 *
 * Before 1.9 A1111 had no schedule type: "DPM++ 2M" meant the discrete spacing and the Karras
 * variants were separate names ("DPM++ 2M Karras", "LMS Karras", "DPM++ 2M SDE Exponential", …).
 * Such a name is read as A1111 1.10 reads it (`get_sampler_and_scheduler`): a trailing schedule
 * label (Karras, Exponential, Uniform, Automatic) is split off and chosen. A plain "DPM++ 2M" from
 * an old infotext therefore gets 1.10's Karras, as it does in A1111 1.10; pass
 * `sigmas: "discrete"` to get what A1111 before 1.9 did.
 *
 * Names match case-insensitively, and A1111's aliases (k_euler_a, k_dpmpp_2m_ka, …) work too.
 */
import type * as tf from "@tensorflow/tfjs";
import { type KSampleOptions, type KSamplerKind, kSampler } from "./k-samplers";
import { type Sampler, eulerAncestral, eulerSampler } from "./samplers";
import { type SigmaSpacing, a1111Sigmas } from "./sigmas";
import { type NoiseSchedule, sd15Schedule } from "./schedule";
import { a1111Ddim, a1111Plms } from "./timestep-samplers";
import { a1111Unipc } from "./unipc";

/** A1111's sampler names (1.10), in A1111's menu order. */
export const A1111_SAMPLERS = [
  "DPM++ 2M",
  "DPM++ SDE",
  "DPM++ 2M SDE",
  "DPM++ 2S a",
  "Euler a",
  "Euler",
  "LMS",
  "Heun",
  "DPM2",
  "DPM2 a",
  "DDIM",
  "PLMS",
  "UniPC",
] as const;

/** One of A1111's sampler names. */
export type A1111SamplerName = (typeof A1111_SAMPLERS)[number];

/** A1111's schedule-type labels this project implements. */
export type ScheduleType = "Automatic" | "Uniform" | "Karras" | "Exponential";

/** Names `samplerByName` accepts: A1111's names, alone or with a schedule label (the pre-1.9 style). */
export type SamplerName = A1111SamplerName | `${A1111SamplerName} ${Exclude<ScheduleType, "Automatic">}`;

/** How a name's sampler is set up (A1111 1.10's options for it). */
interface Entry {
  name: A1111SamplerName;
  aliases: string[];
  /** A1111's `scheduler` option: the spacing "Automatic" means; null for the timestep samplers. */
  spacing: SigmaSpacing | null;
  discardPenultimate: boolean;
}

const ENTRIES: Entry[] = [
  { name: "DPM++ 2M", aliases: ["k_dpmpp_2m"], spacing: "karras", discardPenultimate: false },
  { name: "DPM++ SDE", aliases: ["k_dpmpp_sde"], spacing: "karras", discardPenultimate: false },
  { name: "DPM++ 2M SDE", aliases: ["k_dpmpp_2m_sde"], spacing: "exponential", discardPenultimate: false },
  { name: "DPM++ 2S a", aliases: ["k_dpmpp_2s_a"], spacing: "karras", discardPenultimate: false },
  {
    name: "Euler a",
    aliases: ["k_euler_a", "k_euler_ancestral", "euler_a", "euler ancestral"],
    spacing: "discrete",
    discardPenultimate: false,
  },
  { name: "Euler", aliases: ["k_euler"], spacing: "discrete", discardPenultimate: false },
  { name: "LMS", aliases: ["k_lms"], spacing: "discrete", discardPenultimate: false },
  { name: "Heun", aliases: ["k_heun"], spacing: "discrete", discardPenultimate: false },
  { name: "DPM2", aliases: ["k_dpm_2"], spacing: "karras", discardPenultimate: true },
  { name: "DPM2 a", aliases: ["k_dpm_2_a"], spacing: "karras", discardPenultimate: true },
  { name: "DDIM", aliases: ["ddim"], spacing: null, discardPenultimate: false },
  { name: "PLMS", aliases: ["plms"], spacing: null, discardPenultimate: false },
  { name: "UniPC", aliases: ["unipc"], spacing: null, discardPenultimate: false },
];

/** A1111's old aliases of the "… Karras" names (k_dpmpp_2m_ka, …), which imply Karras. */
const KARRAS_ALIASES: Record<string, A1111SamplerName> = {
  k_lms_ka: "LMS",
  k_dpm_2_ka: "DPM2",
  k_dpm_2_a_ka: "DPM2 a",
  k_dpmpp_2s_a_ka: "DPM++ 2S a",
  k_dpmpp_2m_ka: "DPM++ 2M",
  k_dpmpp_sde_ka: "DPM++ SDE",
  k_dpmpp_2m_sde_ka: "DPM++ 2M SDE",
};

/** Schedule labels as trailing words of a name, and what they choose (null: the sampler's default). */
const SUFFIXES: Record<string, SigmaSpacing | null> = {
  automatic: null,
  uniform: "discrete",
  karras: "karras",
  exponential: "exponential",
};

/** A1111 names and schedule labels this project does not implement, for a precise error. */
const NOT_IMPLEMENTED_SAMPLERS = ["DPM fast", "DPM adaptive", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "Restart", "DDIM CFG++", "LCM"];
const NOT_IMPLEMENTED_SCHEDULES = ["Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps", "Simple", "Normal", "Beta"];

/** The `sigmas` option: a spacing by this project's name, an A1111 schedule label, or "automatic". */
export type SigmasOption = SigmaSpacing | "automatic" | ScheduleType;

/** Options of `samplerByName`. */
export interface SamplerByNameOptions {
  steps: number;
  /**
   * The σ schedule ("discrete" = A1111 "Uniform", "karras", "exponential"), or "automatic"
   * (default): the sampler's A1111 default (see the module comment). Ignored by DDIM, PLMS, UniPC.
   */
  sigmas?: SigmasOption;
  /** η: DDIM's (A1111 default 0) or the ancestral / SDE samplers' (default 1); others ignore it. */
  eta?: number;
}

/** A sampler from `samplerByName`, with the schedule it resolved to. */
export interface A1111Sampler extends Sampler {
  /** A1111's name of the sampler (without any schedule label), e.g. "DPM++ 2M". */
  readonly name: A1111SamplerName;
  /** The σ spacing it runs on; null for DDIM, PLMS and UniPC, which use timesteps. */
  readonly sigmaSpacing: SigmaSpacing | null;
  /** Whether the next-to-last σ is dropped (DPM2, DPM2 a). */
  readonly discardPenultimateSigma: boolean;
  /** The σ list it visits for a schedule (default SD 1.x), descending, ending in 0; null for timestep samplers. */
  sigmas(schedule?: NoiseSchedule): Float64Array | null;
  /** Accepts `KSampleOptions` (noise sampler / Brownian seeds for the SDE samplers). */
  sample(opts: KSampleOptions): Promise<tf.Tensor4D>;
}

/** What a name resolves to, before a sampler is built (exported for tests and infotext readers). */
export interface ResolvedSamplerName {
  name: A1111SamplerName;
  sigmaSpacing: SigmaSpacing | null;
  discardPenultimateSigma: boolean;
}

function spacingOf(option: SigmasOption): SigmaSpacing | null {
  const key = option.toLowerCase();
  if (key === "discrete") return "discrete";
  if (key in SUFFIXES) return SUFFIXES[key]!;
  throw new Error(`unknown sigmas ${JSON.stringify(option)}; use "automatic", "discrete" (A1111 "Uniform"), "karras" or "exponential"`);
}

function unknownName(name: string): Error {
  const lower = name.toLowerCase();
  const known = [...NOT_IMPLEMENTED_SAMPLERS, ...NOT_IMPLEMENTED_SCHEDULES].find(
    (k) => lower === k.toLowerCase() || lower.endsWith(` ${k.toLowerCase()}`),
  );
  const list = [
    "DDIM",
    "Euler a",
    "Euler",
    "Heun",
    "DPM2",
    "DPM2 a",
    "LMS",
    "DPM++ 2M",
    "DPM++ 2S a",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "PLMS",
    "UniPC",
  ]
    .map((n) => `"${n}"`)
    .join(", ");
  const why = known
    ? `"${known}" is an A1111 ${NOT_IMPLEMENTED_SCHEDULES.includes(known) ? "schedule type" : "sampler"} this project does not implement`
    : `unknown sampler "${name}"`;
  return new Error(
    `${why}; choose one of ${list}, optionally followed by a schedule type (Karras, Exponential, Uniform), e.g. "DPM++ 2M Karras"`,
  );
}

/**
 * Which sampler and σ schedule an A1111 name (plus an optional `sigmas` choice) means, as A1111
 * 1.10 resolves it. Throws on unknown names and on a schedule label that contradicts `sigmas`.
 */
export function resolveSamplerName(name: string, sigmas: SigmasOption = "automatic"): ResolvedSamplerName {
  if (typeof name !== "string" || !name.trim()) throw new Error(`sampler name must be a non-empty string, got ${JSON.stringify(name)}`);
  let key = name.trim().replace(/\s+/g, " ").toLowerCase();
  let fromName: SigmaSpacing | null | undefined;
  const aliasKarras = KARRAS_ALIASES[key];
  if (aliasKarras) {
    key = aliasKarras.toLowerCase();
    fromName = "karras";
  }
  let entry = ENTRIES.find((e) => e.name.toLowerCase() === key || e.aliases.includes(key));
  if (!entry) {
    for (const [suffix, spacing] of Object.entries(SUFFIXES)) {
      if (!key.endsWith(` ${suffix}`)) continue;
      const base = key.slice(0, -(suffix.length + 1));
      entry = ENTRIES.find((e) => e.name.toLowerCase() === base || e.aliases.includes(base));
      if (entry) fromName = spacing;
      break;
    }
  }
  if (!entry) throw unknownName(name.trim());
  const fromOption = spacingOf(sigmas);
  if (fromName !== undefined && fromName !== null && fromOption !== null && fromName !== fromOption) {
    throw new Error(
      `sampler "${name}" names the ${fromName} schedule but sigmas is "${sigmas}"; drop one of them (e.g. "${entry.name}" with sigmas: "${sigmas}")`,
    );
  }
  const chosen = fromOption ?? fromName ?? null;
  return {
    name: entry.name,
    sigmaSpacing: entry.spacing === null ? null : (chosen ?? entry.spacing),
    discardPenultimateSigma: entry.discardPenultimate,
  };
}

/**
 * A sampler by its A1111 name (see the module comment for names, schedules and defaults), for
 * `steps` steps. The result's `sample` takes the usual `SampleOptions` (denoiser, shape, cond,
 * uncond, guidance scale, seed or rng, callback).
 */
export function samplerByName(name: SamplerName | string, config: SamplerByNameOptions): A1111Sampler {
  if (!config || !Number.isSafeInteger(config.steps) || config.steps < 1) {
    throw new Error(`samplerByName("${name}"): steps must be a positive integer, got ${JSON.stringify(config?.steps)}`);
  }
  const r = resolveSamplerName(name, config.sigmas ?? "automatic");
  const { steps, eta } = config;
  const spacing = r.sigmaSpacing;
  const sigmasOf =
    spacing === null ? () => null : (schedule = sd15Schedule()) => a1111Sigmas(spacing, steps, r.discardPenultimateSigma, schedule);
  let base: Sampler;
  switch (r.name) {
    case "Euler a":
      base = eulerAncestral({ steps, sigmas: spacing!, ...(eta !== undefined ? { eta } : {}) });
      break;
    case "Euler":
      base = eulerSampler({ steps, sigmas: spacing! });
      break;
    case "DDIM":
      base = a1111Ddim({ steps, ...(eta !== undefined ? { eta } : {}) });
      break;
    case "PLMS":
      base = a1111Plms({ steps });
      break;
    case "UniPC":
      base = a1111Unipc({ steps });
      break;
    default:
      base = kSampler(r.name as KSamplerKind, { steps, sigmas: (s) => sigmasOf(s)!, ...(eta !== undefined ? { eta } : {}) });
  }
  sigmasOf(); // validate the schedule now rather than at the first sample
  return {
    name: r.name,
    steps,
    sigmaSpacing: spacing,
    discardPenultimateSigma: r.discardPenultimateSigma,
    sigmas: sigmasOf,
    sample: (opts: KSampleOptions) => base.sample(opts),
  };
}
