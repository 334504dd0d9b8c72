/**
 * Writing files so that nothing is lost.
 *
 * A checkpoint is first written to a temporary file in the same folder, flushed to disk, and then
 * renamed over the target: a crash or a full disk at any moment leaves either the old file or the
 * new one, never half of one. Existing files are not replaced unless the caller says so.
 */
import * as fs from "node:fs";
import * as path from "node:path";

export interface WriteOptions {
  /** Replace an existing file at the target path (default false: refuse with an error). */
  overwrite?: boolean;
}

/** Error thrown when a write would replace a file the caller did not ask to replace. */
export class FileExistsError extends Error {
  /** `what` says what is there when it is not a plain file (e.g. a dangling symbolic link). */
  constructor(
    readonly file: string,
    what = "already exists",
  ) {
    super(`${file} ${what}; pass { overwrite: true } (CLI: --overwrite) to replace it, or choose another name`);
    this.name = "FileExistsError";
  }
}

/**
 * Most bytes of the target's name kept in its temp file's name. The temp name is
 * `.<first bytes of the name>.<pid>.<ms>.tmp`, at most about 60 bytes whatever the target's name,
 * so it fits wherever the target itself fits (file systems allow 255 bytes per name).
 */
const TEMP_STEM_BYTES = 24;
let lastStamp = 0;

/** The temp file `writeFileAtomic` uses for `file`: short, unique within this process, same folder. */
export function tempFileFor(file: string): string {
  let stem = "";
  for (const ch of path.basename(file)) {
    if (Buffer.byteLength(stem + ch) > TEMP_STEM_BYTES) break;
    stem += ch;
  }
  // Unique per call even within one millisecond (two targets may share their first bytes).
  lastStamp = Math.max(Date.now(), lastStamp + 1);
  return path.join(path.dirname(path.resolve(file)), `.${stem}.${process.pid}.${lastStamp}.tmp`);
}

/**
 * Write `chunks` to `file` atomically: temp file in the same folder, fsync, rename.
 * Chunks are written one after another, so a large file never needs one contiguous buffer.
 * Anything already at `file` — a file, or a symbolic link even when its target is missing — is
 * replaced only with `overwrite`; a folder never is. Errors name `file` (never the temp file) and
 * say what to do.
 */
export function writeFileAtomic(file: string, chunks: Iterable<Uint8Array>, opts: WriteOptions = {}): void {
  const dir = path.dirname(path.resolve(file));
  try {
    if (!fs.existsSync(dir)) fs.mkdirSync(dir, { recursive: true });
    checkTarget(file, opts);
  } catch (err) {
    throw explainWriteError(file, err);
  }
  const tmp = tempFileFor(file);
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, "wx");
    for (const chunk of chunks) {
      let off = 0;
      while (off < chunk.byteLength) off += fs.writeSync(fd, chunk, off, chunk.byteLength - off);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (err) {
    if (fd !== undefined) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already failing; keep the first error */
      }
    }
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      /* the temp file may not exist */
    }
    throw explainWriteError(file, err);
  }
}

/** Refuse a folder, and anything else at `file` unless `overwrite` (lstat: a dangling link counts). */
function checkTarget(file: string, opts: WriteOptions): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (st.isDirectory()) throw new Error(`${file} is a folder; give the name of a file to write`);
  if (opts.overwrite) return;
  if (st.isSymbolicLink() && !fs.existsSync(file)) {
    let to = "";
    try {
      to = ` to ${fs.readlinkSync(file)}`;
    } catch {
      /* unreadable link: say less */
    }
    throw new FileExistsError(file, `is a symbolic link${to}, which does not exist (a dangling link)`);
  }
  throw new FileExistsError(file);
}

/** Longest name of one folder or file most file systems allow, in bytes (NAME_MAX). */
const NAME_MAX = 255;

/**
 * Turn a system error from writing `file` into an error that names `file` (not the temp file) and
 * says what to do. Errors that already name the file pass through.
 */
function explainWriteError(file: string, err: unknown): Error {
  const e = err as NodeJS.ErrnoException;
  if (!(err instanceof Error) || typeof e.code !== "string") return err instanceof Error ? err : new Error(`${file}: ${String(err)}`);
  const unchanged = "the previous file (if any) is unchanged.";
  switch (e.code) {
    case "ENOSPC":
      return new Error(`${file}: disk full while writing; ${unchanged} Free some space and save again.`);
    case "EACCES":
    case "EROFS":
    case "EPERM":
      return new Error(`${file}: cannot write there (${e.code}); ${unchanged} Choose a writable folder.`);
    case "ENAMETOOLONG": {
      const long = path
        .resolve(file)
        .split(path.sep)
        .find((part) => Buffer.byteLength(part) > NAME_MAX);
      if (long !== undefined) {
        return new Error(
          `file name too long: ${file} (${NAME_MAX} bytes max per name on this file system; "${long.slice(0, 40)}…" has ${Buffer.byteLength(long)}). Choose a shorter name.`,
        );
      }
      return new Error(`path too long: ${file} (${Buffer.byteLength(path.resolve(file))} bytes). Choose a folder with a shorter path.`);
    }
    case "ENOTDIR":
    case "EEXIST": {
      const blocker = firstNonFolder(path.dirname(path.resolve(file)));
      if (blocker)
        return new Error(`${file}: ${blocker} is a file, not a folder, so nothing can be written inside it. Choose another folder.`);
      return new Error(`${file}: cannot write there (${e.code}). Choose another name or folder.`);
    }
    case "EISDIR":
      return new Error(`${file} is a folder; give the name of a file to write`);
    case "ELOOP":
      return new Error(`${file}: too many symbolic links in the path (a link loop?). Choose another folder.`);
    default:
      return new Error(`${file}: cannot write (${e.code}${e.syscall ? ` in ${e.syscall}` : ""}); ${unchanged}`);
  }
}

/** The first existing path on the way to `dir` that is not a folder, if any. */
function firstNonFolder(dir: string): string | undefined {
  const parts = dir.split(path.sep);
  for (let i = 2; i <= parts.length; i++) {
    const p = parts.slice(0, i).join(path.sep) || path.sep;
    try {
      if (!fs.statSync(p).isDirectory()) return p;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/** The temp-file names `writeFileAtomic` uses: `.<name, or its first bytes>.<pid>.<ms>.tmp`. */
const TEMP_NAME = /^\..+\.(\d+)\.\d+\.tmp$/;

/**
 * Remove temp files that interrupted `writeFileAtomic` calls left in `dir` (a process killed
 * mid-write cannot clean up after itself). Files of processes still running are kept.
 * Returns the names removed.
 */
export function removeStaleTempFiles(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return []; // no such folder, or not readable: nothing of ours to clean there
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = TEMP_NAME.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || isRunning(pid)) continue;
    try {
      fs.rmSync(path.join(dir, name), { force: true });
      removed.push(name);
    } catch {
      /* not removable (permissions): leave it */
    }
  }
  return removed;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
