import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { writeSafetensors } from "../src/io/safetensors";
import { writeTorchFile } from "../src/io/torch-file";
import { PyDict } from "../src/io/pyvalue";
import { loadVae, AutoencoderKL, tinyVaeConfig } from "../src/vae";
import { stateDict } from "../src/nn/module";
import type { HostTensor } from "../src/io/host-tensor";
import { CLIP_VIT_L14_TEXT, ClipTextModel, clipTextParamShapes, loadTextEncoder, tinyClipTextConfig } from "../src/text";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

interface Ref {
  clip: {
    config: { vocabSize: number; maxPositions: number; width: number; layers: number; heads: number; mlpWidth: number };
    ids: number[][];
    out_skip1: { shape: number[]; data: number[] };
    out_skip2: { shape: number[]; data: number[] };
  };
}
const ref = JSON.parse(fs.readFileSync(fixture("text-vae-tiny.json"), "utf8")) as Ref;

/** Rows of the SD 1.5 key table (from reference/sd15-keys.tsv) for one component. */
function keyTable(component: string): Array<{ ldm: string; diffusers: string; shape: number[] }> {
  return fs
    .readFileSync(fixture("sd15-keys-clip-vae.tsv"), "utf8")
    .trim()
    .split("\n")
    .slice(1)
    .map((l) => l.split("\t"))
    .filter((c) => c[0] === component)
    .map((c) => ({ ldm: c[1]!, diffusers: c[2]!, shape: JSON.parse(c[3]!) as number[] }));
}

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "clip-"));
}

describe("CLIP text encoder", () => {
  it("matches PyTorch (plain-torch reference) on the tiny fixture, for clip skip 1 and 2, ignoring a broken position_ids", () => {
    // The fixture carries cond_stage_model.transformer.text_model.embeddings.position_ids as float 0, 0.97, 1.94, …
    const { model, prefix, ignored, report } = loadTextEncoder(fixture("text-vae-tiny.safetensors"), {
      config: { heads: ref.clip.config.heads },
    });
    try {
      expect(prefix).toBe("cond_stage_model.transformer.text_model.");
      expect(ignored).toEqual(["cond_stage_model.transformer.text_model.embeddings.position_ids"]);
      expect(report.loaded.length).toBe(2 + 2 * 16 + 2); // embeddings, 2 layers × 16 tensors, final norm
      expect(model.config).toMatchObject(ref.clip.config);
      for (const [skip, want] of [
        [1, ref.clip.out_skip1],
        [2, ref.clip.out_skip2],
      ] as const) {
        const out = model.encode(ref.clip.ids, { clipSkip: skip });
        expect(out.shape).toEqual(want.shape);
        expectClose(out.dataSync(), want.data, 2e-5); // measured max error ≈ 1.3e-6
        out.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it("has SD 1.5's 196 keys, shapes and 123,060,480 parameters (LDM and diffusers prefixes), counted without allocating", () => {
    const table = keyTable("clip");
    expect(table.length).toBe(196);
    const ldm = clipTextParamShapes(CLIP_VIT_L14_TEXT, "cond_stage_model.transformer.text_model.");
    expect(new Map(ldm)).toEqual(new Map(table.map((r) => [r.ldm, r.shape])));
    const diffusers = clipTextParamShapes(CLIP_VIT_L14_TEXT, "text_model.");
    expect(diffusers.map(([k]) => k).sort()).toEqual(table.map((r) => r.diffusers).sort());
    expect(ldm.reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0)).toBe(123_060_480);
  });

  it("loads the same weights from LDM, old-LDM and diffusers key layouts (and fp16) with identical outputs", async () => {
    const cfg = tinyClipTextConfig({ maxPositions: 10, vocabSize: 40 });
    const src = new ClipTextModel(cfg);
    const dir = tmpdir();
    const ids = [
      [1, 5, 7, 3, 39, 0, 0, 0, 0, 0],
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    ];
    const want = src.encode(ids);
    const layouts = ["cond_stage_model.transformer.text_model.", "text_model.", "cond_stage_model.transformer."];
    const files = layouts.map((p, i) => {
      const f = path.join(dir, `te${i}.safetensors`);
      const entries: Array<[string, HostTensor]> = [...stateDict(src, p)];
      // an int64 position_ids buffer (clean) next to the weights, as real files have
      entries.push([`${p}embeddings.position_ids`, { dtype: "I64", shape: [1, 10], data: Int32Array.from({ length: 10 }, (_, j) => j) }]);
      // and some non-text keys that must be ignored
      entries.push(["model.diffusion_model.out.2.bias", { dtype: "F32", shape: [4], data: new Float32Array(4) }]);
      writeSafetensors(f, entries);
      return f;
    });
    for (const [i, f] of files.entries()) {
      const { model, prefix } = loadTextEncoder(f, { config: { heads: cfg.heads } });
      expect(prefix).toBe(layouts[i]);
      const got = model.encode(ids);
      expectClose(got.dataSync(), want.dataSync(), 1e-6);
      got.dispose();
      model.dispose();
    }
    // fp16 storage: weights round to half precision, outputs stay close
    const f16 = path.join(dir, "te-f16.safetensors");
    writeSafetensors(
      f16,
      [...stateDict(src, "text_model.")].map(([k, t]) => [k, { ...t, dtype: "F16" }] as [string, HostTensor]),
    );
    const half = loadTextEncoder(f16, { config: { heads: cfg.heads } }).model;
    const gotHalf = half.encode(ids);
    expectClose(gotHalf.dataSync(), want.dataSync(), 2e-2);
    gotHalf.dispose();
    half.dispose();
    want.dispose();
    src.dispose();
    fs.rmSync(dir, { recursive: true });
  });

  it("loads text encoder and VAE from one .ckpt (torch zip, state_dict at top level)", () => {
    const te = new ClipTextModel(tinyClipTextConfig({ maxPositions: 6, vocabSize: 20 }));
    const vae = new AutoencoderKL(tinyVaeConfig());
    const dir = tmpdir();
    const f = path.join(dir, "model.ckpt");
    const sd = new PyDict("dict", [...stateDict(te, "cond_stage_model.transformer.text_model."), ...stateDict(vae, "first_stage_model.")]);
    writeTorchFile(f, new PyDict("dict", [["state_dict", sd]]));
    const ids = [[0, 3, 4, 5, 1, 1]];
    const loaded = loadTextEncoder(f, { config: { heads: 4 } }).model;
    const [a, b] = [te.encode(ids), loaded.encode(ids)];
    expectClose(b.dataSync(), a.dataSync(), 1e-6);
    const lv = loadVae(f, { config: { normGroups: 4 } }).model;
    const z = tf.randomNormal([1, 2, 2, 4], 0, 1, "float32", 2) as tf.Tensor4D;
    const [x, y] = [vae.decode(z), lv.decode(z)];
    expectClose(y.dataSync(), x.dataSync(), 1e-6);
    tf.dispose([a, b, z, x, y]);
    [te, vae, loaded, lv].forEach((m) => m.dispose());
    fs.rmSync(dir, { recursive: true });
  });

  it("encodes multi-window rows window by window and concatenates along the sequence", () => {
    const cfg = tinyClipTextConfig({ maxPositions: 6, vocabSize: 20 });
    const m = new ClipTextModel(cfg);
    const a = [0, 3, 4, 5, 1, 1];
    const b = [0, 7, 8, 1, 1, 1];
    const both = m.encode([[...a, ...b]]);
    expect(both.shape).toEqual([1, 12, cfg.width]);
    const ea = m.encode([a]);
    const eb = m.encode([b]);
    const cat = tf.concat([ea, eb], 1);
    expectClose(both.dataSync(), cat.dataSync(), 1e-6);
    tf.dispose([both, ea, eb, cat]);
    expect(() => m.encode([[1, 2, 3, 4, 5, 6, 7]])).toThrow(/window/);
    expect(() => m.encode([a], { clipSkip: 3 })).toThrow(/clipSkip/);
    expect(() => m.encode([[0, 1, 20]])).toThrow(/token id 20 is outside the vocabulary 0\.\.19/);
    m.dispose();
  });

  it("is causal: changing a later token leaves earlier positions unchanged", () => {
    const m = new ClipTextModel(tinyClipTextConfig({ maxPositions: 8, vocabSize: 20 }));
    const x = m.encode([
      [0, 3, 4, 5, 6, 7, 1, 1],
      [0, 3, 4, 9, 6, 7, 1, 1],
    ]);
    const d = x.arraySync();
    expectClose(d[0]!.slice(0, 3).flat(), d[1]!.slice(0, 3).flat(), 1e-6);
    expect(Math.abs(d[0]![3]![0]! - d[1]![3]![0]!)).toBeGreaterThan(1e-4);
    x.dispose();
    m.dispose();
  });

  it("reports what is wrong with a file that is not a text encoder", () => {
    const dir = tmpdir();
    const f = path.join(dir, "bad.safetensors");
    writeSafetensors(f, [["foo", { dtype: "F32", shape: [1], data: new Float32Array(1) }]]);
    expect(() => loadTextEncoder(f)).toThrow(/bad\.safetensors: no CLIP text encoder found/);
    // a truncated encoder: missing layer keys are named
    const m = new ClipTextModel(tinyClipTextConfig());
    const sd = [...stateDict(m, "text_model.")].filter(([k]) => !k.includes("layers.1.mlp.fc2.bias"));
    writeSafetensors(f, sd, {}, { overwrite: true });
    expect(() => loadTextEncoder(f, { config: { heads: 4 } })).toThrow(/missing keys: text_model\.encoder\.layers\.1\.mlp\.fc2\.bias/);
    m.dispose();
    fs.rmSync(dir, { recursive: true });
  });

  it("encode leaks no tensors", async () => {
    const m = new ClipTextModel(tinyClipTextConfig({ maxPositions: 6, vocabSize: 20 }));
    const out = await expectNoLeak(() => {
      const y = m.encode([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]], { clipSkip: 2 });
      y.dispose();
      return true;
    });
    expect(out).toBe(true);
    const idsT = tf.tensor2d([[0, 1, 2]], [1, 3], "int32");
    await expectNoLeak(() => m.encode(idsT).dispose());
    idsT.dispose();
    m.dispose();
  });
});
