/**
 * Reading a dataset folder's entries safely: symlinks that lead nowhere, symlink loops, entries that
 * are not regular files (folders, named pipes, devices), files too large to read, and caption files
 * that are not UTF-8 are reported in words instead of crashing, hanging or silently garbling text.
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
    if (code === "ELOOP")
      return { problem: `a symbolic link loop (${target ?? "?"} leads back to itself); remove it or point it at a file` };
    if (code === "ENOENT" && target !== undefined)
      return { problem: `a broken symbolic link (its target ${target} does not exist); remove it or fix the target` };
    return { problem: `cannot be read (${code ?? (err as Error).message})` };
  }
}

/**
 * The most bytes read from one image file. An image is read whole into one buffer, and Node cannot
 * hold more than 2 GiB − 1 bytes in one (it throws `ERR_FS_FILE_TOO_LARGE`); no photo comes close.
 */
export const MAX_IMAGE_FILE_BYTES = 2 ** 31 - 1;

/**
 * The most bytes read from one caption file (16 MiB). Real captions are a few hundred bytes; a
 * `.txt` this large is not a caption, and reading it would only waste memory. (Longer captions that
 * are read are still cut to the dataset's `maxCaptionChars`.)
 */
export const MAX_CAPTION_FILE_BYTES = 16 * 2 ** 20;

/** Why a folder entry was not read: it is not a regular file, it is over the size limit, or the read failed. */
export interface EntryProblem {
  problem: string;
  kind: "not-a-file" | "too-large" | "unreadable";
}

/** What a non-regular entry is, in words (following links; a link's target is named). */
function describeNonFile(full: string, st: fs.Stats): string {
  const what = st.isDirectory()
    ? "a folder, not a file (sub-folders are not searched)"
    : st.isFIFO()
      ? "a named pipe (FIFO), not a regular file (reading it could wait forever)"
      : st.isCharacterDevice() || st.isBlockDevice()
        ? "a device, not a regular file (reading it might never end)"
        : st.isSocket()
          ? "a socket, not a regular file"
          : "not a regular file";
  let target: string | undefined;
  try {
    target = fs.readlinkSync(full);
  } catch {
    /* not a link */
  }
  return target === undefined ? what : `a symbolic link to ${target}: ${what}`;
}

/**
 * Read a folder entry's bytes, but only if it is a regular file of at most `maxBytes`; otherwise
 * say why not. This is the one rule preprocessing and the training dataset share for every image
 * and caption they read, so neither can be made to wait forever on a named pipe, read `/dev/zero`
 * until memory runs out, fail with a raw `EISDIR`, or hit Node's 2 GiB read limit.
 *
 * The entry is checked with `stat` before it is opened (opening some devices has side effects),
 * opened non-blocking (a pipe swapped in meanwhile cannot block the open), checked again on the
 * open descriptor, and read for at most the size seen then. `what` names the kind of file in the
 * messages ("image", "caption").
 */
export function readRegularFile(full: string, maxBytes: number, what = "file"): { bytes: Buffer } | EntryProblem {
  const entry = statEntry(full);
  if ("problem" in entry) return { problem: entry.problem, kind: "not-a-file" };
  const check = (st: fs.Stats): EntryProblem | undefined => {
    if (!st.isFile()) return { problem: describeNonFile(full, st), kind: "not-a-file" };
    if (st.size > maxBytes)
      return {
        problem: `too large for ${what === "image" ? "an" : "a"} ${what} (${st.size.toLocaleString("en-US")} bytes; at most ${maxBytes.toLocaleString("en-US")} are read)`,
        kind: "too-large",
      };
    return undefined;
  };
  const early = check(entry.stat);
  if (early) return early;
  let fd: number;
  try {
    fd = fs.openSync(full, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  } catch (err) {
    return { problem: `cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, kind: "unreadable" };
  }
  try {
    const st = fs.fstatSync(fd);
    const late = check(st);
    if (late) return late;
    const bytes = Buffer.allocUnsafe(st.size);
    let got = 0;
    while (got < bytes.length) {
      const n = fs.readSync(fd, bytes, got, bytes.length - got, got);
      if (n === 0) break; // the file shrank since fstat: keep what is there
      got += n;
    }
    return { bytes: got === bytes.length ? bytes : bytes.subarray(0, got) };
  } catch (err) {
    return { problem: `cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, kind: "unreadable" };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A caption file's text, untrimmed, or why it was not read (see `readRegularFile`; captions over
 * `MAX_CAPTION_FILE_BYTES` are not read). UTF-8 when it is valid UTF-8 (a BOM is dropped);
 * otherwise the bytes are read as Latin-1 (Windows editors' usual fallback), and `note` says so,
 * because replacing the bytes with U+FFFD would silently change the caption.
 */
export function readCaptionFile(file: string): { text: string; note?: string } | EntryProblem {
  const read = readRegularFile(file, MAX_CAPTION_FILE_BYTES, "caption");
  if (!("bytes" in read)) return read;
  const bytes = read.bytes;
  try {
    return { text: new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes) };
  } catch {
    return {
      text: Buffer.from(bytes).toString("latin1"),
      note: `${file}: caption is not UTF-8; read it as Latin-1. Re-save it as UTF-8 if that is wrong`,
    };
  }
}
