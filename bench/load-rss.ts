/**
 * Streamed-loading proof: peak memory of `loadBaseModel` on a full-size SD 1.5 checkpoint in fp32.
 *
 *   npx ts-node --transpile-only bench/load-rss.ts [folder]     (default folder: a temp dir)
 *
 * Writes `sd15-fp32-zeros.safetensors` sparsely — the real SD 1.5 key set and shapes (UNet, CLIP
 * ViT-L/14 text tower, VAE: 1,066,235,307 float32 values, 4.26 GB) with a safetensors header and
 * `ftruncate`, so the data are zeros that cost no disk — then loads it in a child process on the
 * cpu backend and prints the child's peak RSS (`process.resourceUsage().maxRSS`). A loader that
 * read the file into one buffer before converting would peak near file + model ≈ 8.5 GB; reading
 * tensor by tensor peaks near the model alone. It also checks that the wasm backend refuses the
 * model with its explanatory error instead of running out of its 4 GiB.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const CHILD = process.argv[2] === "--child";

async function child(file: string, tokenizer: string, backend: string): Promise<void> {
  const tf = await import("@tensorflow/tfjs");
  const { useBackend } = await import("../src/backend/backend");
  await useBackend(backend as "cpu" | "wasm", { quiet: true });
  const { loadBaseModel } = await import("../src/pipeline/load");
  const t0 = Date.now();
  try {
    const m = await loadBaseModel(file, { tokenizer });
    const secs = (Date.now() - t0) / 1000;
    const r = m.report;
    const mem = tf.memory();
    console.log(
      JSON.stringify({
        backend: tf.getBackend(),
        seconds: secs,
        maxRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
        tensorMB: Math.round(mem.numBytes / 1e6),
        tensors: mem.numTensors,
        unet: [r.unet.tensors, r.unet.parameters],
        text: [r.textEncoder.tensors, r.textEncoder.parameters],
        vae: [r.vae.tensors, r.vae.parameters],
        dtypes: r.unet.dtypes,
        hash: r.hash,
      }),
    );
    m.dispose();
  } catch (err) {
    console.log(
      JSON.stringify({
        backend: tf.getBackend(),
        error: (err as Error).message,
        maxRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
      }),
    );
  }
}

async function main(): Promise<void> {
  const { unetParameterShapes } = await import("../src/unet/unet");
  const { SD15_UNET } = await import("../src/unet/config");
  const { clipTextParamShapes, CLIP_VIT_L14_TEXT } = await import("../src/text");
  const { vaeParamShapes, SD15_VAE } = await import("../src/vae");
  const dir = process.argv[2] ?? fs.mkdtempSync(path.join(os.tmpdir(), "hn-load-rss-"));
  const file = path.join(dir, "sd15-fp32-zeros.safetensors");
  const shapes: Array<[string, number[]]> = [
    ...unetParameterShapes(SD15_UNET).map(([k, s]): [string, number[]] => [`model.diffusion_model.${k}`, s]),
    ...clipTextParamShapes(CLIP_VIT_L14_TEXT, "cond_stage_model.transformer.text_model."),
    ...vaeParamShapes(SD15_VAE, "first_stage_model."),
  ];
  // Header by hand: the data region is never written, ftruncate makes it a hole of zeros.
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const [k, s] of shapes) {
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
  const size = fs.statSync(file).size;
  console.log(
    `file: ${file}: ${shapes.length} tensors, ${(offset / 4).toLocaleString()} float32 values, ${(size / 1e9).toFixed(2)} GB (sparse)`,
  );
  const tokenizer = path.join(__dirname, "..", "test", "fixtures", "tokenizer");
  try {
    for (const backend of ["wasm", "cpu"]) {
      const out = execFileSync(
        process.execPath,
        [...process.execArgv, "-r", "ts-node/register/transpile-only", __filename, "--child", file, tokenizer, backend],
        {
          encoding: "utf8",
          maxBuffer: 1 << 24,
        },
      );
      console.log(out.trim().split("\n").pop());
    }
  } finally {
    if (process.argv[2] === undefined) fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (CHILD) void child(process.argv[3]!, process.argv[4]!, process.argv[5]!);
else void main();
