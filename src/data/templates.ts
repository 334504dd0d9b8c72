/**
 * Prompt templates: how a caption becomes a training prompt.
 *
 * A template is a text file, one prompt pattern per line, in which `[filewords]` stands for the
 * image's caption and `[name]` for the hypernetwork's name (A1111 convention, spec §4.5). Each fetch
 * picks a line at random. The stock files (same content as A1111's `textual_inversion_templates`)
 * live in `templates/` at the package root: style_filewords (A1111's default), style, subject,
 * subject_filewords, hypernetwork, none.
 *
 * Tag handling, applied to the caption before substitution when asked: the caption is split at
 * commas; the first `keepTokens` tags stay in place and are never dropped; each other tag is dropped
 * with probability `dropout`; the others are shuffled; tags are re-joined with ", " (A1111 joined
 * with "," and no space, which changes the tokens the text encoder sees).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { splitTags } from "./captions";

/** Uniform random numbers in [0, 1). Pass a seeded generator for repeatable runs. */
export interface Rng {
  next(): number;
}

/** Names of the stock templates shipped in `templates/`. */
export const STOCK_TEMPLATES = ["style_filewords", "style", "subject", "subject_filewords", "hypernetwork", "none"] as const;
export type StockTemplate = (typeof STOCK_TEMPLATES)[number];

/** The folder holding the stock template files (found by walking up from this module). */
export function templatesDir(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const cand = path.join(dir, "templates");
    if (fs.existsSync(path.join(cand, "style_filewords.txt"))) return cand;
    dir = path.dirname(dir);
  }
  throw new Error(
    `stock prompt templates not found above ${__dirname}; the package's templates/ folder is missing — reinstall hypernet-lab`,
  );
}

/**
 * Load a template: a stock name (`"style_filewords"`), a path to a `.txt` file, or the lines
 * themselves. Lines are trimmed; empty lines are dropped (A1111 kept them as valid, empty prompts).
 */
export function loadTemplate(template: string | readonly string[]): string[] {
  let lines: string[];
  let where: string;
  if (Array.isArray(template)) {
    lines = [...template];
    where = "the template lines given";
  } else {
    const t = template as string;
    const file = (STOCK_TEMPLATES as readonly string[]).includes(t) ? path.join(templatesDir(), `${t}.txt`) : t;
    if (!fs.existsSync(file)) {
      throw new Error(`prompt template "${t}" not found: give a file path or one of ${STOCK_TEMPLATES.join(", ")}`);
    }
    lines = fs.readFileSync(file, "utf8").split(/\r?\n/);
    where = file;
  }
  const out = lines.map((l) => l.trim()).filter((l) => l.length > 0);
  if (out.length === 0) throw new Error(`prompt template ${where} has no non-empty lines`);
  return out;
}

/** Options for turning a caption into the `[filewords]` text. */
export interface TagOptions {
  /** Shuffle the tags on every fetch (default false). */
  shuffle?: boolean;
  /** Number of leading tags kept fixed: never shuffled, never dropped (default 0). */
  keepTokens?: number;
  /** Probability of dropping each (non-kept) tag on every fetch (default 0). */
  dropout?: number;
}

/**
 * The `[filewords]` text for one fetch. Without shuffle or dropout the caption is used as is;
 * otherwise it is split into tags, dropped and shuffled as described in the module comment.
 */
export function processTags(caption: string, opts: TagOptions, rng: Rng): string {
  const dropout = opts.dropout ?? 0;
  if (!opts.shuffle && !(dropout > 0)) return caption;
  const tags = splitTags(caption);
  const keep = Math.max(0, Math.min(opts.keepTokens ?? 0, tags.length));
  const fixed = tags.slice(0, keep);
  let rest = tags.slice(keep);
  if (dropout > 0) rest = rest.filter(() => rng.next() >= dropout);
  if (opts.shuffle) {
    // Fisher–Yates
    for (let i = rest.length - 1; i > 0; i--) {
      const j = Math.floor(rng.next() * (i + 1));
      [rest[i], rest[j]] = [rest[j]!, rest[i]!];
    }
  }
  return [...fixed, ...rest].join(", ");
}

/** Substitute `[filewords]` and `[name]` in one template line. */
export function fillTemplate(line: string, filewords: string, name: string): string {
  return line.split("[filewords]").join(filewords).split("[name]").join(name);
}

/** A fresh prompt: a random template line, with tags processed for this fetch. */
export function makePrompt(lines: readonly string[], caption: string, name: string, opts: TagOptions, rng: Rng): string {
  const line = lines[Math.min(lines.length - 1, Math.floor(rng.next() * lines.length))]!;
  return fillTemplate(line, processTags(caption, opts, rng), name);
}
