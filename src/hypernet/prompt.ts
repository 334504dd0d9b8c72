/**
 * `<hypernet:NAME>` and `<hypernet:NAME:MULTIPLIER>` prompt tags (spec §3.4–§3.5).
 *
 * Like A1111, every extra-network tag `<type:args>` is removed from the prompt text before it is
 * encoded, and `#` comment lines are dropped first. Unlike A1111, a hypernetwork name that matches
 * no file is an error listing the closest names — A1111 skips it silently, which leaves users
 * wondering why their style did not apply. Tags of other types (e.g. `<lora:…>`) are removed and
 * reported in `ignored`, since hypernet-lab cannot apply them.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** One hypernetwork requested by a prompt. */
export interface HypernetTag {
  name: string;
  multiplier: number;
}

/** A prompt with its tags taken out. */
export interface ParsedPrompt {
  /** The prompt text to encode, tags and comment lines removed. */
  prompt: string;
  /** Hypernetworks in the order they appear (the order they are stacked). */
  hypernets: HypernetTag[];
  /** Other extra-network tags that were removed, verbatim (e.g. `<lora:x:1>`). */
  ignored: string[];
}

const TAG = /<(\w+):([^>]+)>/g;

/**
 * Parse a prompt: strip comment lines and extra-network tags, return the hypernetwork tags.
 * `defaultMultiplier` applies when a tag has none (A1111: 1.0).
 */
export function parsePrompt(prompt: string, defaultMultiplier = 1): ParsedPrompt {
  const noComments = prompt
    .split("\n")
    .filter((line) => !line.trimStart().startsWith("#"))
    .join("\n");
  const hypernets: HypernetTag[] = [];
  const ignored: string[] = [];
  const cleaned = noComments.replace(TAG, (whole: string, type: string, args: string) => {
    if (type !== "hypernet") {
      ignored.push(whole);
      return "";
    }
    const items = args.split(":");
    const name = items[0]!.trim();
    if (!name) throw new Error(`prompt tag ${whole} has no hypernetwork name; write <hypernet:NAME> or <hypernet:NAME:0.8>`);
    let multiplier = defaultMultiplier;
    if (items.length > 1) {
      const text = items[1]!.trim();
      multiplier = Number(text);
      if (text === "" || !Number.isFinite(multiplier))
        throw new Error(`prompt tag ${whole}: multiplier "${text}" is not a number; write e.g. <hypernet:${name}:0.8>`);
    }
    hypernets.push({ name, multiplier });
    return "";
  });
  return { prompt: cleaned, hypernets, ignored };
}

/**
 * The tags a generation removes without applying them: other extra networks (e.g. `<lora:…>`) in
 * either prompt, and every hypernetwork tag in the negative prompt (A1111 applies networks from the
 * prompt only).
 */
export function ignoredTags(prompt: ParsedPrompt, negativePrompt: ParsedPrompt): string[] {
  return [...prompt.ignored, ...negativePrompt.ignored, ...negativePrompt.hypernets.map((h) => `<hypernet:${h.name}:${h.multiplier}>`)];
}

/** File extensions recognised as hypernetworks in a folder. */
export const HYPERNET_EXTENSIONS = [".pt", ".safetensors"] as const;

/** MonkeyPatch's hypernetwork sequences (hns.ts), listed beside the networks. */
const SEQUENCE_EXTENSION = ".hns";

/**
 * List the hypernetworks in a folder, recursively, keyed by basename without extension (A1111's
 * rule: sub-folders do not become part of the name; a later path wins on a clash; `None` is skipped).
 * Paths are visited in case-insensitive sorted order, as A1111 does. `.hns` sequences are listed
 * too, after the networks (so a sequence wins a name it shares with a network, as in MonkeyPatch).
 */
export function listHypernetworks(folder: string): Map<string, string> {
  if (!fs.existsSync(folder))
    throw new Error(`hypernetwork folder ${folder} does not exist; create it or pass the folder that holds your .pt files`);
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if ([...HYPERNET_EXTENSIONS, SEQUENCE_EXTENSION].some((x) => e.name.toLowerCase().endsWith(x))) files.push(p);
    }
  };
  walk(folder);
  files.sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
  const isSeq = (f: string): boolean => f.toLowerCase().endsWith(SEQUENCE_EXTENSION);
  const out = new Map<string, string>();
  for (const f of [...files.filter((x) => !isSeq(x)), ...files.filter(isSeq)]) {
    const name = path.basename(f).replace(/\.(pt|safetensors|hns)$/i, "");
    if (name === "None") continue;
    out.set(name, f);
  }
  return out;
}

/** Edit distance, for suggesting names. */
function levenshtein(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0]!;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j]!;
      dp[j] = Math.min(dp[j]! + 1, dp[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length]!;
}

/** Up to `n` names from `known` closest to `name` (case-insensitive substring matches first). */
export function closeMatches(name: string, known: Iterable<string>, n = 3): string[] {
  const lower = name.toLowerCase();
  return [...known]
    .map((k) => ({
      k,
      score: k.toLowerCase().includes(lower) || lower.includes(k.toLowerCase()) ? -1 : levenshtein(lower, k.toLowerCase()),
    }))
    .filter((x) => x.score <= Math.max(2, Math.floor(name.length / 2)))
    .sort((a, b) => a.score - b.score || a.k.localeCompare(b.k))
    .slice(0, n)
    .map((x) => x.k);
}

/**
 * The file for a tag name: an exact, case-sensitive match in `folder` (as A1111 looks it up).
 * An unknown name is an error naming the folder and the closest names.
 */
export function resolveHypernetwork(name: string, folder: string): string {
  const all = listHypernetworks(folder);
  const file = all.get(name);
  if (file) return file;
  const close = closeMatches(name, all.keys());
  const hint = close.length
    ? ` Did you mean ${close.map((c) => `"${c}"`).join(", ")}?`
    : all.size
      ? ` Known: ${[...all.keys()].slice(0, 10).join(", ")}${all.size > 10 ? ", …" : ""}.`
      : " The folder holds no .pt or .safetensors files.";
  throw new Error(`no hypernetwork named "${name}" in ${folder}.${hint}`);
}
