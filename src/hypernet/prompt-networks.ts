/**
 * The hypernetworks a prompt asks for, loaded: `<hypernet:NAME:MULTIPLIER>` tags (parsed by
 * `prompt.ts`) become networks from a folder, in tag order — the order they are stacked. A name
 * may be a MonkeyPatch `.hns` sequence (hns.ts): its networks come from the same folder and cache.
 *
 * Loaded networks are cached by absolute path and reused while the file's mtime and size stay the
 * same, so sampling the same prompt again does not re-read the file (A1111 keeps its loaded
 * networks the same way). `clearHypernetworkCache` frees them.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { shortHash } from "../io/hash";
import type { StackItem } from "./attach";
import { loadHypernetwork } from "./file";
import { isSequenceFile, readSequenceFile, sequenceToStack } from "./hns";
import type { Hypernetwork } from "./network";
import { ignoredTags, parsePrompt, resolveHypernetwork } from "./prompt";

/** A hypernetwork applied to a run, as the infotext records it. */
export interface AppliedHypernetwork {
  name: string;
  multiplier: number;
  file: string;
  /** A1111 short hash of the file. */
  hash: string;
}

/** A prompt tag resolved to a loaded network (owned by the cache: do not dispose it). */
export interface PromptHypernetwork extends AppliedHypernetwork {
  /** The network (for a `.hns` tag: the sequence's first network; the sequence itself is `stack`). */
  network: Hypernetwork;
  /**
   * For a `.hns` tag: the sequence as stack items. It is applied as one group whose change is
   * scaled by the tag's multiplier (at 1, exactly the sequence; MonkeyPatch ignores the number).
   */
  stack?: StackItem[];
}

/** What a prompt and its negative prompt ask for. */
export interface PromptHypernetworks {
  /** The prompt's hypernetwork tags, loaded, in tag order. */
  networks: PromptHypernetwork[];
  /** Tags removed without being applied (see `ignoredTags` in `prompt.ts`). */
  ignoredTags: string[];
}

interface CacheEntry {
  mtimeMs: number;
  size: number;
  net: Hypernetwork;
  hash: string;
}

/** Loaded hypernetworks by absolute path; reloaded when the file's mtime or size changes. */
const cache = new Map<string, CacheEntry>();

/** A hypernetwork from `file`, loaded once and kept until the file changes. */
function cachedHypernetwork(file: string): CacheEntry {
  const abs = path.resolve(file);
  const st = fs.statSync(abs);
  const hit = cache.get(abs);
  if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit;
  const net = loadHypernetwork(abs, { trainable: false });
  hit?.net.dispose();
  const entry = { mtimeMs: st.mtimeMs, size: st.size, net, hash: shortHash(abs) };
  cache.set(abs, entry);
  return entry;
}

/**
 * Load the hypernetworks that `prompt`'s tags name from `hypernetworkDir` (searched recursively; an
 * unknown name is an error listing close names). Tags in `negativePrompt` are reported as ignored.
 * A prompt with tags and no folder is an error saying to pass one.
 */
export function resolvePromptHypernetworks(prompt: string, negativePrompt = "", hypernetworkDir?: string): PromptHypernetworks {
  const parsed = parsePrompt(prompt);
  const negative = parsePrompt(negativePrompt);
  if (parsed.hypernets.length && !hypernetworkDir) {
    throw new Error(
      `the prompt asks for ${parsed.hypernets.map((h) => `<hypernet:${h.name}>`).join(", ")} but no hypernetworkDir was given; pass the folder holding the .pt files`,
    );
  }
  const networks = parsed.hypernets.map((tag): PromptHypernetwork => {
    const file = resolveHypernetwork(tag.name, hypernetworkDir!);
    if (isSequenceFile(file)) {
      const { tree, networks: byName } = readSequenceFile(file, hypernetworkDir!, (f) => cachedHypernetwork(f).net);
      const stack = sequenceToStack(tree, (n) => byName.get(n)!);
      return {
        name: tag.name,
        multiplier: tag.multiplier,
        file,
        hash: shortHash(path.resolve(file)),
        network: [...byName.values()][0]!,
        stack,
      };
    }
    const entry = cachedHypernetwork(file);
    return { name: tag.name, multiplier: tag.multiplier, file, hash: entry.hash, network: entry.net };
  });
  return { networks, ignoredTags: ignoredTags(parsed, negative) };
}

/** Free every cached hypernetwork (they are otherwise kept for the next prompt that names them). */
export function clearHypernetworkCache(): void {
  for (const e of cache.values()) e.net.dispose();
  cache.clear();
}

/** How many hypernetworks are cached (for tests and memory reports). */
export function hypernetworkCacheSize(): number {
  return cache.size;
}
