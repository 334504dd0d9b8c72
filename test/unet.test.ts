/**
 * The UNet at small sizes: against the PyTorch LDM fixture, hand-computed blocks, the attention
 * processor hook, the loaders (LDM / bare / diffusers layouts, strict errors) and leaks.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import type { HostTensor } from "../src/io/host-tensor";
import { PyDict } from "../src/io/pyvalue";
import { SafetensorsFile, readSafetensors, writeSafetensors } from "../src/io/safetensors";
import { writeTorchFile } from "../src/io/torch-file";
import { GroupNorm } from "../src/nn/layers";
import { StateDictError, stateDict, zerosInit } from "../src/nn/module";
import { type AttentionProcessor, CrossAttention, attend, defaultProcessor } from "../src/unet/attention";
import { type UNetConfig, fromJson, headsFor, TINY_LATENT_UNET, validateConfig } from "../src/unet/config";
import { ldmToDiffusersKey } from "../src/unet/diffusers-keys";
import { inferUNetConfig } from "../src/unet/infer-config";
import { loadUNetWeights } from "../src/unet/load";
import { timestepEmbedding } from "../src/unet/timestep";
import { UNetModel } from "../src/unet/unet";
import { DownsamplePadAllSides, DownsamplePadBottomRight } from "../src/nn/resample";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

const cfgJson = JSON.parse(fs.readFileSync(fixture("ldm-tiny.config.json"), "utf8")) as unknown;
let unet: UNetModel;
let io: Map<string, HostTensor>;
let x: tf.Tensor4D;
let t: number[];
let ctx: tf.Tensor3D;
/** The UNet output for the fixture inputs with default processors (NHWC data). */
let ref: Float32Array;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "unet-test-"));

/** NCHW host data → NHWC tensor. */
function nhwc(h: HostTensor): tf.Tensor4D {
  return tf.tidy(() => tf.tensor4d(h.data as Float32Array, h.shape as [number, number, number, number]).transpose([0, 2, 3, 1]));
}

/** UNet output (NHWC) as NCHW floats, for comparison with the fixture. */
function nchwData(y: tf.Tensor4D): Float32Array {
  const p = y.transpose([0, 3, 1, 2]);
  const d = p.dataSync() as Float32Array;
  p.dispose();
  return d;
}

beforeAll(async () => {
  await setupBackend();
  unet = new UNetModel(fromJson(cfgJson, "ldm-tiny.config.json"), { init: zerosInit });
  loadUNetWeights(unet, fixture("ldm-tiny.unet.safetensors"));
  io = readSafetensors(fixture("ldm-tiny.io.safetensors")).tensors;
  x = nhwc(io.get("x")!);
  t = [...io.get("t")!.data];
  ctx = tf.tensor3d(io.get("context")!.data as Float32Array, io.get("context")!.shape as [number, number, number]);
  const y = unet.forward(x, t, ctx);
  ref = y.dataSync() as Float32Array;
  y.dispose();
});

describe("config", () => {
  it("reads the fixture's LDM config and fills the rest from SD 1.5", () => {
    const c = fromJson(cfgJson);
    expect(c.model_channels).toBe(32);
    expect(c.channel_mult).toEqual([1, 2]);
    expect(c.num_heads).toBe(2);
    expect(c.num_head_channels).toBe(-1);
    expect(c.use_linear_in_transformer).toBe(false);
    expect(headsFor(c, 64)).toEqual({ heads: 2, dimHead: 32 });
  });

  it("rejects bad configs with errors that say what to change", () => {
    expect(() => fromJson({ ...(cfgJson as object), modle_channels: 3 })).toThrow(/unknown key "modle_channels"/);
    expect(() => fromJson({ ...(cfgJson as object), model_channels: 48 })).toThrow(/48 is not a multiple of 32/);
    expect(() => fromJson({ ...(cfgJson as object), resblock_updown: true })).toThrow(/resblock_updown = true is not supported/);
    expect(() => fromJson({ channel_mult: [1] })).toThrow(/missing model_channels/);
    expect(() => validateConfig({ ...TINY_LATENT_UNET, num_heads: -1, num_head_channels: -1 })).toThrow(
      /set num_heads .* or num_head_channels/,
    );
    expect(() => validateConfig({ ...TINY_LATENT_UNET, attention_resolutions: [8] })).toThrow(/deepest level is at downsample factor 4/);
    expect(() => validateConfig({ ...TINY_LATENT_UNET, norm_num_groups: 0 })).toThrow(/norm_num_groups must be a positive integer/);
    expect(() => fromJson({ ...(cfgJson as object), norm_num_groups: 5 })).toThrow(/32 is not a multiple of 5/);
  });

  it("norm_num_groups sets every GroupNorm (LDM's 32 when unset)", () => {
    const groupsOf = (u: UNetModel): number[] => {
      const norms = u
        .namedModules()
        .map(([, m]) => m)
        .filter((m): m is GroupNorm => m instanceof GroupNorm);
      expect(norms.length).toBeGreaterThan(5);
      const groups = [...new Set(norms.map((m) => m.numGroups))];
      u.dispose();
      return groups;
    };
    expect(groupsOf(new UNetModel(TINY_LATENT_UNET, { init: zerosInit }))).toEqual([32]);
    const c = fromJson({ ...(cfgJson as object), norm_num_groups: 8 });
    expect(c.norm_num_groups).toBe(8);
    expect(groupsOf(new UNetModel(c, { init: zerosInit }))).toEqual([8]);
  });

  it("inferUNetConfig reads the same config back from LDM names (with a prefix) and from diffusers names", () => {
    const configs: UNetConfig[] = [
      { ...TINY_LATENT_UNET, num_heads: 2, num_head_channels: -1 },
      {
        ...TINY_LATENT_UNET,
        num_heads: 4,
        num_head_channels: -1,
        attention_resolutions: [2],
        num_res_blocks: 2,
        transformer_depth: 2,
        channel_mult: [1, 2, 4],
      },
    ];
    for (const cfg of configs) {
      const u = new UNetModel(cfg, { init: zerosInit });
      const shapes = new Map(u.namedParameters().map(([k, p]) => [k, [...p.torchShape]]));
      u.dispose();
      const ldm = new Map([...shapes].map(([k, s]) => [`model.diffusion_model.${k}`, s]));
      const diffusers = new Map([...shapes].map(([k, s]) => [ldmToDiffusersKey(k, cfg)!, s]));
      expect(diffusers.has("undefined")).toBe(false);
      const source = (m: Map<string, number[]>) => ({ keys: () => m.keys(), shapeOf: (k: string) => m.get(k) });
      expect(inferUNetConfig(source(ldm), { kind: "ldm", prefix: "model.diffusion_model." }, { num_heads: cfg.num_heads })).toEqual(cfg);
      expect(inferUNetConfig(source(diffusers), { kind: "diffusers", json: { attention_head_dim: cfg.num_heads } })).toEqual(cfg);
      // without a head count, SD 1.x's 8 heads
      expect(inferUNetConfig(source(diffusers), { kind: "diffusers" }).num_heads).toBe(8);
    }
    expect(() => inferUNetConfig({ keys: () => [], shapeOf: () => undefined }, { kind: "ldm", prefix: "" })).toThrow(
      /no tensor "input_blocks.0.0.weight"; the file is not an LDM UNet/,
    );
  });
});

describe("blocks", () => {
  it("timestep embedding is [cos, sin] with f_i = 10000^(-i/half)", async () => {
    await expectNoLeak(() => {
      const tt = tf.tensor1d([0, 1, 250]);
      const e = timestepEmbedding(tt, 4);
      const f1 = Math.exp(-Math.log(10000) / 2);
      const want = [
        1,
        1,
        0,
        0,
        Math.cos(1),
        Math.cos(f1),
        Math.sin(1),
        Math.sin(f1),
        Math.cos(250),
        Math.cos(250 * f1),
        Math.sin(250),
        Math.sin(250 * f1),
      ];
      expect(e.shape).toEqual([3, 4]);
      expectClose(e.dataSync(), want, 1e-5);
      tf.dispose([tt, e]);
    });
  });

  it("Downsample pads one pixel on every side (not tfjs 'same')", async () => {
    const d = new DownsamplePadAllSides(1, { init: (shape) => tf.ones(shape) });
    await expectNoLeak(() => {
      const inp = tf.ones([1, 4, 4, 1]) as tf.Tensor4D;
      const y = d.apply(inp);
      // windows centred on rows/cols 0 and 2: the corner sees 2×2 ones, the edges 2×3, the interior 3×3
      // (tfjs 'same' would centre them on 1 and 3 and give [9, 6, 6, 4])
      expectClose(y.dataSync(), [4, 6, 6, 9]);
      tf.dispose([inp, y]);
    });
    d.dispose();
  });

  it("the VAE's Downsample pads only the bottom row and right column", async () => {
    const d = new DownsamplePadBottomRight(1, { init: (shape) => tf.ones(shape) });
    await expectNoLeak(() => {
      const inp = tf.ones([1, 4, 4, 1]) as tf.Tensor4D;
      const y = d.apply(inp);
      // windows start at rows/cols 0 and 2: the first sees 3×3 ones, the last 2×2 (its third row/col is padding)
      expectClose(y.dataSync(), [9, 6, 6, 4]);
      tf.dispose([inp, y]);
    });
    d.dispose();
  });

  it("attention chunks queries without changing the result", async () => {
    const layer = unet.attentionLayers()[0]![1];
    await expectNoLeak(() => {
      const q = tf.randomNormal([2, 50, layer.innerDim], 0, 1, "float32", 1);
      const k = tf.randomNormal([2, 7, layer.innerDim], 0, 1, "float32", 2);
      const v = tf.randomNormal([2, 7, layer.innerDim], 0, 1, "float32", 3);
      const whole = attend(layer, q, k, v);
      layer.scoreBudget = 2 * layer.heads * 7 * 8; // 8 query rows at a time → 7 chunks
      const chunked = attend(layer, q, k, v);
      layer.scoreBudget = Infinity;
      expectClose(chunked.dataSync(), whole.dataSync(), 1e-6);
      tf.dispose([q, k, v, whole, chunked]);
    });
    layer.scoreBudget = 2 ** 25;
  });

  it("attend equals a per-head softmax(q kᵀ/√d) v computed by hand", async () => {
    const layer = new CrossAttention(4, 3, 2, 2, false, { init: zerosInit });
    // identity output projection so the result is the merged heads
    layer.to_out.at(0).weight.value.assign(tf.eye(4));
    const qd = [1, 0, 0, 1, 0, 2, 1, 0]; // 2 tokens × 4
    const kd = [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1]; // 3 tokens × 4
    const vd = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    const want: number[] = [];
    for (let i = 0; i < 2; i++) {
      for (let h = 0; h < 2; h++) {
        const s = [0, 1, 2].map(
          (j) => (qd[i * 4 + h * 2]! * kd[j * 4 + h * 2]! + qd[i * 4 + h * 2 + 1]! * kd[j * 4 + h * 2 + 1]!) / Math.SQRT2,
        );
        const m = Math.max(...s);
        const e = s.map((z) => Math.exp(z - m));
        const z = e.reduce((a, b) => a + b);
        for (let c = 0; c < 2; c++) want.push([0, 1, 2].reduce((acc, j) => acc + (e[j]! / z) * vd[j * 4 + h * 2 + c]!, 0));
      }
    }
    await expectNoLeak(() => {
      const [q, k, v] = [tf.tensor3d(qd, [1, 2, 4]), tf.tensor3d(kd, [1, 3, 4]), tf.tensor3d(vd, [1, 3, 4])];
      const y = attend(layer, q, k, v);
      expectClose(y.dataSync(), want, 1e-5);
      tf.dispose([q, k, v, y]);
    });
    layer.dispose();
  });
});

describe("UNet vs PyTorch LDM (ldm-tiny fixture)", () => {
  it("has exactly the fixture's keys", () => {
    const f = SafetensorsFile.open(fixture("ldm-tiny.unet.safetensors"));
    const fileKeys = f
      .keys()
      .map((k) => k.replace("model.diffusion_model.", ""))
      .sort();
    f.close();
    expect(
      unet
        .namedParameters()
        .map(([k]) => k)
        .sort(),
    ).toEqual(fileKeys);
  });

  it("predicts eps to 1e-4", () => {
    // `ref` is unet.forward(x, t, ctx) (computed once in beforeAll; leaks are checked below)
    expectClose(nchwData(tf.tensor4d(ref, [2, 16, 16, 4])), io.get("eps")!.data, 1e-4);
  });

  it("takes timesteps as a tensor, one timestep for the whole batch", async () => {
    await expectNoLeak(() => {
      // a batch of [x0, x0] at the single timestep t0 must give row 0 of the fixture batch twice
      const [x0, c0, tt] = tf.tidy(() => [
        tf.concat([x.slice([0, 0, 0, 0], [1, 16, 16, 4]), x.slice([0, 0, 0, 0], [1, 16, 16, 4])]) as tf.Tensor4D,
        tf.concat([ctx.slice([0, 0, 0], [1, 12, 40]), ctx.slice([0, 0, 0], [1, 12, 40])]) as tf.Tensor3D,
        tf.tensor1d([t[0]!]),
      ]);
      const y = unet.forward(x0, tt, c0);
      const n = 16 * 16 * 4;
      expectClose(y.dataSync().slice(0, n), ref.slice(0, n), 1e-5);
      expectClose(y.dataSync().slice(n), ref.slice(0, n), 1e-5);
      tf.dispose([x0, c0, tt, y]);
    });
  });

  it("rejects wrongly shaped inputs with clear errors", () => {
    const nchw = tf.zeros([2, 4, 16, 16]) as tf.Tensor4D;
    const odd = tf.zeros([2, 15, 15, 4]) as tf.Tensor4D;
    expect(() => unet.forward(nchw, t, ctx)).toThrow(/NHWC .*transpose/);
    expect(() => unet.forward(odd, t, ctx)).toThrow(/divisible by 2/);
    expect(() => unet.forward(x, [1, 2, 3], ctx)).toThrow(/1 or 2 timesteps/);
    expect(() => unet.forward(x, t, ctx.slice([0, 0, 0], [2, 12, 39]))).toThrow(/context must be \[2, T, 40\]/);
    tf.dispose([nchw, odd]);
  });
});

describe("attention processors", () => {
  it("lists every attention layer by its checkpoint path", () => {
    const layers = unet.attentionLayers();
    // attention at both levels: 2 + 2 down, 1 mid, 3 + 3 up transformers, attn1 + attn2 each
    expect(layers.length).toBe(22);
    expect(layers[0]![0]).toBe("input_blocks.1.1.transformer_blocks.0.attn1");
    expect(layers[1]![0]).toBe("input_blocks.1.1.transformer_blocks.0.attn2");
    const keys = new Set(unet.namedParameters().map(([k]) => k));
    for (const [p, l] of layers) {
      expect(keys.has(`${p}.to_k.weight`)).toBe(true);
      expect(l.contextDim).toBe(l.isSelfAttention ? l.queryDim : 40);
    }
  });

  it("calls a custom processor once per layer per forward, with [B, N, C] inputs", async () => {
    const calls = new Map<string, Array<{ x: number[]; ctx: number[] | undefined }>>();
    const byLayer = new Map(unet.attentionLayers().map(([p, l]) => [l, p]));
    const counting: AttentionProcessor = (layer, xx, c) => {
      const p = byLayer.get(layer)!;
      calls.set(p, [...(calls.get(p) ?? []), { x: xx.shape, ctx: c?.shape }]);
      return defaultProcessor(layer, xx, c);
    };
    unet.setProcessor(counting);
    let y: Float32Array;
    try {
      y = await expectNoLeak(() => {
        const out = unet.forward(x, t, ctx);
        const d = out.dataSync() as Float32Array;
        out.dispose();
        return d;
      });
    } finally {
      unet.resetProcessors();
    }
    expect(calls.size).toBe(22);
    for (const [p, l] of unet.attentionLayers()) {
      const c = calls.get(p)!;
      expect(c.length).toBe(1);
      const res = p.startsWith("input_blocks.1.") || p.startsWith("input_blocks.2.") || /^output_blocks\.[345]\./.test(p) ? 16 : 8;
      expect(c[0]!.x).toEqual([2, res * res, l.queryDim]);
      expect(c[0]!.ctx).toEqual(l.isSelfAttention ? undefined : [2, 12, 40]);
    }
    // the counting processor computes the default, so the output is unchanged
    expectClose(y, ref, 0);
  });

  it("setProcessor with a map changes only the named layers; reset restores bit-exact output", async () => {
    const refData = ref;
    const seen: string[] = [];
    const target = "middle_block.1.transformer_blocks.0.attn2";
    // zero the context fed to to_k and to_v, as a hypernetwork-style rewrite would change it
    const zeroCtx: AttentionProcessor = (layer, xx, c) => {
      seen.push(target);
      const z = tf.zerosLike(c!);
      return attend(layer, layer.to_q.apply(xx), layer.to_k.apply(z), layer.to_v.apply(z));
    };
    await expectNoLeak(() => unet.setProcessor(new Map([[target, zeroCtx]])));
    expect([...unet.getProcessors()].filter(([, p]) => p !== defaultProcessor).map(([k]) => k)).toEqual([target]);
    let changed: tf.Tensor;
    try {
      changed = unet.forward(x, t, ctx);
    } finally {
      await expectNoLeak(() => unet.resetProcessors());
    }
    expect(seen).toEqual([target]);
    const diff = Math.max(...Array.from(changed.dataSync(), (v, i) => Math.abs(v - refData[i]!)));
    expect(diff).toBeGreaterThan(1e-3);
    changed.dispose();
    expect([...unet.getProcessors().values()].every((p) => p === defaultProcessor)).toBe(true);
    const again = unet.forward(x, t, ctx);
    expect(Array.from(again.dataSync())).toEqual(Array.from(refData));
    again.dispose();
    expect(() => unet.setProcessor(new Map([["input_blocks.1.1.attn9", zeroCtx]]))).toThrow(/no attention layer at input_blocks.1.1.attn9/);
  });
});

describe("loading", () => {
  const ldmTensors = (): Map<string, HostTensor> => readSafetensors(fixture("ldm-tiny.unet.safetensors")).tensors;

  it("loads a bare UNet file and a diffusers file (names mapped by rule) to the same weights", () => {
    const tensors = ldmTensors();
    const cfg = unet.config;
    const bare: Array<[string, HostTensor]> = [...tensors].map(([k, v]) => [k.replace("model.diffusion_model.", ""), v]);
    const diffusers: Array<[string, HostTensor]> = bare.map(([k, v]) => [ldmToDiffusersKey(k, cfg)!, v]);
    expect(diffusers.every(([k]) => k !== undefined && !k.includes("input_blocks"))).toBe(true);
    writeSafetensors(path.join(tmp, "bare.safetensors"), bare, {}, { overwrite: true });
    fs.mkdirSync(path.join(tmp, "pipe", "unet"), { recursive: true });
    writeSafetensors(path.join(tmp, "pipe", "unet", "diffusion_pytorch_model.safetensors"), diffusers, {}, { overwrite: true });
    const want = new Map(unet.namedParameters().map(([k, p]) => [k, p.value.dataSync()]));
    for (const [src, layout] of [
      [path.join(tmp, "bare.safetensors"), "ldm-bare"],
      [path.join(tmp, "pipe"), "diffusers"],
    ] as const) {
      const m = new UNetModel(cfg, { init: zerosInit });
      const rep = loadUNetWeights(m, src);
      expect(rep.layout).toBe(layout);
      expect(rep.family).toEqual({ name: "custom", contextDim: 40, linearProj: false });
      expect(rep.loaded.length).toBe(tensors.size);
      for (const [k, p] of m.namedParameters()) expectClose(p.value.dataSync(), want.get(k)!, 0);
      m.dispose();
    }
  });

  it("loads an LDM .ckpt (torch zip, state_dict inside) to the same weights", async () => {
    const sd = new PyDict("OrderedDict", ldmTensors());
    sd.set("first_stage_model.decoder.conv_in.bias", { dtype: "F32", shape: [1], data: new Float32Array(1) });
    const file = path.join(tmp, "tiny.ckpt");
    writeTorchFile(
      file,
      new PyDict("dict", [
        ["state_dict", sd],
        ["global_step", 1],
      ]),
      { overwrite: true },
    );
    const m = new UNetModel(unet.config, { init: zerosInit });
    const rep = await expectNoLeak(() => loadUNetWeights(m, file));
    expect(rep.layout).toBe("ldm");
    expect(rep.loaded.length).toBe(m.namedParameters().length);
    const want = new Map(unet.namedParameters().map(([k, p]) => [k, p.value.dataSync()]));
    for (const [k, p] of m.namedParameters()) expectClose(p.value.dataSync(), want.get(k)!, 0);
    m.dispose();
  });

  it("names missing, unexpected and mis-shaped keys; strict:false loads the rest", () => {
    const tensors = ldmTensors();
    const P = "model.diffusion_model.";
    tensors.delete(`${P}out.2.bias`);
    tensors.set(`${P}input_blocks.1.1.extra.weight`, { dtype: "F32", shape: [1], data: new Float32Array(1) });
    const k = `${P}input_blocks.1.1.proj_in.weight`;
    tensors.set(k, { dtype: "F32", shape: [32, 32], data: new Float32Array(32 * 32) });
    tensors.set("first_stage_model.decoder.conv_in.weight", { dtype: "F32", shape: [1], data: new Float32Array(1) });
    const file = path.join(tmp, "broken.safetensors");
    writeSafetensors(file, tensors, {}, { overwrite: true });
    const m = new UNetModel(unet.config, { init: zerosInit });
    let err: unknown;
    try {
      loadUNetWeights(m, file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StateDictError);
    const msg = (err as Error).message;
    expect(msg).toContain("broken.safetensors");
    expect(msg).toContain(`missing keys: ${P}out.2.bias`);
    expect(msg).toContain(`unexpected keys: ${P}input_blocks.1.1.extra.weight`);
    expect(msg).toContain(`${k}: file [32, 32] vs model [32, 32, 1, 1]`);
    expect(msg).toMatch(/Linear proj_in\/proj_out \(model: 1×1 conv\)/);
    const rep = loadUNetWeights(m, file, { strict: false });
    expect(rep.missing).toEqual([`${P}out.2.bias`]);
    expect(rep.unexpected).toEqual([`${P}input_blocks.1.1.extra.weight`]);
    expect(rep.mismatched.length).toBe(1);
    expect(rep.loaded.length).toBe(m.namedParameters().length - 2);
    m.dispose();
  });

  it("says when a file is SD 2.x", () => {
    const file = path.join(tmp, "sd2ish.safetensors");
    const f32 = (shape: number[]): HostTensor => ({ dtype: "F32", shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
    writeSafetensors(
      file,
      [
        ["model.diffusion_model.input_blocks.1.1.proj_in.weight", f32([32, 32])],
        ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", f32([32, 1024])],
      ],
      {},
      { overwrite: true },
    );
    const m = new UNetModel(TINY_LATENT_UNET, { init: () => tf.zeros([1]) });
    expect(() => loadUNetWeights(m, file)).toThrow(/looks like an SD 2\.x UNet: context_dim 1024 \(model: 64\).*num_head_channels 64/);
    m.dispose();
  });

  it("explains unusable sources", () => {
    const m = new UNetModel(TINY_LATENT_UNET, { init: () => tf.zeros([1]) });
    expect(() => loadUNetWeights(m, path.join(tmp, "nope.safetensors"))).toThrow(/no such file or folder/);
    expect(() => loadUNetWeights(m, tmp)).toThrow(/no diffusers UNet found/);
    fs.writeFileSync(path.join(tmp, "w.bin"), "x");
    expect(() => loadUNetWeights(m, path.join(tmp, "w.bin"))).toThrow(/unknown weight file type/);
    expect(() => loadUNetWeights(m, fixture("ldm-tiny.io.safetensors"))).toThrow(/no UNet weights found/);
    m.dispose();
  });
});

describe("tiny preset", () => {
  it("builds, runs and has distinct self/cross attention widths", async () => {
    const m = new UNetModel(TINY_LATENT_UNET);
    const widths = new Set(m.attentionLayers().map(([, l]) => `${l.isSelfAttention ? "self" : "cross"}:${l.contextDim}`));
    expect([...widths].sort()).toEqual(["cross:64", "self:128", "self:32"]);
    const sd = stateDict(m);
    expect(sd.get("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")!.shape).toEqual([32, 64]);
    await expectNoLeak(() => {
      const xx = tf.randomNormal([1, 16, 16, 4]) as tf.Tensor4D;
      const cc = tf.randomNormal([1, 5, 64]) as tf.Tensor3D;
      const y = m.forward(xx, [500], cc);
      expect(y.shape).toEqual([1, 16, 16, 4]);
      expect(Array.from(y.dataSync()).every(Number.isFinite)).toBe(true);
      tf.dispose([xx, cc, y]);
    });
    m.dispose();
  });
});
