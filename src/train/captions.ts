/**
 * How the trainer turns a training caption into the text context the UNet is trained with.
 *
 * What A1111 does (1.6–1.10, checked in its source): hypernetwork and embedding training encode
 * each caption with `shared.sd_model.cond_stage_model(texts)` — when the dataset is built
 * (`PersonalizedBase`, `cond_model([entry.cond_text])`, one caption per call) or, with tag
 * shuffling or tag dropout, per batch (`train_hypernetwork`: `cond_stage_model(batch.cond_text)`,
 * the batch's captions in one call). That model is the hijacked CLIP,
 * `FrozenCLIPEmbedderWithCustomWords` (sd_hijack_clip.py), the same front end txt2img prompts go
 * through: `tokenize_line` runs `parse_prompt_attention` (with the default Emphasis mode
 * "Original"), so `(word:1.2)`, `(word)`, `[word]`, escapes and `BREAK` in a caption act as they do
 * in a prompt — the brackets are not tokens, the word's vectors are scaled by its weight and the
 * chunk's mean is restored — captions longer than 75 tokens get more 75-token chunks instead of
 * being cut, and embedding names are replaced by their vectors. Prompt editing `[a:b:when]`,
 * alternation `[a|b]` and `AND` are not read in training (no schedule is made): their brackets
 * fall to `parse_prompt_attention`, which reads `[...]` as de-emphasis.
 *
 * So this project's default, `"a1111"`, encodes captions exactly that way (`encodePrompts`:
 * emphasis "Original", BREAK, chunks; one caption per call when the captions are fixed, the
 * batch's captions in one call — one emphasis mean per chunk over the batch — when tags are
 * shuffled or dropped). `"literal"` is the other choice: the caption's characters as written,
 * brackets, colons and digits as tokens, `BREAK` as a word, no weights, in 75-token chunks
 * (`BaseModel.encodeText`) — what A1111 does with its Emphasis mode set to "None".
 */
import type * as tf from "@tensorflow/tfjs";
import type { BaseModel } from "../pipeline/base-model";
import { encodePrompts } from "../text/encode-prompts";
import { parsePromptAttention } from "../text/prompt-attention";

/** How training captions are encoded (see the module comment). */
export type CaptionSyntax = "a1111" | "literal";

/** The choices, for messages. */
export const CAPTION_SYNTAXES: readonly CaptionSyntax[] = ["a1111", "literal"];

/** Check a `captionSyntax` option (default "a1111", A1111's own behaviour). */
export function resolveCaptionSyntax(v: unknown): CaptionSyntax {
  if (v === undefined) return "a1111";
  if (v === "a1111" || v === "literal") return v;
  throw new Error(
    `train: captionSyntax must be "a1111" (A1111's default: emphasis and BREAK read in captions) or "literal" (the caption's characters as written, no emphasis), got ${JSON.stringify(v)}`,
  );
}

/**
 * The caption encoder of a syntax: captions → context `[captions, T, width]` (the caller owns it).
 * With "a1111" the captions of one call share their emphasis mean (per 75-token chunk), as the
 * captions of one A1111 `cond_stage_model` call do; call it with one caption for A1111's
 * per-caption dataset encoding.
 */
export function captionEncoder(base: BaseModel, syntax: CaptionSyntax): (captions: string[]) => tf.Tensor3D {
  if (syntax === "literal") return (captions) => base.encodeText(captions);
  return (captions) => {
    for (const c of captions) {
      try {
        parsePromptAttention(c);
      } catch (e) {
        // A1111's own training stops on such a caption too (its float() of the weight fails)
        throw new Error(
          `train: the caption ${JSON.stringify(c)} is not valid A1111 prompt syntax (${(e as Error).message}); fix the caption file, or train with captionSyntax: "literal" to read captions as plain text`,
        );
      }
    }
    return encodePrompts(base.textEncoder, base.tokenizer, captions, {
      clipSkip: base.clipSkip,
      emphasis: "Original",
      emphasisScope: "batch",
    }).context;
  };
}
