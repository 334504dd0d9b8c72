/**
 * Opening a file for the readers: one place that turns an `open` failure into an error naming the
 * file, and that closes the descriptor again when the reader rejects the file's contents.
 */
import * as fs from "node:fs";

const WHY: Record<string, string> = {
  ENOENT: "no such file",
  EACCES: "permission denied",
  EISDIR: "is a folder, not a file",
  ELOOP: "too many symbolic links (a link loop?)",
};

/**
 * Open `file` read-only and hand the descriptor to `build`. If `build` throws, the descriptor is
 * closed and the error passes through; on success the caller owns the descriptor.
 */
export function withOpenFile<T>(file: string, build: (fd: number) => T): T {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code !== undefined && Object.hasOwn(WHY, code) ? `: ${WHY[code]}` : "";
    throw new Error(`${file}: cannot open (${code ? `${code}${why}` : String(err)})`);
  }
  try {
    return build(fd);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}
