/**
 * `.hns` hypernetwork sequences (Hypernetwork-MonkeyPatch-Extension): one Python literal naming
 * networks and how to combine them, read here without Python and mapped onto `attachHypernetworks`'
 * stack (sequential items and parallel groups).
 *
 * What the extension means by each form (names are network file names without extension, looked up
 * in the hypernetwork folder; a strength is the network's multiplier, 0 to 1):
 *
 *     "A"                      network A at strength 1
 *     ("A", 0.4)  {"A": 0.4}   network A at strength 0.4
 *     ["A", "B", …]            sequential: A's output feeds B (k and v chains separately)
 *     {"A": 2, "B": 1}         parallel: Σ ŵ_i · member_i(context), ŵ_i = w_i / Σ w (here 2/3, 1/3)
 *     {"A", "B", "C"}          parallel with equal weights
 *     {"[\"A\", \"B\"]": 1, ("C", 0.5): 1}   a quoted literal is a nested group (dict keys and set
 *                              members must be names, quoted groups or (name, strength) pairs)
 *
 * A one-element list, tuple or set is its element, as is a one-entry dict whose value is 1. Comments
 * (`#`) and line breaks are allowed, as in Python. Each mistake is reported with the file, line and
 * column and what to write instead. The extension runs sequences for generating images only; so
 * does this (the networks load for inference).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { ParallelMember, StackItem } from "./attach";
import { loadHypernetwork } from "./file";
import type { Hypernetwork } from "./network";
import { resolveHypernetwork } from "./prompt";

/** A parsed sequence: what to apply, before the networks are loaded. */
export type HnsNode =
  | { kind: "network"; name: string; strength: number; line: number }
  | { kind: "sequence"; items: HnsNode[] }
  | { kind: "parallel"; members: Array<{ node: HnsNode; weight: number }> };

/** A mistake in a `.hns` file, with where it is. */
export class HnsError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly column: number,
    readonly problem: string,
  ) {
    super(`${file}:${line}:${column}: ${problem}`);
    this.name = "HnsError";
  }
}

interface Pos {
  line: number;
  col: number;
}
type Lit =
  | { t: "str"; v: string; at: Pos }
  | { t: "num"; v: number; at: Pos }
  | { t: "word"; v: string; at: Pos }
  | { t: "list" | "tuple" | "set"; items: Lit[]; at: Pos }
  | { t: "dict"; entries: Array<[Lit, Lit]>; at: Pos };

type Tok = { k: "str" | "num" | "word" | "punct"; v: string; n?: number; at: Pos };

const ESCAPES: Record<string, string> = { n: "\n", t: "\t", r: "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0" };

/** Split Python-literal text into tokens (strings, numbers, words, brackets, `,` and `:`). */
function tokenize(text: string, fail: (at: Pos, what: string) => never, base: Pos): Tok[] {
  const toks: Tok[] = [];
  let line = base.line;
  let lineStart = -base.col + 1;
  let i = 0;
  const pos = (j: number): Pos => ({ line, col: j - lineStart + 1 });
  while (i < text.length) {
    const c = text[i]!;
    if (c === "\n") {
      line++;
      lineStart = ++i;
    } else if (/\s/.test(c)) i++;
    else if (c === "#") while (i < text.length && text[i] !== "\n") i++;
    else if ("[](){},:".includes(c)) toks.push({ k: "punct", v: c, at: pos(i++) });
    else if (c === '"' || c === "'") {
      const at = pos(i);
      let v = "";
      i++;
      while (text[i] !== c) {
        if (i >= text.length || text[i] === "\n") fail(at, `the string starting here is not closed with ${c} on the same line`);
        if (text[i] === "\\") {
          const e = text[i + 1] ?? "";
          v += ESCAPES[e] ?? `\\${e}`;
          i += 2;
        } else v += text[i++];
      }
      i++;
      toks.push({ k: "str", v, at });
    } else {
      const m = /^[+-]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?|^[A-Za-z_][\w]*/.exec(text.slice(i));
      if (!m)
        fail(
          pos(i),
          `unexpected character ${JSON.stringify(c)}; a .hns file is one Python literal of quoted names, numbers, [ ], ( ), { }`,
        );
      const at = pos(i);
      i += m[0].length;
      if (/^[A-Za-z_]/.test(m[0])) toks.push({ k: "word", v: m[0], at });
      else toks.push({ k: "num", v: m[0], n: Number(m[0].replace(/_/g, "")), at });
    }
  }
  return toks;
}

/** Parse one Python literal (the subset `.hns` files use) with positions. */
function parseLiteral(text: string, fail: (at: Pos, what: string) => never, base: Pos = { line: 1, col: 1 }): Lit {
  const toks = tokenize(text, fail, base);
  let p = 0;
  const end: Pos = toks.length ? toks[toks.length - 1]!.at : base;
  const peek = (): Tok | undefined => toks[p];
  const value = (): Lit => {
    const t = toks[p++];
    if (!t) fail(end, "the file ends where a value was expected");
    if (t.k === "str") return { t: "str", v: t.v, at: t.at };
    if (t.k === "num") return { t: "num", v: t.n!, at: t.at };
    if (t.k === "word") return { t: "word", v: t.v, at: t.at };
    const close = { "[": "]", "(": ")", "{": "}" }[t.v];
    if (!close) fail(t.at, `unexpected "${t.v}"`);
    const items: Lit[] = [];
    const entries: Array<[Lit, Lit]> = [];
    let comma = false;
    let kind: "dict" | "set" | undefined;
    while (peek()?.v !== close || peek()?.k !== "punct") {
      if (!peek()) fail(t.at, `the "${t.v}" opened here is never closed with "${close}"`);
      const item = value();
      if (t.v === "{" && peek()?.v === ":" && peek()?.k === "punct" && kind !== "set") {
        p++;
        kind = "dict";
        entries.push([item, value()]);
      } else if (t.v === "{" && kind === "dict") fail(item.at, 'a dict entry needs "key: value"');
      else {
        if (t.v === "{") kind = "set";
        items.push(item);
      }
      const n = peek();
      if (n?.k === "punct" && n.v === ",") {
        p++;
        comma = true;
      } else if (!n) fail(t.at, `the "${t.v}" opened here is never closed with "${close}"`);
      else if (!(n.k === "punct" && n.v === close)) fail(n.at, `expected "," or "${close}" here`);
    }
    p++;
    if (t.v === "[") return { t: "list", items, at: t.at };
    if (t.v === "{") return kind === "set" ? { t: "set", items, at: t.at } : { t: "dict", entries, at: t.at };
    return items.length === 1 && !comma ? items[0]! : { t: "tuple", items, at: t.at };
  };
  const v = value();
  if (p < toks.length) fail(toks[p]!.at, "unexpected text after the end of the sequence (a .hns file holds one literal)");
  return v;
}

const BRACKETS = ["[", "(", "{"];

/**
 * Parse the text of a `.hns` file into the tree it describes (no files are read). `file` names the
 * source in error messages; every error is an `HnsError` naming file, line, column and the problem.
 */
export function parseHypernetworkSequence(text: string, file = "<hns>"): HnsNode {
  const fail = (at: Pos, what: string): never => {
    throw new HnsError(file, at.line, at.col, what);
  };
  if (!text.trim()) fail({ line: 1, col: 1 }, 'the file is empty; write a network name or a sequence such as ["a", ("b", 0.5)]');
  return interpret(parseLiteral(text, fail), fail);
}

/** The extension's meaning of one literal (see the module comment). */
function interpret(l: Lit, fail: (at: Pos, what: string) => never): HnsNode {
  const name = (s: Lit & { t: "str" }): string => (s.v ? s.v : fail(s.at, "a network name is empty"));
  const strength = (n: Lit, of: string): number => {
    if (n.t !== "num") fail(n.at, `the strength of "${of}" must be a number from 0 to 1`);
    const v = (n as { v: number }).v;
    if (!(v >= 0 && v <= 1)) fail(n.at, `the strength of "${of}" is ${v}; MonkeyPatch accepts strengths from 0 to 1 only`);
    return v;
  };
  switch (l.t) {
    case "str":
      if (BRACKETS.some((b) => l.v.startsWith(b))) {
        const inner = (at: Pos, what: string): never => fail(at, `in the quoted group: ${what}`);
        return interpret(parseLiteral(l.v, inner, { line: l.at.line, col: l.at.col + 1 }), inner);
      }
      return { kind: "network", name: name(l), strength: 1, line: l.at.line };
    case "num":
    case "word":
      return fail(
        l.at,
        l.t === "word"
          ? `${l.v} is not a quoted name (write "${l.v}" for a network of that name)`
          : `a number alone is not a network; write a name such as "my-net" or ("my-net", ${l.v})`,
      );
    case "list":
    case "tuple":
    case "set":
      if (l.items.length === 0) return fail(l.at, "an empty group names no network");
      if (l.items.length === 1) return interpret(l.items[0]!, fail);
      if (l.t === "tuple") {
        const [a, b] = l.items;
        if (l.items.length !== 2 || a!.t !== "str" || b!.t !== "num" || BRACKETS.some((x) => (a as { v: string }).v.startsWith(x)))
          fail(l.at, 'a tuple must be ("network name", strength); use [ ] for a sequence');
        return { kind: "network", name: name(a as Lit & { t: "str" }), strength: strength(b!, (a as { v: string }).v), line: l.at.line };
      }
      if (l.t === "list") return { kind: "sequence", items: l.items.map((x) => interpret(x, fail)) };
      return parallel(
        l.items.map((x) => [x, 1]),
        fail,
      );
    case "dict": {
      if (l.entries.length === 0) return fail(l.at, "an empty dict names no network");
      if (l.entries.length > 1) return parallel(l.entries, fail);
      const [k, v] = l.entries[0]!;
      if (v.t === "num" && v.v === 1) return interpret(k, fail);
      if (k.t !== "str" || BRACKETS.some((b) => k.v.startsWith(b)))
        fail(k.at, "a one-entry dict sets the strength of one network; to weight a group, give a parallel dict two or more entries");
      return { kind: "network", name: name(k as Lit & { t: "str" }), strength: strength(v, (k as { v: string }).v), line: k.at.line };
    }
  }
}

/** A parallel group from (member, weight) pairs, checked as the extension checks it. */
function parallel(pairs: Array<[Lit, Lit | number]>, fail: (at: Pos, what: string) => never): HnsNode {
  const seen = new Map<string, Pos>();
  const members = pairs.map(([k, w]) => {
    if (k.t !== "str" && k.t !== "tuple")
      fail(k.at, "a parallel member must be a name, a (name, strength) pair or a quoted group such as \"['a', 'b']\"");
    const key = JSON.stringify(k.t === "str" ? k.v : k.items.map((x) => ("v" in x ? x.v : null)));
    if (seen.has(key)) fail(k.at, `this member is listed twice in one parallel group (first at line ${seen.get(key)!.line})`);
    seen.set(key, k.at);
    if (typeof w !== "number" && w.t !== "num") fail(w.at, "a parallel weight must be a number");
    const weight = typeof w === "number" ? w : (w as { v: number }).v;
    if (!Number.isFinite(weight)) fail(k.at, `weight ${weight} is not a finite number`);
    return { node: interpret(k, fail), weight };
  });
  const total = members.reduce((a, m) => a + m.weight, 0);
  if (total === 0) fail(pairs[0]![0].at, "the weights of this parallel group add up to 0; they are divided by their sum");
  return { kind: "parallel", members };
}

/** Every network name a tree uses, each once, in first-use order. */
export function sequenceNetworkNames(node: HnsNode): string[] {
  const out = new Set<string>();
  const walk = (n: HnsNode): void => {
    if (n.kind === "network") out.add(n.name);
    else if (n.kind === "sequence") n.items.forEach(walk);
    else for (const m of n.members) walk(m.node);
  };
  walk(node);
  return [...out];
}

/**
 * The `attachHypernetworks` stack for a tree: a sequence becomes consecutive items, a parallel
 * group a `{ parallel }` group (multiplier 1: the weighted mean of its members' outputs), a
 * network an entry at its strength. `network` supplies the loaded network for a name.
 */
export function sequenceToStack(node: HnsNode, network: (name: string) => Hypernetwork): StackItem[] {
  if (node.kind === "network") return [{ network: network(node.name), multiplier: node.strength }];
  if (node.kind === "sequence") return node.items.flatMap((n) => sequenceToStack(n, network));
  const members = node.members.map(
    ({ node: m, weight }): ParallelMember =>
      m.kind === "network" ? { network: network(m.name), multiplier: m.strength, weight } : { weight, stack: sequenceToStack(m, network) },
  );
  return [{ parallel: members, multiplier: 1 }];
}

/** A loaded `.hns` file: its stack for `attachHypernetworks`, and the networks it loaded. */
export interface HypernetworkSequence {
  /** The file's name without extension (how the extension names it). */
  name: string;
  file: string;
  tree: HnsNode;
  /** Pass to `attachHypernetworks(unet, seq.stack)`. */
  stack: StackItem[];
  /** Each named network, loaded once (a name used twice shares one network, as in the extension). */
  networks: Map<string, Hypernetwork>;
  /** Free the loaded networks. */
  dispose(): void;
}

/**
 * Read a `.hns` file and get each network it names through `load` (given the resolved file), in
 * first-use order: the tree and the networks by name. A name is looked up in `dir` (recursively, by
 * file name); one that names another `.hns` is refused, as the extension loads only networks there.
 * Errors name the `.hns` file and line. Networks `load` returned before a failure are in `loaded`.
 */
export function readSequenceFile(
  file: string,
  dir: string,
  load: (networkFile: string) => Hypernetwork,
  loaded: Map<string, Hypernetwork> = new Map(),
): { tree: HnsNode; networks: Map<string, Hypernetwork> } {
  if (!fs.existsSync(file)) throw new Error(`${file}: no such file`);
  const tree = parseHypernetworkSequence(fs.readFileSync(file, "utf8"), file);
  const lines = new Map<string, number>();
  const walk = (n: HnsNode): void => {
    if (n.kind === "network") {
      if (!lines.has(n.name)) lines.set(n.name, n.line);
    } else if (n.kind === "sequence") n.items.forEach(walk);
    else for (const m of n.members) walk(m.node);
  };
  walk(tree);
  for (const name of sequenceNetworkNames(tree)) {
    try {
      const target = resolveHypernetwork(name, dir);
      if (isSequenceFile(target))
        throw new Error(`"${name}" is the sequence ${target}; a .hns file can name networks (.pt, .safetensors) only`);
      loaded.set(name, load(target));
    } catch (err) {
      throw new Error(`${file}:${lines.get(name)}: ${(err as Error).message}`);
    }
  }
  return { tree, networks: loaded };
}

/** Whether a path is a `.hns` sequence file (by its extension). */
export function isSequenceFile(file: string): boolean {
  return file.toLowerCase().endsWith(".hns");
}

/**
 * Load a `.hns` file: parse it, load each network it names from `hypernetworkDir` (default: the
 * `.hns` file's folder, searched recursively for `.pt`/`.safetensors` by file name) for inference,
 * and build the stack. Errors name the `.hns` file and line (an unknown name lists close ones).
 */
export function loadHypernetworkSequence(
  file: string,
  opts: { hypernetworkDir?: string; onWarning?: (message: string) => void } = {},
): HypernetworkSequence {
  const networks = new Map<string, Hypernetwork>();
  let tree: HnsNode;
  try {
    tree = readSequenceFile(
      file,
      opts.hypernetworkDir ?? path.dirname(file),
      (f) => loadHypernetwork(f, { trainable: false, onWarning: opts.onWarning }),
      networks,
    ).tree;
  } catch (err) {
    for (const n of networks.values()) n.dispose();
    throw err;
  }
  return {
    name: path.basename(file).replace(/\.hns$/i, ""),
    file,
    tree,
    stack: sequenceToStack(tree, (n) => networks.get(n)!),
    networks,
    dispose: () => {
      for (const n of networks.values()) n.dispose();
    },
  };
}
