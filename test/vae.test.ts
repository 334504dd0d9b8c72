import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { writeSafetensors } from "../src/io/safetensors";
import type { HostTensor } from "../src/io/host-tensor";
import { stateDict } from "../src/nn/module";
import { AutoencoderKL, SD15_VAE, diffusersVaeKeyToLdm, ldmVaeKeyToDiffusers, loadVae, tinyVaeConfig, vaeParamShapes } from "../src/vae";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

interface Arr {
  shape: number[];
  data: number[];
}
interface Ref {
  vae: { config: { normGroups: number }; image: Arr; mean: Arr; logvar: Arr; latents: Arr; decoded: Arr };
}
const ref = JSON.parse(fs.readFileSync(fixture("text-vae-tiny.json"), "utf8")) as Ref;
const t4 = (a: Arr): tf.Tensor4D => tf.tensor4d(a.data, a.shape as [number, number, number, number]);

function keyTable(): Array<{ ldm: string; diffusers: string; shape: number[] }> {
  return fs
    .readFileSync(fixture("sd15-keys-clip-vae.tsv"), "utf8")
    .trim()
    .split("\n")
    .slice(1)
    .map((l) => l.split("\t"))
    .filter((c) => c[0] === "vae")
    .map((c) => ({ ldm: c[1]!, diffusers: c[2]!, shape: JSON.parse(c[3]!) as number[] }));
}

describe("VAE (AutoencoderKL)", () => {
  it("encodes and decodes like PyTorch (plain-torch LDM reference) on the tiny fixture", () => {
    const { model, layout } = loadVae(fixture("text-vae-tiny.safetensors"), { config: { normGroups: ref.vae.config.normGroups } });
    try {
      expect(layout).toEqual({ kind: "ldm", prefix: "first_stage_model." });
      expect(model.config).toMatchObject(ref.vae.config);
      const image = t4(ref.vae.image);
      const { mean, logvar } = model.encode(image);
      expect(mean.shape).toEqual(ref.vae.mean.shape);
      expectClose(mean.dataSync(), ref.vae.mean.data, 2e-5);
      expectClose(logvar.dataSync(), ref.vae.logvar.data, 2e-5);
      const z = t4(ref.vae.latents);
      const img = model.decode(z, { clamp: false });
      expect(img.shape).toEqual(ref.vae.decoded.shape);
      expectClose(img.dataSync(), ref.vae.decoded.data, 2e-5); // measured max error ≈ 1.6e-6
      tf.dispose([image, mean, logvar, z, img]);
    } finally {
      model.dispose();
    }
  });

  it("has SD 1.5's 248 keys, shapes and 83,653,863 parameters, counted without allocating", () => {
    const table = keyTable();
    expect(table.length).toBe(248);
    const shapes = vaeParamShapes(SD15_VAE, "first_stage_model.");
    expect(new Map(shapes)).toEqual(new Map(table.map((r) => [r.ldm, r.shape])));
    expect(shapes.reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0)).toBe(83_653_863);
  });

  it("maps every SD 1.5 key between LDM and diffusers names exactly as the reference table", () => {
    for (const r of keyTable()) {
      const ldm = r.ldm.slice("first_stage_model.".length);
      expect(ldmVaeKeyToDiffusers(ldm, 4)).toBe(r.diffusers);
      expect(diffusersVaeKeyToLdm(r.diffusers, 4)).toBe(ldm);
      const legacy = r.diffusers
        .replace(/to_q\./, "query.")
        .replace(/to_k\./, "key.")
        .replace(/to_v\./, "value.")
        .replace(/to_out\.0\./, "proj_attn.");
      expect(diffusersVaeKeyToLdm(legacy, 4)).toBe(ldm);
    }
    expect(diffusersVaeKeyToLdm("model.diffusion_model.out.2.bias", 4)).toBeUndefined();
  });

  it("loads LDM, standalone, diffusers and legacy-diffusers files with identical outputs", () => {
    const cfg = tinyVaeConfig();
    const src = new AutoencoderKL(cfg);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vae-"));
    const z = tf.randomNormal([1, 3, 5, 4], 0, 1, "float32", 7) as tf.Tensor4D;
    const want = src.decode(z, { clamp: false });
    const ldm = [...stateDict(src)];
    const attnMatrix = (k: string): boolean => /mid_block\.attentions\.0\.(to_[qkv]|to_out\.0|query|key|value|proj_attn)\.weight$/.test(k);
    const toDiffusers = (legacy: boolean): Array<[string, HostTensor]> =>
      ldm.map(([k, t]) => {
        let dk = ldmVaeKeyToDiffusers(k, cfg.chMult.length);
        if (legacy)
          dk = dk
            .replace(/to_q\./, "query.")
            .replace(/to_k\./, "key.")
            .replace(/to_v\./, "value.")
            .replace(/to_out\.0\./, "proj_attn.");
        return [dk, attnMatrix(dk) ? { ...t, shape: t.shape.slice(0, 2) } : t];
      });
    const variants: Array<[string, Array<[string, HostTensor]>, string]> = [
      [
        "ldm",
        ldm
          .map(([k, t]) => [`first_stage_model.${k}`, t] as [string, HostTensor])
          .concat([["model.diffusion_model.out.2.bias", { dtype: "F32", shape: [4], data: new Float32Array(4) }]]),
        "ldm",
      ],
      ["standalone", ldm, "ldm"],
      ["diffusers", toDiffusers(false), "diffusers"],
      ["legacy", toDiffusers(true), "diffusers"],
    ];
    for (const [name, entries, kind] of variants) {
      const f = path.join(dir, `${name}.safetensors`);
      writeSafetensors(f, entries);
      const { model, layout } = loadVae(f, { config: { normGroups: cfg.normGroups } });
      expect(layout.kind).toBe(kind);
      expect(model.config).toEqual(cfg);
      const got = model.decode(z, { clamp: false });
      expectClose(got.dataSync(), want.dataSync(), 1e-6);
      got.dispose();
      model.dispose();
    }
    tf.dispose([z, want]);
    src.dispose();
    fs.rmSync(dir, { recursive: true });
  });

  it("samples latents as scale·(mean + σ·ε), and the mean-only path is scale·mean", () => {
    const m = new AutoencoderKL(tinyVaeConfig());
    const mean = tf.tensor4d([0.5, -1, 2, 0], [1, 1, 1, 4]);
    const logvar = tf.tensor4d([0, Math.log(4), -100, 0], [1, 1, 1, 4]);
    const det = m.latentsFrom({ mean, logvar }, { sample: false });
    expectClose(det.dataSync(), [0.5 * 0.18215, -1 * 0.18215, 2 * 0.18215, 0], 1e-7);
    const a = m.latentsFrom({ mean, logvar }, { seed: 3 });
    const eps = tf.randomNormal([1, 1, 1, 4], 0, 1, "float32", 3).dataSync();
    expectClose(
      a.dataSync(),
      [0.18215 * (0.5 + eps[0]!), 0.18215 * (-1 + 2 * eps[1]!), 0.18215 * (2 + Math.exp(-50) * eps[2]!), 0.18215 * eps[3]!],
      1e-6,
    );
    tf.dispose([mean, logvar, det, a]);
    m.dispose();
  });

  it("tiled decode equals whole decode where tiles cover all (identity blend) and stays close with overlap", () => {
    const m = new AutoencoderKL(tinyVaeConfig());
    const z = tf.randomNormal([1, 6, 10, 4], 0, 1, "float32", 11) as tf.Tensor4D;
    const whole = m.decode(z, { clamp: false });
    const big = m.decode(z, { clamp: false, tileSize: 16 }); // one tile covers everything
    expectClose(big.dataSync(), whole.dataSync(), 1e-6);
    const tiled = m.decode(z, { clamp: false, tileSize: 4, tileOverlap: 2 });
    expect(tiled.shape).toEqual(whole.shape);
    // mid-attention is global, so tiles differ from the whole; they must still be the same image in rough terms
    const err = tf.tidy(() => tf.mean(tf.abs(tf.sub(tiled, whole))).dataSync()[0]!);
    const scale = tf.tidy(() => tf.mean(tf.abs(whole)).dataSync()[0]!);
    expect(err).toBeLessThan(0.5 * scale);
    const clamped = m.decode(z);
    const [lo, hi] = [tf.min(clamped).dataSync()[0]!, tf.max(clamped).dataSync()[0]!];
    expect(lo).toBeGreaterThanOrEqual(-1);
    expect(hi).toBeLessThanOrEqual(1);
    tf.dispose([z, whole, big, tiled, clamped]);
    m.dispose();
  });

  it("rejects bad inputs with clear errors", () => {
    const m = new AutoencoderKL(tinyVaeConfig());
    const odd = tf.zeros([1, 5, 4, 3]) as tf.Tensor4D;
    expect(() => m.encode(odd)).toThrow(/5×4 is not a multiple of 2/);
    const wrong = tf.zeros([1, 4, 4, 3]) as tf.Tensor4D;
    expect(() => m.decode(wrong)).toThrow(/expected 4 latent channels/);
    tf.dispose([odd, wrong]);
    m.dispose();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vae-"));
    const f = path.join(dir, "unet-only.safetensors");
    writeSafetensors(f, [["model.diffusion_model.out.2.bias", { dtype: "F32", shape: [4], data: new Float32Array(4) }]]);
    expect(() => loadVae(f)).toThrow(/unet-only\.safetensors: no VAE found/);
    fs.rmSync(dir, { recursive: true });
  });

  it("encode, latentsFrom, encodeToLatents and decode (whole and tiled) leak no tensors", async () => {
    const m = new AutoencoderKL(tinyVaeConfig());
    const img = tf.randomUniform([1, 8, 8, 3], -1, 1, "float32", 5) as tf.Tensor4D;
    await expectNoLeak(() => {
      const d = m.encode(img);
      const z = m.latentsFrom(d, { seed: 1 });
      const z2 = m.encodeToLatents(img, { sample: false });
      const x = m.decode(z);
      const y = m.decode(z2, { tileSize: 2, tileOverlap: 1 });
      tf.dispose([d.mean, d.logvar, z, z2, x, y]);
    });
    img.dispose();
    m.dispose();
  });
});
