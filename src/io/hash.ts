/**
 * A1111's `shorthash`: the first 10 hex digits of a file's SHA-256. It names checkpoints in
 * infotexts (`Model hash`, `Hypernet hash`) and pairs a `.optim` file with the `.pt` it belongs to.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";

/** The first 10 hex digits of the SHA-256 of `file`, read in 1 MiB chunks (bounded memory). */
export function shortHash(file: string): string {
  const h = createHash("sha256");
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex").slice(0, 10);
}
