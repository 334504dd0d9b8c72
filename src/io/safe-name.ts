/**
 * Names that come from inside files, made safe to use as file names and to print.
 *
 * A hypernetwork file carries its own `name` (a `.pt`'s `name` key, a `.safetensors`' metadata).
 * The trainer names its checkpoints and previews after it (`<name>-<step>.pt`, A1111's scheme), so a
 * downloaded file whose name is `../../x` or `/etc/x` would otherwise decide where training writes.
 * `safeFileStem` turns any stored name into a plain file-name stem; `insideFolder` is the last check
 * before a write, so a path built from file contents can never leave the folder the user chose.
 * `printable` makes a stored string safe to show in a terminal (no escape sequences, no line breaks
 * that could fake other output).
 */
import * as path from "node:path";

/** Longest stem in UTF-8 bytes: leaves room for `-<step>.pt.state.json` and the atomic writer's temp-file affixes within 255. */
export const MAX_STEM_BYTES = 120;

/** Stem used when nothing usable is left of a name. */
export const FALLBACK_STEM = "hypernetwork";

/** What `safeFileStem` made of a name. */
export interface SafeStem {
  /** A plain file-name stem: no separators, no control characters, no leading dot, not empty, not reserved. */
  stem: string;
  /** True when `stem` differs from the name given. */
  changed: boolean;
  /** Why it was changed, in words (empty when unchanged). */
  problems: string[];
}

// Characters never kept in a stem: C0/C1 controls and DEL, path separators, the characters Windows
// refuses in names, and invisible format characters (bidi overrides, zero-width) that make a name
// display as something else.
const UNSAFE_CHARS =
  /[\u0000-\u001f\u007f-\u009f/\\:*?"<>|\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
// Device names Windows reserves in every folder, with or without an extension.
const RESERVED = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\.|$)/i;

/** The UTF-8 length of a string. */
function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

/** Cut `s` to at most `max` UTF-8 bytes without splitting a character. */
function cutToBytes(s: string, max: number): string {
  if (utf8Bytes(s) <= max) return s;
  let out = "";
  let n = 0;
  for (const ch of s) {
    const b = utf8Bytes(ch);
    if (n + b > max) break;
    out += ch;
    n += b;
  }
  return out;
}

/**
 * Turn a name read from a file into a stem that is safe as one file-name component on Linux, macOS
 * and Windows: unsafe characters become `_`, runs of dots become one dot, leading dots and spaces
 * and trailing dots and spaces go, the result is cut to {@link MAX_STEM_BYTES} UTF-8 bytes, a
 * Windows device name (`con`, `nul`, `com1`, …) gets a `_` after it, and an empty result becomes
 * `fallback`. A name that is already a plain stem comes back unchanged (`changed: false`).
 */
export function safeFileStem(name: string, fallback = FALLBACK_STEM): SafeStem {
  const problems: string[] = [];
  let s = String(name);
  const replaced = s.replace(UNSAFE_CHARS, "_");
  if (replaced !== s) problems.push("it contains path separators, control characters or characters not allowed in file names");
  s = replaced;
  if (/\.\./.test(s)) {
    problems.push('it contains ".."');
    s = s.replace(/\.{2,}/g, ".");
  }
  const trimmed = s.replace(/^[.\s]+/, "").replace(/[.\s]+$/, "");
  if (trimmed !== s) problems.push("it starts or ends with dots or spaces");
  s = trimmed;
  if (utf8Bytes(s) > MAX_STEM_BYTES) {
    problems.push(`it is longer than ${MAX_STEM_BYTES} bytes`);
    s = cutToBytes(s, MAX_STEM_BYTES).replace(/[.\s]+$/, "");
  }
  if (RESERVED.test(s)) {
    problems.push("it is a name Windows reserves for a device");
    s = s.replace(/^([^.]*)/, "$1_");
  }
  if (s === "") {
    problems.push("it is empty");
    s = fallback;
  }
  return { stem: s, changed: s !== name, problems };
}

/** Thrown when a path built from a file's contents would leave the folder chosen for it. */
export class PathEscapeError extends Error {
  constructor(
    readonly file: string,
    readonly folder: string,
    what: string,
  ) {
    super(
      `${what} would be written to ${file}, outside the folder ${folder}; nothing was written there. A name read from a file must not choose the folder — please report this`,
    );
    this.name = "PathEscapeError";
  }
}

/**
 * Check that `file` lies inside `folder` (lexically, after resolving both) and return it. Throws a
 * {@link PathEscapeError} otherwise, also when `file` is the folder itself. Links already inside
 * the folder are the user's own and are not followed.
 */
export function insideFolder(folder: string, file: string, what = "a training file"): string {
  const root = path.resolve(folder);
  const target = path.resolve(file);
  const rel = path.relative(root, target);
  if (rel === "" || rel === ".." || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) throw new PathEscapeError(target, root, what);
  return file;
}

// What `printable` escapes: C0 controls (ESC, CR, LF, TAB, …), DEL, C1 controls (8-bit CSI
// included), bidi and zero-width format characters, and unpaired surrogates.
const UNPRINTABLE =
  /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * A string from a file, made safe to print to a terminal: every control or invisible format
 * character is shown as an escape (`\x1b`, `\n`, `\u202e`), so no escape sequence reaches the
 * terminal and no line break can fake further output. Other text is unchanged. `keepNewlines`
 * leaves `\n` as it is (for multi-line messages of our own that quote file contents).
 */
export function printable(s: string, opts: { keepNewlines?: boolean } = {}): string {
  return s.replace(UNPRINTABLE, (c) => {
    const code = c.charCodeAt(0);
    if (c === "\n") return opts.keepNewlines ? c : "\\n";
    if (c === "\r") return "\\r";
    if (c === "\t") return "\\t";
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

/**
 * `JSON.stringify` output made terminal-safe: JSON already escapes C0 controls, but not DEL, C1
 * controls or bidi/zero-width characters; those are written as `\uXXXX`, which parses back to the
 * same string.
 */
export function terminalSafeJson(json: string): string {
  // Not C0: inside strings JSON has escaped them already, outside them they are its own line breaks.
  return json.replace(
    /[\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}
