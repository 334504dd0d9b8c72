/**
 * Whole-checkpoint loading and text-to-image, on a synthetic SD-1.x-shaped model written by the
 * test itself (tiny widths, fp16, LDM prefixes, EMA copies and schedule buffers that must be left
 * out). The expectations are independent of the loader: a reference model assembled by hand from
 * the same fp16-rounded tensors, the same weights re-laid-out as a diffusers folder and as a
 * `.ckpt`, SHA-256 from node's crypto, and the PNG decoded back by sharp.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHypernetwork } from "../src/hypernet/network";
import { saveHypernetwork } from "../src/hypernet/file";
import { type HostTensor, hostTensor } from "../src/io/host-tensor";
import { PyDict } from "../src/io/pyvalue";
import { writeSafetensors } from "../src/io/safetensors";
import { writeTorchFile } from "../src/io/torch-file";
import { type Module, loadStateDict, stateDict, zerosInit } from "../src/nn/module";
import { BaseModel } from "../src/pipeline/base-model";
import { type LoadedBaseModel, loadBaseModel } from "../src/pipeline/load";
import { clearHypernetworkCache, hypernetworkCacheSize, resolvePromptHypernetworks } from "../src/hypernet/prompt-networks";
import { txt2img } from "../src/pipeline/txt2img";
import { ClipTextModel, type ClipTextConfig } from "../src/text/clip";
import { ClipTokenizer } from "../src/text/tokenizer";
import type { UNetConfig } from "../src/unet/config";
import { ldmToDiffusersKey } from "../src/unet/diffusers-keys";
import { UNetModel } from "../src/unet/unet";
import { AutoencoderKL, type VaeConfig } from "../src/vae/autoencoder";
import { ldmVaeKeyToDiffusers } from "../src/vae/load";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

// Widths chosen so that every GroupNorm has 32 groups (as SD) and the three attention context
// widths differ (self 32 and 96, cross 64), so a hypernetwork module touches one kind of layer.
const UNET: UNetConfig = {
  in_channels: 4,
  out_channels: 4,
  model_channels: 32,
  attention_resolutions: [1, 2],
  num_res_blocks: 1,
  channel_mult: [1, 3],
  num_heads: 8,
  num_head_channels: -1,
  transformer_depth: 1,
  context_dim: 64,
  use_linear_in_transformer: false,
  legacy: false,
  use_spatial_transformer: true,
};
const TEXT: ClipTextConfig = {
  vocabSize: 44,
  maxPositions: 16,
  width: 64,
  layers: 1,
  heads: 1,
  mlpWidth: 128,
  activation: "quick_gelu",
  eps: 1e-5,
};
const VAE: VaeConfig = {
  inChannels: 3,
  ch: 32,
  chMult: [1, 1],
  numResBlocks: 1,
  zChannels: 4,
  normGroups: 32,
  normEps: 1e-6,
  scaleFactor: 0.18215,
};
const TOKENIZER = fixture("tokenizer");
const GEN = {
  prompt: "a photo of a cat",
  negativePrompt: "blurry",
  steps: 2,
  cfgScale: 5,
  sampler: "Euler a" as const,
  seed: 42,
  width: 16,
  height: 16,
};

let dir: string;
let hnDir: string;
/** The fp16-rounded weights under LDM single-file names. */
let ldm: Map<string, HostTensor>;
let single: string;
let base: LoadedBaseModel;
let reference: BaseModel;

/** Every parameter of a freshly initialised module, as F16 host tensors under `prefix`. */
function fp16State(m: Module, prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, t] of stateDict(m, prefix)) {
    // Round to fp16 now, so the reference model sees exactly the values the file stores.
    out.set(k, hostTensor(t.shape, Float32Array.from(t.data, roundHalf), "F16"));
  }
  m.dispose();
  return out;
}

/** Nearest fp16 value (round to nearest even), computed independently of the project's converter. */
function roundHalf(x: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  const e = Math.max(Math.floor(Math.log2(Math.abs(x))), -14);
  const ulp = 2 ** (e - 10);
  const q = x / ulp;
  const f = Math.floor(q);
  const r = q - f === 0.5 ? (f % 2 === 0 ? f : f + 1) : Math.round(q);
  return r * ulp;
}

/** Keys with `prefix` stripped, as a map for `loadStateDict`. */
function under(prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, t] of ldm) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), t);
  return out;
}

function sourceOf(m: Map<string, HostTensor>) {
  return { keys: () => m.keys(), get: (k: string) => m.get(k)!, shapeOf: (k: string) => m.get(k)?.shape };
}

/** A full-checkpoint's extras: EMA copies (named as LDM names them), EMA counters, schedule buffers, broken position_ids. */
function extras(): Array<[string, HostTensor]> {
  const out: Array<[string, HostTensor]> = [];
  for (const [k, t] of ldm) {
    if (k.startsWith("model.diffusion_model.")) out.push([`model_ema.${k.slice("model.".length).replace(/\./g, "")}`, t]);
  }
  out.push(["model_ema.decay", hostTensor([], new Float32Array([0.9999]))]);
  out.push(["model_ema.num_updates", { dtype: "I32", shape: [], data: new Int32Array([1000]) }]);
  const betas = new Float32Array(1000).map((_, i) => (Math.sqrt(0.00085) + (i / 999) * (Math.sqrt(0.012) - Math.sqrt(0.00085))) ** 2);
  let a = 1;
  const ac = betas.map((b) => (a *= 1 - b));
  out.push(["betas", hostTensor([1000], betas)]);
  out.push(["alphas_cumprod", hostTensor([1000], ac)]);
  out.push([
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    hostTensor(
      [1, 16],
      new Float32Array(16).map((_, i) => i + 0.3),
    ),
  ]);
  return out;
}

function pixelsOf(r: { pixels: Float32Array }): Float32Array {
  return r.pixels;
}

beforeAll(async () => {
  await setupBackend();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "hn-pipeline-"));
  ldm = new Map([
    ...fp16State(new UNetModel(UNET), "model.diffusion_model."),
    ...fp16State(new ClipTextModel(TEXT), "cond_stage_model.transformer.text_model."),
    ...fp16State(new AutoencoderKL(VAE), "first_stage_model."),
  ]);
  single = path.join(dir, "tiny-sd.safetensors");
  writeSafetensors(single, [...ldm, ...extras()]);

  // The reference: the same tensors loaded by hand into models built from the known configs.
  const unet = new UNetModel(UNET, { init: zerosInit });
  loadStateDict(unet, sourceOf(under("model.diffusion_model.")));
  const text = new ClipTextModel(TEXT, { init: zerosInit });
  loadStateDict(text, sourceOf(under("cond_stage_model.transformer.text_model.")));
  const vae = new AutoencoderKL(VAE, { init: zerosInit });
  loadStateDict(vae, sourceOf(under("first_stage_model.")));
  reference = new BaseModel({
    name: "tiny-sd",
    unet,
    textEncoder: text,
    vae,
    tokenizer: ClipTokenizer.fromFiles(TOKENIZER, undefined, { maxLength: 16 }),
    imageSize: 16,
  });

  base = await loadBaseModel(single, { tokenizer: TOKENIZER });

  hnDir = path.join(dir, "hypernetworks");
  fs.mkdirSync(path.join(hnDir, "sub"), { recursive: true });
  const net = createHypernetwork({
    name: "tinyhn",
    dims: [64, 32, 96],
    layerStructure: [1, 2, 1],
    activation: "relu",
    weightInit: "XavierNormal",
    seed: 3,
  });
  saveHypernetwork(net, path.join(hnDir, "sub", "tinyhn.pt"));
  net.dispose();
}, 60_000);

afterAll(() => {
  base?.dispose();
  reference?.dispose();
  clearHypernetworkCache();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe("loadBaseModel: single-file checkpoint", () => {
  it("reads the config from shapes and reports components, dtypes, ignored keys and the short hash", () => {
    const r = base.report;
    expect(r.kind).toBe("single-file");
    expect(r.family).toBe("SD 1.x");
    expect(r.unetConfig).toEqual(UNET);
    const count = (p: string): number => [...ldm.keys()].filter((k) => k.startsWith(p)).length;
    expect(r.unet.tensors).toBe(count("model.diffusion_model."));
    expect(r.textEncoder.tensors).toBe(count("cond_stage_model."));
    expect(r.vae.tensors).toBe(count("first_stage_model."));
    expect(r.unet.dtypes).toEqual({ F16: r.unet.tensors });
    expect(r.vae.dtypes).toEqual({ F16: r.vae.tensors });
    const params = (p: string): number => [...ldm].filter(([k]) => k.startsWith(p)).reduce((s, [, t]) => s + t.data.length, 0);
    expect(r.unet.parameters).toBe(params("model.diffusion_model."));
    expect(r.ignored.ema).toBe(count("model.diffusion_model.") + 2);
    expect(r.ignored.schedule).toEqual(["betas", "alphas_cumprod"]);
    expect(r.ignored.other).toEqual(["cond_stage_model.transformer.text_model.embeddings.position_ids"]);
    const sha = createHash("sha256").update(fs.readFileSync(single)).digest("hex");
    expect(r.hash).toBe(sha.slice(0, 10));
    expect(base.checkpointHash).toBe(sha.slice(0, 10));
    expect(base.tokenizer.maxLength).toBe(16);
  });

  it("generates the same image as a model assembled by hand from the same tensors, with an A1111 infotext and a PNG", async () => {
    const got = await txt2img(base, GEN);
    const want = await txt2img(reference, GEN);
    expect(got.shape).toEqual([1, 16, 16, 3]);
    expectClose(got.pixels, want.pixels, 1e-6);
    // A real image: finite, in range, not constant.
    const px = pixelsOf(got);
    expect(px.every((v) => Number.isFinite(v) && v >= 0 && v <= 1)).toBe(true);
    expect(Math.max(...px) - Math.min(...px)).toBeGreaterThan(1e-3);
    const { data, info } = await sharp(got.png[0]!).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([16, 16, 3]);
    expect([...data]).toEqual([...px].map((v) => Math.round(v * 255)));
    expect(got.infotexts[0]).toBe(
      `a photo of a cat\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 42, Size: 16x16, Model hash: ${base.report.hash}, Model: tiny-sd, RNG: NV`,
    );
  });

  it("a .ckpt (torch zip with state_dict) of the same weights loads to the same model", async () => {
    const ckpt = path.join(dir, "tiny-sd.ckpt");
    writeTorchFile(
      ckpt,
      new PyDict("dict", [
        ["state_dict", new PyDict("OrderedDict", [...ldm, ...extras()])],
        ["global_step", 1000],
      ]),
    );
    const m = await loadBaseModel(ckpt, { tokenizer: TOKENIZER, hash: false });
    try {
      expect(m.report.unet.dtypes).toEqual({ F16: m.report.unet.tensors });
      expect(m.report.ignored.schedule).toEqual(["betas", "alphas_cumprod"]);
      expectClose((await txt2img(m, GEN)).pixels, (await txt2img(base, GEN)).pixels, 1e-6);
    } finally {
      m.dispose();
    }
  });
});

describe("loadBaseModel: diffusers folder", () => {
  it("the same weights as unet/, text_encoder/, vae/, tokenizer/ give identical output", async () => {
    const root = path.join(dir, "tiny-diffusers");
    for (const d of ["unet", "text_encoder", "vae", "tokenizer"]) fs.mkdirSync(path.join(root, d), { recursive: true });
    const unet: Array<[string, HostTensor]> = [...under("model.diffusion_model.")].map(([k, t]) => [ldmToDiffusersKey(k, UNET)!, t]);
    expect(unet.every(([k]) => k !== undefined)).toBe(true);
    writeSafetensors(path.join(root, "unet", "diffusion_pytorch_model.safetensors"), unet);
    writeSafetensors(path.join(root, "text_encoder", "model.safetensors"), [...under("cond_stage_model.transformer.")]);
    const vae: Array<[string, HostTensor]> = [...under("first_stage_model.")].map(([k, t]) => {
      const dk = ldmVaeKeyToDiffusers(k, VAE.chMult.length);
      // diffusers stores the mid-attention 1×1 convs as matrices
      const mat = /mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(dk);
      return [dk, mat ? { ...t, shape: t.shape.slice(0, 2) } : t];
    });
    writeSafetensors(path.join(root, "vae", "diffusion_pytorch_model.safetensors"), vae);
    for (const f of ["vocab.json", "merges.txt"]) fs.copyFileSync(path.join(TOKENIZER, f), path.join(root, "tokenizer", f));
    const m = await loadBaseModel(root);
    try {
      expect(m.report.kind).toBe("diffusers");
      expect(m.report.unetConfig).toEqual(UNET);
      expect(m.report.hash).toBeNull();
      expect(m.report.vae.layout).toBe("diffusers");
      expectClose((await txt2img(m, GEN)).pixels, (await txt2img(base, GEN)).pixels, 1e-6);
    } finally {
      m.dispose();
    }
  });
});

describe("loadBaseModel: clear errors", () => {
  it("a checkpoint without a VAE asks for one, and loads with a separate VAE file", async () => {
    const noVae = path.join(dir, "novae.safetensors");
    writeSafetensors(
      noVae,
      [...ldm].filter(([k]) => !k.startsWith("first_stage_model.")),
    );
    await expect(loadBaseModel(noVae, { tokenizer: TOKENIZER })).rejects.toThrow(/has no VAE.*\{ vae:/s);
    const vaeFile = path.join(dir, "standalone-vae.safetensors");
    writeSafetensors(vaeFile, [...under("first_stage_model.")]);
    const m = await loadBaseModel(noVae, { tokenizer: TOKENIZER, vae: vaeFile });
    try {
      expect(m.report.vae.file).toBe(vaeFile);
      expectClose((await txt2img(m, GEN)).pixels, (await txt2img(base, GEN)).pixels, 1e-6);
    } finally {
      m.dispose();
    }
  });

  it("a single file with no tokenizer says where to get vocab.json/merges.txt; a tokenizer/ folder beside it is used", async () => {
    const lone = path.join(dir, "lone");
    fs.mkdirSync(lone);
    const file = path.join(lone, "m.safetensors");
    fs.copyFileSync(single, file);
    await expect(loadBaseModel(file)).rejects.toThrow(/no CLIP tokenizer found.*vocab\.json and merges\.txt.*stable-diffusion-v1-5/s);
    fs.mkdirSync(path.join(lone, "tokenizer"));
    for (const f of ["vocab.json", "merges.txt"]) fs.copyFileSync(path.join(TOKENIZER, f), path.join(lone, "tokenizer", f));
    const m = await loadBaseModel(file, { hash: false });
    expect(m.report.tokenizer).toBe(path.join(lone, "tokenizer"));
    m.dispose();
  });

  it("an SD 2.x checkpoint is recognised and refused", async () => {
    const sd2 = path.join(dir, "sd2.safetensors");
    // SD 2.x: Linear proj_in [c, c] and a 1024-wide cross-attention context.
    writeSafetensors(sd2, [
      ["model.diffusion_model.input_blocks.1.1.proj_in.weight", hostTensor([320, 320], new Float32Array(320 * 320), "F16")],
      [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        hostTensor([320, 1024], new Float32Array(320 * 1024), "F16"),
      ],
      ["cond_stage_model.model.token_embedding.weight", hostTensor([4, 1024], new Float32Array(4 * 1024), "F16")],
    ]);
    await expect(loadBaseModel(sd2, { tokenizer: TOKENIZER })).rejects.toThrow(/SD 2\.x checkpoint.*not supported yet/s);
  });

  it("files that are not checkpoints are named as such", async () => {
    const vaeOnly = path.join(dir, "only-vae.safetensors");
    writeSafetensors(vaeOnly, [...under("first_stage_model.")]);
    await expect(loadBaseModel(vaeOnly, { tokenizer: TOKENIZER })).rejects.toThrow(/no UNet found.*VAE, LoRA/s);
    await expect(loadBaseModel(path.join(dir, "missing.safetensors"))).rejects.toThrow(/no such file or folder/);
  });
});

describe("txt2img with hypernetwork prompt tags", () => {
  it("a tag changes the image, multiplier 0 equals no tag, and the UNet is left untouched", async () => {
    const plain = await txt2img(base, GEN);
    const tagged = await txt2img(base, { ...GEN, prompt: `${GEN.prompt} <hypernet:tinyhn:1>`, hypernetworkDir: hnDir });
    const zero = await txt2img(base, { ...GEN, prompt: `${GEN.prompt} <hypernet:tinyhn:0>`, hypernetworkDir: hnDir });
    let diff = 0;
    for (let i = 0; i < plain.pixels.length; i++) diff = Math.max(diff, Math.abs(plain.pixels[i]! - tagged.pixels[i]!));
    expect(diff).toBeGreaterThan(1e-3);
    expectClose(zero.pixels, plain.pixels, 1e-6);
    expect(tagged.hypernetworks.map((h) => [h.name, h.multiplier])).toEqual([["tinyhn", 1]]);
    // As A1111 1.10 writes it: the tag stays in the prompt and no Hypernet field repeats it (A1111's paste would apply it twice).
    expect(tagged.infotexts[0]).toMatch(/\nSteps: 2, [^\n]*Model: tiny-sd, RNG: NV$/);
    expect(tagged.infotexts[0]).not.toMatch(/Hypernet/);
    expect(tagged.infotexts[0]!.startsWith(`${GEN.prompt} <hypernet:tinyhn:1>\n`)).toBe(true);
    // Detached afterwards: a plain call reproduces the untagged image.
    expectClose((await txt2img(base, GEN)).pixels, plain.pixels, 0);
    expect(hypernetworkCacheSize()).toBe(1);
  });

  it("hypernetworkTimesteps gates the tagged networks: a range no step reaches gives the untagged image, the full range the tagged one", async () => {
    const tag = { ...GEN, prompt: `${GEN.prompt} <hypernet:tinyhn:1>`, hypernetworkDir: hnDir };
    const plain = await txt2img(base, GEN);
    const tagged = await txt2img(base, tag);
    const never = await txt2img(base, { ...tag, hypernetworkTimesteps: [1000, 1001] }); // sampler timesteps are < 1000
    const always = await txt2img(base, { ...tag, hypernetworkTimesteps: [0, 1000] });
    expectClose(never.pixels, plain.pixels, 0);
    expectClose(always.pixels, tagged.pixels, 0);
    expect(always.infotexts[0]).toMatch(/, RNG: NV, Hypernet timesteps: 0-1000$/);
  });

  it("resolved networks passed in give the tagged image, and the tags they came from are not looked up again", async () => {
    const prompt = `${GEN.prompt} <hypernet:tinyhn:0.5> <lora:x:1>`;
    const tagged = await txt2img(base, { ...GEN, prompt, hypernetworkDir: hnDir });
    const { networks, ignoredTags } = resolvePromptHypernetworks(prompt, "<hypernet:tinyhn:1>", hnDir);
    expect(networks.map((n) => [n.name, n.multiplier, n.file])).toEqual([["tinyhn", 0.5, path.join(hnDir, "sub", "tinyhn.pt")]]);
    expect(ignoredTags).toEqual(["<lora:x:1>", "<hypernet:tinyhn:1>"]);
    // no hypernetworkDir: the tag in the prompt would be an error if it were looked up
    const given = await txt2img(base, { ...GEN, prompt, hypernetworks: networks });
    expectClose(given.pixels, tagged.pixels, 0);
    expect(given.infotexts).toEqual(tagged.infotexts);
    expect(given.ignoredTags).toEqual(["<lora:x:1>"]);
    // the same network from the cache, not a second copy
    expect(resolvePromptHypernetworks(prompt, "", hnDir).networks[0]!.network).toBe(networks[0]!.network);
  });

  it("an unknown name is an error listing close names, and nothing stays attached", async () => {
    await expect(txt2img(base, { ...GEN, prompt: "cat <hypernet:tinyhm:1>", hypernetworkDir: hnDir })).rejects.toThrow(
      /no hypernetwork named "tinyhm".*Did you mean "tinyhn"/,
    );
    await expect(txt2img(base, { ...GEN, prompt: "cat <hypernet:tinyhn>" })).rejects.toThrow(/no hypernetworkDir/);
    const layers = base.unet.getProcessors();
    expect(new Set(layers.values()).size).toBe(1);
  });

  it("detaches even when sampling fails", async () => {
    const before = base.unet.getProcessors();
    await expect(txt2img(base, { ...GEN, width: 10, prompt: "cat <hypernet:tinyhn>", hypernetworkDir: hnDir })).rejects.toThrow(
      /multiple of 4/,
    );
    const badShape = {
      ...GEN,
      prompt: "cat <hypernet:tinyhn>",
      hypernetworkDir: hnDir,
      callback: () => {
        throw new Error("stop here");
      },
    };
    await expect(txt2img(base, badShape)).rejects.toThrow(/stop here/);
    expect(base.unet.getProcessors()).toEqual(before);
  });

  it("leaks no tensors across a call (hypernetwork cached from the previous call)", async () => {
    await txt2img(base, { ...GEN, prompt: "cat <hypernet:tinyhn:0.5>", hypernetworkDir: hnDir });
    await expectNoLeak(() => txt2img(base, { ...GEN, prompt: "cat <hypernet:tinyhn:0.5>", hypernetworkDir: hnDir, batch: 2 }));
    await expectNoLeak(async () => {
      const m = await loadBaseModel(single, { tokenizer: TOKENIZER, hash: false });
      m.dispose();
    });
  });
});
