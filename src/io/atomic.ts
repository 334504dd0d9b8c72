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
  constructor(readonly file: string) {
    super(`${file} already exists; pass { overwrite: true } (CLI: --overwrite) to replace it, or choose another name`);
    this.name = "FileExistsError";
  }
}

/**
 * Write `chunks` to `file` atomically: temp file in the same folder, fsync, rename.
 * Chunks are written one after another, so a large file never needs one contiguous buffer.
 */
export function writeFileAtomic(file: string, chunks: Iterable<Uint8Array>, opts: WriteOptions = {}): void {
  const dir = path.dirname(path.resolve(file));
  if (!fs.existsSync(dir)) fs.mkdirSync(dir, { recursive: true });
  if (!opts.overwrite && fs.existsSync(file)) throw new FileExistsError(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
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
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ENOSPC") throw new Error(`${file}: disk full while writing; the previous file (if any) is unchanged. Free some space and save again.`);
    if (e.code === "EACCES" || e.code === "EROFS" || e.code === "EPERM") {
      throw new Error(`${file}: cannot write there (${e.code}); the previous file (if any) is unchanged. Choose a writable folder.`);
    }
    throw err;
  }
}

/** The temp-file names `writeFileAtomic` uses: `.<name>.<pid>.<ms>.tmp`. */
const TEMP_NAME = /^\..+\.(\d+)\.\d+\.tmp$/;

/**
 * Remove temp files that interrupted `writeFileAtomic` calls left in `dir` (a process killed
 * mid-write cannot clean up after itself). Files of processes still running are kept.
 * Returns the names removed.
 */
export function removeStaleTempFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const removed: string[] = [];
  for (const name of fs.readdirSync(dir)) {
    const m = TEMP_NAME.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || isRunning(pid)) continue;
    fs.rmSync(path.join(dir, name), { force: true });
    removed.push(name);
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

