/**
 * `hypernet convert IN OUT`: rewrite a hypernetwork file in the other format (or the same one,
 * e.g. to change `--dtype`).
 *
 * Nothing is lost: weights keep their dtype unless `--dtype` says otherwise, A1111's metadata keys
 * and every other top-level key of a `.pt` travel with the file (in `.safetensors` as the `extra`
 * metadata key, restored on the way back; see src/hypernet/file-extras.ts), and anything that
 * cannot be kept is listed by name. The output is written atomically and replaces nothing —
 * neither a file nor a symbolic link, even a dangling one — without `--overwrite`. Temp files
 * that an interrupted convert (or training run) left in the output folder are removed first, with
 * the same cleanup the trainer runs on its checkpoint folder.
 */
import * as path from "node:path";
import { removeStaleTempFiles } from "../io/atomic";
import type { DType } from "../io/host-tensor";
import { type HypernetworkFormat, readHypernetworkFile, writeHypernetworkFile } from "../hypernet/file";

/** Options of `convertFile`. */
export interface ConvertOptions {
  overwrite?: boolean;
  /** Store the weights in this dtype (default: as stored). */
  dtype?: DType;
}

/** What `convertFile` did besides writing the output. */
export interface ConvertResult {
  /** The layout the input had. */
  format: HypernetworkFormat;
  /** Lines to show the user: each dropped key, each warning (non-finite weights), temp files removed. */
  notes: string[];
}

/** Convert `src` to `dst` (format by `dst`'s extension). Errors name the file concerned. */
export function convertFile(src: string, dst: string, opts: ConvertOptions = {}): ConvertResult {
  const notes: string[] = [];
  const outDir = path.dirname(path.resolve(dst));
  const stale = removeStaleTempFiles(outDir);
  if (stale.length) notes.push(`removed ${stale.length} temp file(s) an interrupted write left in ${outDir}: ${stale.join(", ")}`);
  const hf = readHypernetworkFile(src, { onWarning: (m) => notes.push(m) });
  const report = writeHypernetworkFile(hf, dst, { overwrite: opts.overwrite, dtype: opts.dtype });
  for (const d of report.dropped) notes.push(`${dst}: ${d}`);
  return { format: hf.format, notes };
}
