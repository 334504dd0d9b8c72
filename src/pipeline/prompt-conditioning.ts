/**
 * Per-step conditioning for AUTOMATIC1111's prompt editing, alternation and composable diffusion
 * (`AND`), as its `CFGDenoiser` does it (modules/sd_samplers_cfg_denoiser.py, prompt_parser.py):
 *
 * - Every prompt is split at `AND` (`multicondPromptList`): sub-prompts with weights (default 1).
 * - Every sub-prompt, and the negative prompt, gets its schedule over the user's `steps`
 *   (`promptSchedules`); the distinct texts of one schedule are encoded together in one encoder
 *   call (A1111's `get_learned_conditioning` batch) and kept for the whole run: each text is
 *   encoded once.
 * - The model call counter: A1111's `CFGDenoiser.step` starts at 0 and goes up by one at the end
 *   of every guided model evaluation (`forward`), not per sampler step, so a second-order sampler
 *   (Heun, DPM2, DPM++ 2S a, DPM++ SDE, PLMS's first step) moves through the schedule once per
 *   evaluation. At call `k` every schedule uses its entry `scheduleIndexAt(schedule, k)`
 *   (`reconstruct_cond_batch`).
 *   The schedules run over A1111's `total_steps`: twice the user's steps for the samplers A1111
 *   marks `second_order` (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE; `a1111ScheduleSteps`), so
 *   `[a:b:0.5]` with Heun switches half-way through the run, after model call `steps`.
 * - The conditionings of one call are stacked as `reconstruct_multicond_batch` does: image by
 *   image, sub-prompt by sub-prompt; a shorter one is padded by repeating its last vector
 *   (`stack_conds`). When conds and uncond differ in length the shorter side is padded with the
 *   empty prompt's windows (A1111's "Pad conds", which this project always does).
 * - Guidance combines the model's outputs as `combine_denoised`:
 *   `u + Σ_i w_i·(c_i − u)·cfg` (see `combineMulticond`).
 *
 * One difference from A1111: it encodes every schedule entry (duplicates of alternation included),
 * and "Original" emphasis restores the mean over that whole batch; here each distinct text is
 * encoded once, so with emphasis weights and texts repeated unevenly the rescale can differ slightly.
 */
import * as tf from "@tensorflow/tfjs";
import { resolveSamplerName } from "../diffusion/sampler-names";
import { type ScheduleEntry, multicondPromptList, promptSchedules, scheduleIndexAt } from "../text/prompt-schedule";

/** Samplers A1111 1.10 marks `second_order` (two model calls a step): their schedules run over 2·steps. */
const SECOND_ORDER = new Set(["Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE"]);

/**
 * A1111's `SamplerData.total_steps(steps)` (processing.py `setup_conds`): the step count the
 * prompt schedules are made over for sampler `name` (any name `samplerByName` accepts).
 */
export function a1111ScheduleSteps(name: string, steps: number): number {
  return SECOND_ORDER.has(resolveSamplerName(name).name) ? steps * 2 : steps;
}

/** Texts → text-encoder context `[texts, k·window, width]` (one A1111 encoder batch); the caller owns it. */
export type EncodeTexts = (texts: string[]) => tf.Tensor3D;

/** The conditioning of one model call. Tensors belong to the `PromptConditioning`. */
export interface ConditioningAt {
  /** Every image's sub-prompt conditionings, stacked: `[Σ sub-prompts, T, width]`. */
  conds: tf.Tensor3D;
  /** Per image: its sub-prompts as [row of `conds`, weight]. */
  weights: [row: number, weight: number][][];
  /** The negative prompt's conditioning `[1, T, width]` (one negative prompt for all images). */
  uncond: tf.Tensor3D;
}

/** One schedule encoded: its entries and, per entry, the row of `context` holding its text. */
interface EncodedSchedule {
  schedule: ScheduleEntry[];
  rowOf: number[];
  context: tf.Tensor3D;
}

/** Options of {@link PromptConditioning.build}. */
export interface PromptConditioningOptions {
  /** One prompt per image of the UNet batch (AND, prompt editing, alternation allowed). */
  prompts: readonly string[];
  /** The negative prompt (prompt editing and alternation allowed; AND is literal text, as in A1111). */
  negativePrompt: string;
  /** The steps the schedules run over (A1111's total steps: `a1111ScheduleSteps`). */
  steps: number;
  /** A1111's "Use old prompt editing timelines" setting (`use_old_scheduling`; default off). */
  oldScheduling?: boolean;
  /** The text encoder's batch call (txt2img: `encodePrompts` with embeddings, emphasis, clip skip). */
  encode: EncodeTexts;
}

function encodeSchedule(schedule: ScheduleEntry[], encode: EncodeTexts): EncodedSchedule {
  const texts: string[] = [];
  const rowOf = schedule.map(([, text]) => {
    let i = texts.indexOf(text);
    if (i < 0) i = texts.push(text) - 1;
    return i;
  });
  return { schedule, rowOf, context: encode(texts) };
}

/** Pad `[1, T, C]` to `len` tokens by repeating its last vector (A1111's `stack_conds`). Inside a tidy. */
function padLast(c: tf.Tensor3D, len: number): tf.Tensor3D {
  const t = c.shape[1];
  if (t === len) return c;
  const last = tf.slice(c, [0, t - 1, 0], [1, 1, c.shape[2]]);
  return tf.concat([c, tf.tile(last, [1, len - t, 1])], 1);
}

/** Pad `[B, T, C]` to `len` tokens with copies of the empty prompt's windows `[1, W, C]`. Inside a tidy. */
function padEmpty(c: tf.Tensor3D, len: number, empty: tf.Tensor3D): tf.Tensor3D {
  const t = c.shape[1];
  if (t === len) return c;
  const w = empty.shape[1];
  if ((len - t) % w !== 0) throw new Error(`prompt conditioning: cannot pad ${t} tokens to ${len} with ${w}-token windows`);
  return tf.concat([c, tf.tile(empty, [c.shape[0], (len - t) / w, 1])], 1);
}

/**
 * The per-call conditioning of one UNet batch (see the module comment). Build it with
 * {@link PromptConditioning.build}; it owns its tensors until `dispose()`.
 */
export class PromptConditioning {
  private readonly cache = new Map<string, ConditioningAt>();

  private constructor(
    private readonly subs: { schedule: EncodedSchedule; weight: number }[][],
    private readonly negative: EncodedSchedule,
    private readonly empty: tf.Tensor3D,
    private readonly owned: tf.Tensor[],
  ) {}

  /**
   * Whether these prompts need per-call conditioning: some prompt has `AND`, a weight other than 1,
   * prompt editing or alternation, or the negative prompt has editing or alternation. That
   * includes an edit that never switches within the run (`[a:b:20]` over 10 steps): its schedule
   * has one entry, but its text ("a") is not the prompt's text, and A1111 encodes the resolved
   * text; so does a sub-prompt weight of 1 written out (`a cat:1` encodes "a cat"). When not
   * needed, the plain path (one encoder call of the prompts as written, plain CFG) gives A1111's
   * result.
   */
  static needed(prompts: readonly string[], negativePrompt: string, steps: number, oldScheduling = false): boolean {
    const { indexes, texts } = multicondPromptList(prompts);
    if (indexes.some((subs) => subs.length !== 1 || subs[0]![1] !== 1)) return true;
    // "a cat:1" is the sub-prompt "a cat" at weight 1: A1111 encodes "a cat" (trailing spaces,
    // which the split also drops, do not change the tokens)
    if (indexes.some((subs, p) => texts[subs[0]![0]] !== prompts[p]!.replace(/\s+$/u, ""))) return true;
    const all = [...texts, negativePrompt];
    return promptSchedules(all, steps, { oldScheduling }).some((s, i) => s.length !== 1 || s[0]![1] !== all[i]);
  }

  /** Parse, schedule and encode every distinct text once. */
  static build(opts: PromptConditioningOptions): PromptConditioning {
    const { prompts, negativePrompt, steps, encode } = opts;
    if (prompts.length === 0) throw new Error("prompt conditioning: give at least one prompt");
    const { indexes, texts } = multicondPromptList(prompts);
    const schedules = promptSchedules([...texts, negativePrompt], steps, { oldScheduling: opts.oldScheduling === true });
    const owned: tf.Tensor[] = [];
    try {
      const encoded = schedules.map((s) => {
        const e = encodeSchedule(s, encode);
        owned.push(e.context);
        return e;
      });
      const empty = encode([""]);
      owned.push(empty);
      const subs = indexes.map((list) => list.map(([i, weight]) => ({ schedule: encoded[i]!, weight })));
      return new PromptConditioning(subs, encoded[texts.length]!, empty, owned);
    } catch (e) {
      tf.dispose(owned);
      throw e;
    }
  }

  /** Which schedule entry each sub-prompt (image by image) and the negative prompt use at model call `call`. */
  entriesAt(call: number): { subs: number[][]; negative: number } {
    return {
      subs: this.subs.map((list) => list.map((s) => scheduleIndexAt(s.schedule.schedule, call))),
      negative: scheduleIndexAt(this.negative.schedule, call),
    };
  }

  /** The conditioning at 0-based model call `call` (A1111's `CFGDenoiser.step`); cached per distinct selection. */
  at(call: number): ConditioningAt {
    const sel = this.entriesAt(call);
    // Keyed by the encoded rows chosen, so entries with the same text (alternation) share a stack.
    const key = JSON.stringify([
      this.subs.map((list, j) => list.map((s, k) => s.schedule.rowOf[sel.subs[j]![k]!])),
      this.negative.rowOf[sel.negative],
    ]);
    const hit = this.cache.get(key);
    if (hit) return hit;
    const row = (e: EncodedSchedule, entry: number): tf.Tensor3D => tf.slice(e.context, [e.rowOf[entry]!, 0, 0], [1, -1, -1]);
    const weights: [number, number][][] = [];
    const made = tf.tidy(() => {
      const rows: tf.Tensor3D[] = [];
      this.subs.forEach((list, j) => {
        weights.push(list.map((s, k) => [rows.push(row(s.schedule, sel.subs[j]![k]!)) - 1, s.weight]));
      });
      const condLen = Math.max(...rows.map((r) => r.shape[1]));
      let conds = tf.concat(
        rows.map((r) => padLast(r, condLen)),
        0,
      ) as tf.Tensor3D;
      let uncond = row(this.negative, sel.negative);
      const len = Math.max(condLen, uncond.shape[1]);
      conds = padEmpty(conds, len, this.empty);
      uncond = padEmpty(uncond, len, this.empty);
      return { conds, uncond };
    });
    // Kept: a sampler may call this inside its own tidy, and the cache outlives that scope.
    const out: ConditioningAt = { conds: tf.keep(made.conds), uncond: tf.keep(made.uncond), weights };
    this.cache.set(key, out);
    return out;
  }

  /** Free every tensor (encodings and cached stacks). */
  dispose(): void {
    for (const c of this.cache.values()) tf.dispose([c.conds, c.uncond]);
    this.cache.clear();
    tf.dispose(this.owned);
  }
}

/**
 * A1111's `combine_denoised` on ε: `out` holds the model's outputs for the rows of `at.conds`
 * followed by `n` uncond rows; returns `[n, …]` with `ε_u + scale·Σ_i w_i·(ε_i − ε_u)` per image.
 * (A1111 combines the denoised x̂₀ = x − σ·ε; the combination is affine with the same weights,
 * so combining ε is the same.) Run inside a tidy.
 */
export function combineMulticond(out: tf.Tensor4D, weights: readonly (readonly [number, number])[][], scale: number): tf.Tensor4D {
  const n = weights.length;
  const rows = out.shape[0] - n;
  const uncond = tf.slice(out, [rows, 0, 0, 0], [n, -1, -1, -1]);
  const parts = weights.map((list, j) => {
    const u = tf.slice(uncond, [j, 0, 0, 0], [1, -1, -1, -1]);
    let acc: tf.Tensor4D = u;
    for (const [r, w] of list) acc = tf.add(acc, tf.mul(tf.sub(tf.slice(out, [r, 0, 0, 0], [1, -1, -1, -1]), u), w * scale));
    return acc;
  });
  return tf.concat(parts, 0);
}
