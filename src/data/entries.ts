/**
 * Reading a dataset folder's entries safely: symlinks that lead nowhere, symlink loops, and caption
 * files that are not UTF-8 are reported in words instead of crashing or silently garbling text.
 */
import * as fs from "node:fs";

/**
 * `fs.statSync` (following links) for a folder entry, or a sentence saying why the entry cannot be
 * read: a broken symbolic link (its target named), a symbolic link loop, or the system's error.
 */
export function statEntry(full: string): { stat: fs.Stats } | { problem: string } {
  try {
    return { stat: fs.statSync(full) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    let target: string | undefined;
    try {
      target = fs.readlinkSync(full);
    } catch {
      /* not a link */
    }
    if (code === "ELOOP") return { problem: `a symbolic link loop (${target ?? "?"} leads back to itself); remove it or point it at a file` };
    if (code === "ENOENT" && target !== undefined) return { problem: `a broken symbolic link (its target ${target} does not exist); remove it or fix the target` };
    return { problem: `cannot be read (${code ?? (err as Error).message})` };
  }
}

/**
 * A caption file's text, untrimmed. UTF-8 when it is valid UTF-8 (a BOM is dropped);
 * otherwise the bytes are read as Latin-1 (Windows editors' usual fallback), and `note` says so,
 * because replacing the bytes with U+FFFD would silently change the caption.
 */
export function readCaptionFile(file: string): { text: string; note?: string } {
  const bytes = fs.readFileSync(file);
  try {
    return { text: new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes) };
  } catch {
    return { text: Buffer.from(bytes).toString("latin1"), note: `${file}: caption is not UTF-8; read it as Latin-1. Re-save it as UTF-8 if that is wrong` };
  }
}
