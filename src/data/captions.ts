/**
 * Captions: where the text for an image comes from, and how tags inside it are handled.
 *
 * A caption is either the contents of `<stem>.txt` next to the image, or — when there is none — text
 * made from the file name with A1111's rule (spec §4.5): drop a leading run of digits and hyphens
 * (the `00012-0-` that preprocessing puts in front) and the spaces after it; then, if a word regex is
 * given, keep only its matches, joined by the join string.
 */

/** How a filename becomes a caption. */
export interface FilenameCaptionOptions {
  /** Regex whose matches are the caption's words (A1111 setting "Filename word regex"; default none). */
  wordRegex?: string | RegExp;
  /** String between the matched words (A1111 "Filename join string"; default one space). */
  joinString?: string;
}

/** Caption from a file stem (no folder, no extension), by A1111's rule. */
export function captionFromFilename(stem: string, opts: FilenameCaptionOptions = {}): string {
  let text = stem.replace(/^[-\d]+\s*/, "");
  if (opts.wordRegex !== undefined && opts.wordRegex !== "") {
    const src = typeof opts.wordRegex === "string" ? opts.wordRegex : opts.wordRegex.source;
    const flags =
      typeof opts.wordRegex === "string" ? "g" : opts.wordRegex.flags.includes("g") ? opts.wordRegex.flags : opts.wordRegex.flags + "g";
    const words = [...text.matchAll(new RegExp(src, flags))].map((m) => m[0]);
    text = words.join(opts.joinString ?? " ");
  }
  return text;
}

/**
 * What to do with a source image's existing `.txt` caption when writing the processed image's caption
 * (A1111 "Existing Caption txt Action"): `ignore` it, `copy` it, `prepend` it or `append` it to the
 * generated caption (joined with a space).
 */
export type ExistingCaptionAction = "ignore" | "copy" | "prepend" | "append";

/** Combine a generated caption with an existing one per `action`; the result is trimmed. */
export function combineCaptions(generated: string, existing: string | undefined, action: ExistingCaptionAction): string {
  let caption = generated;
  if (existing) {
    if (action === "prepend") caption = `${existing} ${generated}`;
    else if (action === "append") caption = `${generated} ${existing}`;
    else if (action === "copy") caption = existing;
  }
  return caption.trim();
}

/** Split a caption into tags at commas, trimmed, empty ones dropped. */
export function splitTags(caption: string): string[] {
  return caption
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t.length > 0);
}

/**
 * Default longest caption used for training, in characters (UTF-16 code units): 4,096. The text
 * encoder takes any length (75-token windows, as A1111's), so without a bound a 1 MB caption
 * would become a conditioning of ~4,000 windows and ~1 GB per prompt. Real captions — even long
 * booru tag lists — stay well under 2,000 characters; 4,096 is about 1,000 CLIP tokens (14
 * windows) of English text.
 */
export const DEFAULT_MAX_CAPTION_CHARS = 4096;

/**
 * Cut `caption` to at most `maxChars` characters: at the limit when that falls on a tag boundary
 * (the next character is a comma or a space), else at the last comma when one lies in the last fifth
 * of the allowed length, else at the limit (never inside a surrogate pair); the result is trimmed.
 * `dropped` is how many characters of the original were left out (0: unchanged).
 */
export function limitCaption(caption: string, maxChars: number): { text: string; dropped: number } {
  if (caption.length <= maxChars) return { text: caption, dropped: 0 };
  let end = maxChars;
  const code = caption.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end--; // a high surrogate whose pair would be cut off
  if (!/[\s,]/.test(caption[end]!)) {
    const comma = caption.lastIndexOf(",", end - 1);
    if (comma >= 0 && comma >= end - Math.floor(maxChars / 5)) end = comma;
  }
  const text = caption.slice(0, end).trim();
  return { text, dropped: caption.length - end };
}
