/**
 * AUTOMATIC1111's emphasis syntax: `parsePromptAttention(text)` returns what A1111's
 * `parse_prompt_attention` (modules/prompt_parser.py) returns — the prompt cut into runs of text,
 * each with the weight its tokens' CLIP vectors get multiplied by:
 *
 * - `(x)` ×1.1, `[x]` ÷1.1, nested brackets multiply; `(x:1.3)` sets ×1.3 (the number may have
 *   spaces around it, `(x: 1.3 )`; an invalid one such as `(x:1.2.3)` is an error, as in A1111);
 * - `\(` `\)` `\[` `\]` `\\` are literal characters; a lone `\` is dropped;
 * - brackets left open at the end apply to the rest of the prompt; a stray `)` or `]` is text;
 * - `BREAK` (a whole word, upper case) becomes the entry `["BREAK", -1]`, which the chunker turns
 *   into "start a new 75-token chunk" — unless it sits inside brackets, where A1111 multiplies its
 *   −1 like any weight and it ends up as the literal word;
 * - neighbouring runs with exactly equal weights are merged.
 *
 * The regular expressions follow Python's Unicode semantics (`\s`, `\d`, `\b` differ from
 * JavaScript's), so non-ASCII prompts cut the same way.
 */

/** Python's `\s` for str patterns (JavaScript's `\s` lacks \x1c–\x1f and \x85 and adds \ufeff). */
export const PY_WS = "[\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
/** Python's `\w` for str patterns: letters, numbers, underscore (Unicode). */
const PY_WORD = "[\\p{L}\\p{N}_]";
/** Python's `\b` for str patterns (JavaScript's `\b` only knows ASCII word characters). */
export const PY_BOUNDARY = `(?:(?<=${PY_WORD})(?!${PY_WORD})|(?<!${PY_WORD})(?=${PY_WORD}))`;
/** Python's `\d` for str patterns: any Unicode decimal digit. */
export const PY_DIGIT = "\\p{Nd}";

const DIGIT_RE = /\p{Nd}/u;

/** The value 0–9 of a Unicode decimal digit: its distance from the start of its run of ten. */
function digitValue(ch: string): number {
  let cp = ch.codePointAt(0)!;
  let n = 0;
  while (DIGIT_RE.test(String.fromCodePoint(cp - 1)) && n < 200) {
    cp--;
    n++;
  }
  return n % 10;
}

/**
 * Python's `float(s)` for the strings A1111's weight patterns can capture (sign, digits — any
 * Unicode decimal digits, as Python accepts —, dots): NaN where Python raises ValueError.
 */
export function pyFloat(s: string): number {
  const ascii = s.replace(/\p{Nd}/gu, (d) => (d >= "0" && d <= "9" ? d : String(digitValue(d))));
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(ascii)) return NaN;
  return Number(ascii);
}

/** One run of prompt text and its weight; `["BREAK", -1]` marks a chunk break. */
export type WeightedText = [text: string, weight: number];

const RE_ATTENTION = new RegExp(
  [
    "\\\\\\(",
    "\\\\\\)",
    "\\\\\\[",
    "\\\\\\]",
    "\\\\\\\\",
    "\\\\",
    "\\(",
    "\\[",
    `:${PY_WS}*([+-]?[.${PY_DIGIT}]+)${PY_WS}*\\)`,
    "\\)",
    "\\]",
    "[^\\\\()\\[\\]:]+",
    ":",
  ].join("|"),
  "gu",
);

const RE_BREAK = new RegExp(`${PY_WS}*${PY_BOUNDARY}BREAK${PY_BOUNDARY}${PY_WS}*`, "u");

const ROUND = 1.1;
const SQUARE = 1 / 1.1;

/**
 * A1111's `parse_prompt_attention`: the prompt as `[text, weight]` runs (see the module comment).
 * Throws for a weight Python cannot read (A1111 fails the generation there too).
 */
export function parsePromptAttention(text: string): WeightedText[] {
  if (typeof text !== "string") throw new Error(`parsePromptAttention: expected a prompt string, got ${typeof text}`);
  const res: WeightedText[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiplyRange = (start: number, m: number): void => {
    for (let p = start; p < res.length; p++) res[p]![1] *= m;
  };
  for (const match of text.matchAll(RE_ATTENTION)) {
    const piece = match[0];
    const weight = match[1];
    if (piece.startsWith("\\")) {
      res.push([piece.slice(1), 1]);
    } else if (piece === "(") {
      round.push(res.length);
    } else if (piece === "[") {
      square.push(res.length);
    } else if (weight !== undefined && round.length > 0) {
      const w = pyFloat(weight);
      if (Number.isNaN(w)) {
        throw new Error(
          `prompt: the emphasis weight ${JSON.stringify(weight)} in ${JSON.stringify(piece)} is not a number; write e.g. (word:1.2)`,
        );
      }
      multiplyRange(round.pop()!, w);
    } else if (piece === ")" && round.length > 0) {
      multiplyRange(round.pop()!, ROUND);
    } else if (piece === "]" && square.length > 0) {
      multiplyRange(square.pop()!, SQUARE);
    } else {
      piece.split(RE_BREAK).forEach((part, i) => {
        if (i > 0) res.push(["BREAK", -1]);
        res.push([part, 1]);
      });
    }
  }
  for (const pos of round) multiplyRange(pos, ROUND);
  for (const pos of square) multiplyRange(pos, SQUARE);
  if (res.length === 0) res.push(["", 1]);
  let i = 0;
  while (i + 1 < res.length) {
    if (res[i]![1] === res[i + 1]![1]) {
      res[i]![0] += res[i + 1]![0];
      res.splice(i + 1, 1);
    } else i++;
  }
  return res;
}

/** True for the chunk-break marker `["BREAK", -1]` (a BREAK inside brackets is not one). */
export function isBreak([text, weight]: WeightedText): boolean {
  return text === "BREAK" && weight === -1;
}
