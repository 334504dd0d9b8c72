/**
 * AUTOMATIC1111's prompt editing, alternation and composable diffusion:
 *
 * - `promptSchedules(prompts, steps)` = `get_learned_conditioning_prompt_schedules`: for each prompt
 *   the list `[[endAtStep, text], …]` of texts to encode and the last step each one is used at.
 *   `[a:b:when]` is `a` up to step `when` and `b` after it, `[a:when]` adds `a` after `when`,
 *   `[a::when]` removes it; `when` < 1 written with a dot (`0.25`) is a fraction of the steps.
 *   `[a|b|c]` cycles a, b, c, a… one step each. Everything else (emphasis brackets included) is
 *   kept as typed, for `parsePromptAttention` to read later.
 * - `multicondPromptList(prompts)` = `get_multicond_prompt_list`: `a AND b:1.2` → sub-prompts
 *   with weights (composable diffusion), identical sub-prompts shared.
 * - `scheduleIndexAt(schedule, step)`: which entry A1111 uses at a 0-based sampler step.
 *
 * A1111 parses with a lark (Earley) grammar; this is a hand-written parser for the same grammar.
 * Inside a bracket construct the grammar is deterministic (brackets must balance, the separators
 * decide the kind); at the top level a `[ ] ( ) :` that does not open a valid construct is literal
 * text, and a bracket that does is read as the construct. Where the grammar allows both readings
 * (typically a stray bracket or colon at the top level after an edit, e.g. `[a:b:3]]`), lark's
 * Earley parser picks one by Python's string-hash seed, so A1111 itself answers differently from
 * one launch to the next; this parser always takes the construct — one of A1111's answers — and
 * agrees with A1111 wherever A1111's answer does not depend on the seed (the tests check both). A
 * prompt the grammar rejects (a `|` outside `[…|…]`, a trailing `\`) is used unchanged for every
 * step, as in A1111.
 */
import { PY_BOUNDARY, PY_DIGIT, PY_WS, pyFloat } from "./prompt-attention";

/** One parsed element; `text` nodes are literal output. */
type Node =
  | { kind: "text"; text: string }
  | { kind: "group"; open: string; parts: Node[][]; close: string } // emphasis: kept with its brackets
  | { kind: "scheduled"; before: Node[] | null; after: Node[]; number: string }
  | { kind: "alternate"; options: (Node[] | null)[] };

class Fail extends Error {}

const WS_RE = new RegExp(`^${PY_WS}`, "u");
// lark's SIGNED_NUMBER: [+-]? (INT exp | (INT "." INT? | "." INT) exp? | INT), ASCII digits.
const NUMBER_RE = /^[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)/;

/** Recursive-descent parser over one prompt; positions are UTF-16 indices. */
class Parser {
  constructor(private readonly s: string) {}

  /**
   * A `prompt` (sequence of elements) from `pos`, stopping before `] ) : |` or the end. Nested
   * (`top` false), a `[` or `(` must open a valid construct; at the top level the caller decides.
   */
  prompt(pos: number, top = false): [Node[], number] {
    const out: Node[] = [];
    const s = this.s;
    let text = "";
    const flush = (): void => {
      if (text) out.push({ kind: "text", text });
      text = "";
    };
    while (pos < s.length) {
      const ch = s[pos]!;
      if (ch === "]" || ch === ")" || ch === ":" || ch === "|") break;
      if (top && (ch === "[" || ch === "(")) break;
      if (ch === "[" || ch === "(") {
        flush();
        const [node, end] = this.construct(pos);
        out.push(node);
        pos = end;
      } else if (ch === "\\") {
        if (pos + 1 >= s.length || s[pos + 1] === "\n") throw new Fail();
        text += s.slice(pos, pos + 2);
        pos += 2;
      } else {
        text += ch;
        pos++;
      }
    }
    flush();
    return [out, pos];
  }

  /** ws? NUMBER ws? at `pos`, followed by `close`; returns [number, position after close]. */
  private numberThen(pos: number, close: string): [string, number] | undefined {
    const s = this.s;
    while (pos < s.length && WS_RE.test(s.slice(pos, pos + 1))) pos++;
    const m = NUMBER_RE.exec(s.slice(pos));
    if (!m) return undefined;
    pos += m[0].length;
    while (pos < s.length && WS_RE.test(s.slice(pos, pos + 1))) pos++;
    return s[pos] === close ? [m[0], pos + 1] : undefined;
  }

  /** A bracket construct starting at `pos` (`[` or `(`); throws Fail when there is none. */
  construct(pos: number): [Node, number] {
    const s = this.s;
    const open = s[pos]!;
    const [first, e1] = this.prompt(pos + 1);
    const sep = s[e1];
    if (open === "(") {
      if (sep === ")") return [{ kind: "group", open: "(", parts: [first], close: ")" }, e1 + 1];
      if (sep !== ":") throw new Fail();
      const [second, e2] = this.prompt(e1 + 1);
      if (s[e2] !== ")") throw new Fail();
      return [{ kind: "group", open: "(", parts: [first, second], close: ")" }, e2 + 1];
    }
    if (sep === "]") return [{ kind: "group", open: "[", parts: [first], close: "]" }, e1 + 1];
    if (sep === "|") {
      const options: (Node[] | null)[] = [first];
      let p = e1;
      while (s[p] === "|") {
        const [opt, e] = this.prompt(p + 1);
        options.push(opt.length > 0 ? opt : null);
        p = e;
      }
      if (s[p] !== "]") throw new Fail();
      return [{ kind: "alternate", options }, p + 1];
    }
    if (sep !== ":") throw new Fail();
    const direct = this.numberThen(e1 + 1, "]");
    if (direct) return [{ kind: "scheduled", before: null, after: first, number: direct[0] }, direct[1]];
    const [second, e2] = this.prompt(e1 + 1);
    if (s[e2] !== ":") throw new Fail();
    const tail = this.numberThen(e2 + 1, "]");
    if (!tail) throw new Fail();
    return [{ kind: "scheduled", before: first, after: second, number: tail[0] }, tail[1]];
  }

  /** The whole prompt: elements, with stray `[ ] ( ) :` kept as text. Throws Fail if rejected. */
  top(): Node[] {
    const s = this.s;
    const out: Node[] = [];
    let pos = 0;
    while (pos < s.length) {
      const [nodes, end] = this.prompt(pos, true);
      out.push(...nodes);
      pos = end;
      if (pos >= s.length) break;
      const ch = s[pos]!;
      if (ch === "|") throw new Fail();
      if (ch === "[" || ch === "(") {
        try {
          const [node, e] = this.construct(pos);
          out.push(node);
          pos = e;
          continue;
        } catch (err) {
          if (!(err instanceof Fail)) throw err;
        }
      }
      out.push({ kind: "text", text: ch });
      pos++;
    }
    return out;
  }
}

/** Options for `promptSchedules`, A1111's hires-fix arguments. */
export interface ScheduleOptions {
  /** Steps of the hires-fix pass: integer `when`s count on from the first pass's steps, fractions from 1.0. */
  hiresSteps?: number;
  /** A1111's "use old prompt editing timelines" compatibility setting. */
  oldScheduling?: boolean;
}

/** One schedule entry: the text to encode, used up to and including step `endAtStep` (1-based). */
export type ScheduleEntry = [endAtStep: number, text: string];

function checkSteps(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`promptSchedules: ${what} must be a positive integer, got ${n}`);
}

/**
 * A1111's `get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)`:
 * for each prompt its `[endAtStep, text]` entries, in step order (see the module comment).
 */
export function promptSchedules(prompts: readonly string[], steps: number, opts: ScheduleOptions = {}): ScheduleEntry[][] {
  checkSteps(steps, "steps");
  const hires = opts.hiresSteps;
  if (hires !== undefined) checkSteps(hires, "hiresSteps");
  const old = opts.oldScheduling === true;
  const useHires = hires !== undefined && !old;
  const total = useHires ? hires : steps;
  const intOffset = useHires ? steps : 0;
  const fltOffset = useHires ? 1 : 0;
  const cache = new Map<string, ScheduleEntry[]>();
  return prompts.map((prompt) => {
    if (typeof prompt !== "string") throw new Error(`promptSchedules: prompts must be strings, got ${typeof prompt}`);
    let hit = cache.get(prompt);
    if (!hit) {
      hit = schedule(prompt, total, (s) => {
        let v = Number(s);
        if (old) v = v < 1 ? v * total : v;
        else v = s.includes(".") ? (v - fltOffset) * total : v - intOffset;
        if (!Number.isFinite(v))
          throw new Error(`prompt ${JSON.stringify(prompt)}: the step ${s} in a [from:to:step] edit is out of range`);
        return Math.min(total, Math.trunc(v));
      });
      cache.set(prompt, hit);
    }
    return hit.map(([t, text]) => [t, text] as ScheduleEntry);
  });
}

function schedule(prompt: string, steps: number, when: (s: string) => number): ScheduleEntry[] {
  let tree: Node[];
  try {
    tree = new Parser(prompt).top();
  } catch (err) {
    if (err instanceof Fail) return [[steps, prompt]];
    throw err;
  }
  const points = new Set<number>([steps]);
  const whens = new Map<Node, number>();
  const visit = (nodes: readonly (Node[] | null)[]): void => {
    for (const list of nodes) {
      for (const n of list ?? []) {
        if (n.kind === "group") visit(n.parts);
        else if (n.kind === "alternate") {
          for (let i = 1; i <= steps; i++) points.add(i);
          visit(n.options);
        } else if (n.kind === "scheduled") {
          const w = when(n.number);
          whens.set(n, w);
          if (w >= 1) points.add(w);
          visit([n.before, n.after]);
        }
      }
    }
  };
  visit([tree]);
  const render = (nodes: Node[] | null, step: number): string =>
    (nodes ?? [])
      .map((n) => {
        switch (n.kind) {
          case "text":
            return n.text;
          case "group":
            return n.open + n.parts.map((p) => render(p, step)).join(":") + n.close;
          case "scheduled":
            return step <= whens.get(n)! ? render(n.before, step) : render(n.after, step);
          case "alternate":
            return render(n.options[(step - 1) % n.options.length]!, step);
        }
      })
      .join("");
  return [...points].sort((a, b) => a - b).map((t) => [t, render(tree, t)]);
}

/**
 * Which schedule entry A1111 encodes at 0-based sampler step `step`: the first whose `endAtStep`
 * is ≥ step (A1111 compares its 0-based step counter with the 1-based steps of the schedule, so
 * `[a:b:3]` uses `a` for four steps, 0–3), or the last entry.
 */
export function scheduleIndexAt(schedule: readonly ScheduleEntry[], step: number): number {
  for (let i = 0; i < schedule.length; i++) if (step <= schedule[i]![0]) return i;
  return 0;
}

const RE_AND = new RegExp(`${PY_BOUNDARY}AND${PY_BOUNDARY}`, "u");
const RE_WEIGHT = new RegExp(`^([\\s\\S]*?)(?:${PY_WS}*:${PY_WS}*([-+]?(?:${PY_DIGIT}+\\.?|${PY_DIGIT}*\\.${PY_DIGIT}+)))?${PY_WS}*$`, "u");

/** `multicondPromptList`'s result. */
export interface MulticondPrompts {
  /** Per prompt: its sub-prompts as [index into `texts`, weight]. */
  indexes: [index: number, weight: number][][];
  /** The distinct sub-prompt texts, in first-seen order. */
  texts: string[];
}

/**
 * A1111's `get_multicond_prompt_list`: every prompt split at the word `AND`; a sub-prompt ending in
 * `:number` gets that weight (default 1). Sub-prompt texts keep their leading spaces, as in A1111.
 */
export function multicondPromptList(prompts: readonly string[]): MulticondPrompts {
  const texts: string[] = [];
  const where = new Map<string, number>();
  const indexes = prompts.map((prompt) =>
    prompt.split(RE_AND).map((sub): [number, number] => {
      const m = RE_WEIGHT.exec(sub);
      const text = m ? m[1]! : sub;
      const weight = m?.[2] !== undefined ? pyFloat(m[2]) : 1;
      let index = where.get(text);
      if (index === undefined) {
        index = texts.length;
        texts.push(text);
        where.set(text, index);
      }
      return [index, weight];
    }),
  );
  return { indexes, texts };
}
