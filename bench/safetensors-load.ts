/**
 * Load-path timings for the file readers: opening a safetensors header, reading tensors, reading
 * hypernetwork files. `npm run bench` times training and sampling, not loading; this script is the
 * before/after check that stricter header validation costs normal loading nothing.
 *
 *   npx ts-node --transpile-only bench/safetensors-load.ts [--runs 30] [--hostile]
 *
 * Cases (median and min of `--runs` repetitions, milliseconds):
 * - `sd15_header_open`: `SafetensorsFile.open` + `close` on a sparse file with SD 1.5's key set
 *   (the keys of test/fixtures/sd15-keys*.tsv, several GB of zeros that cost no disk); the header
 *   is what validation touches, the data are never read.
 * - `tiny_model_read_all`: open + read every tensor of models/tiny/model.safetensors (6 MB, 478 tensors).
 * - `hn_pt_read` / `hn_safetensors_read`: `readHypernetworkFile` on test/fixtures/hn-plain121.pt and
 *   on the same network written as `.safetensors`.
 * `--hostile` adds `many_entries_open`: a header of 1,000,000 zero-size tensors (once, with the
 * outcome and the heap + array-buffer growth), the shape of file that once took 17 s and 1.3 GB.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { SafetensorsFile } from "../src/io/safetensors";
import { readHypernetworkFile, writeHypernetworkFile } from "../src/hypernet/file";

const ROOT = path.join(__dirname, "..");

function shapesFromTsv(file: string): Array<[string, number[]]> {
  const lines = fs
    .readFileSync(file, "utf8")
    .split("\n")
    .slice(1)
    .filter((l) => l.trim());
  return lines.map((l) => {
    const cols = l.split("\t");
    return [cols[1]!, JSON.parse(cols[3]!) as number[]];
  });
}

/** Write a header-only (sparse) safetensors file for `shapes` in float32. */
function sparseSafetensors(file: string, shapes: Array<[string, number[]]>): number {
  const header: Record<string, unknown> = {};
  let offset = 0;
  const unique = new Map(shapes.reverse()); // the TSVs share some keys: keep one entry per key
  for (const [k, s] of [...unique].reverse()) {
    const bytes = 4 * s.reduce((a, b) => a * b, 1);
    header[k] = { dtype: "F32", shape: s, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const fd = fs.openSync(file, "w");
  fs.writeSync(fd, len);
  fs.writeSync(fd, json);
  fs.ftruncateSync(fd, 8 + Buffer.byteLength(json) + offset);
  fs.closeSync(fd);
  return unique.size;
}

function time(runs: number, fn: () => void): { median_ms: number; min_ms: number } {
  fn(); // warm-up
  const ts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  const r = (v: number): number => Math.round(v * 100) / 100;
  return { median_ms: r(ts[Math.floor(ts.length / 2)]!), min_ms: r(ts[0]!) };
}

function main(argv: string[]): void {
  const i = argv.indexOf("--runs");
  const runs = i >= 0 ? Number(argv[i + 1]) : 30;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hn-st-bench-"));
  const emit = (o: Record<string, unknown>): void => console.log(JSON.stringify({ ...o, load: os.loadavg()[0]!.toFixed(2) }));
  try {
    const sd = path.join(dir, "sd15-zeros.safetensors");
    const n = sparseSafetensors(sd, [
      ...shapesFromTsv(path.join(ROOT, "test/fixtures/sd15-keys.tsv")),
      ...shapesFromTsv(path.join(ROOT, "test/fixtures/sd15-keys-clip-vae.tsv")),
    ]);
    emit({ case: "sd15_header_open", tensors: n, ...time(runs, () => SafetensorsFile.open(sd).close()) });
    const tiny = path.join(ROOT, "models/tiny/model.safetensors");
    emit({
      case: "tiny_model_read_all",
      ...time(runs, () => {
        const f = SafetensorsFile.open(tiny);
        f.readAll();
        f.close();
      }),
    });
    const pt = path.join(ROOT, "test/fixtures/hn-plain121.pt");
    const st = path.join(dir, "hn-plain121.safetensors");
    writeHypernetworkFile(readHypernetworkFile(pt), st);
    emit({ case: "hn_pt_read", ...time(runs, () => void readHypernetworkFile(pt)) });
    emit({ case: "hn_safetensors_read", ...time(runs, () => void readHypernetworkFile(st)) });
    if (argv.includes("--hostile")) {
      const many = path.join(dir, "many.safetensors");
      const parts: string[] = [];
      for (let k = 0; k < 1_000_000; k++) parts.push(`"t${k}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
      const json = `{${parts.join(",")}}`;
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
      fs.writeFileSync(many, Buffer.concat([len, Buffer.from(json)]));
      const m0 = process.memoryUsage();
      const t0 = performance.now();
      let outcome = "loaded";
      try {
        const f = SafetensorsFile.open(many);
        f.readAll();
        f.close();
      } catch (err) {
        outcome = (err as Error).message.slice(0, 200);
      }
      const m1 = process.memoryUsage();
      emit({
        case: "many_entries_open",
        header_mb: Math.round(Buffer.byteLength(json) / 1e5) / 10,
        ms: Math.round(performance.now() - t0),
        grown_mb: Math.round((m1.heapUsed - m0.heapUsed + m1.arrayBuffers - m0.arrayBuffers) / 1e6),
        rss_mb: Math.round(m1.rss / 1e6),
        outcome,
      });
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main(process.argv.slice(2));
