/**
 * The real SD 1.5 architecture: its keys, shapes and parameter count against the independent
 * enumeration in `sd15-keys.tsv` (copied from the reference notes), the diffusers naming rules
 * against the same table, and one forward pass through the full-size module.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { zerosInit } from "../src/nn/module";
import { type AttentionProcessor, defaultProcessor } from "../src/unet/attention";
import { SD15_UNET } from "../src/unet/config";
import { diffusersToLdmKey, ldmToDiffusersKey } from "../src/unet/diffusers-keys";
import { LDM_UNET_PREFIX } from "../src/unet/load";
import { UNetModel, unetParameterCount, unetParameterShapes } from "../src/unet/unet";
import { expectNoLeak, fixture, setupBackend } from "./helpers/tf";

interface Row {
  ldm: string;
  diffusers: string;
  shape: number[];
  diffusersShape: string;
}

/** The UNet rows of the table (component, ldm_key, diffusers_key, shape_pytorch, diffusers shape, note). */
function unetRows(): Row[] {
  const lines = fs.readFileSync(fixture("sd15-keys.tsv"), "utf8").trim().split("\n");
  expect(lines[0]!.split("\t").slice(0, 5)).toEqual([
    "component",
    "ldm_key",
    "diffusers_key",
    "shape_pytorch",
    "diffusers_shape_if_different",
  ]);
  return lines
    .slice(1)
    .map((l) => l.split("\t"))
    .filter((c) => c[0] === "unet")
    .map((c) => ({ ldm: c[1]!, diffusers: c[2]!, shape: JSON.parse(c[3]!) as number[], diffusersShape: c[4] ?? "" }));
}

beforeAll(setupBackend);

describe("SD 1.5 UNet layout (from shapes only, nothing allocated)", () => {
  const rows = unetRows();

  it("has 859,520,964 parameters in 686 tensors", async () => {
    expect(rows.length).toBe(686);
    expect(await expectNoLeak(() => unetParameterCount(SD15_UNET))).toBe(859_520_964);
    expect(unetParameterShapes(SD15_UNET).length).toBe(686);
  });

  it("module paths are exactly the LDM keys of the table, with the same shapes, both ways", () => {
    const ours = new Map(unetParameterShapes(SD15_UNET).map(([k, s]) => [LDM_UNET_PREFIX + k, s]));
    const table = new Map(rows.map((r) => [r.ldm, r.shape]));
    expect([...ours.keys()].filter((k) => !table.has(k))).toEqual([]);
    expect([...table.keys()].filter((k) => !ours.has(k))).toEqual([]);
    for (const [k, s] of table) expect(ours.get(k), k).toEqual(s);
  });

  it("diffusers naming rules map the table's diffusers keys onto its LDM keys and back", () => {
    const bad: string[] = [];
    for (const r of rows) {
      const ldm = r.ldm.slice(LDM_UNET_PREFIX.length);
      if (diffusersToLdmKey(r.diffusers, SD15_UNET) !== ldm)
        bad.push(`${r.diffusers} → ${diffusersToLdmKey(r.diffusers, SD15_UNET)} (want ${ldm})`);
      if (ldmToDiffusersKey(ldm, SD15_UNET) !== r.diffusers)
        bad.push(`${ldm} → ${ldmToDiffusersKey(ldm, SD15_UNET)} (want ${r.diffusers})`);
      // shapes agree in both layouts for every UNet tensor, so the mapping needs no reshape
      expect(r.diffusersShape, r.ldm).toBe("");
    }
    expect(bad).toEqual([]);
  });

  it("names outside the layout map to nothing", () => {
    for (const k of [
      "down_blocks.3.attentions.0.norm.weight",
      "down_blocks.3.downsamplers.0.conv.weight",
      "up_blocks.3.upsamplers.0.conv.bias",
      "mid_block.resnets.2.norm1.weight",
      "up_blocks.0.attentions.0.norm.weight",
      "add_embedding.linear_1.weight",
    ]) {
      expect(diffusersToLdmKey(k, SD15_UNET), k).toBeUndefined();
    }
    for (const k of [
      "input_blocks.10.1.norm.weight",
      "output_blocks.2.2.conv.weight",
      "output_blocks.0.1.conv.weight",
      "middle_block.3.in_layers.0.weight",
      "label_emb.0.0.weight",
    ]) {
      expect(ldmToDiffusersKey(k, SD15_UNET), k).toBeUndefined();
    }
  });
});

describe("SD 1.5 UNet forward (full size, zero weights: a shape and flow check)", () => {
  it("runs 8×8 latents through all 32 attention layers once each", async () => {
    // 3.4 GB of float32 weights do not fit the wasm backend's 32-bit heap, so this one test runs on
    // the pure-JS cpu backend (same model code). Zeros cost no time to create: the pages are only
    // touched when read.
    const previous = tf.getBackend();
    await tf.setBackend("cpu");
    const unet = new UNetModel(SD15_UNET, { init: zerosInit });
    try {
      expect(unet.parameterCount()).toBe(859_520_964);
      const layers = unet.attentionLayers();
      expect(layers.length).toBe(32);
      const seen = new Map<string, number[][]>();
      const byLayer = new Map(layers.map(([p, l]) => [l, p]));
      const record: AttentionProcessor = (layer, x, c) => {
        seen.set(byLayer.get(layer)!, [x.shape, c?.shape ?? []]);
        return defaultProcessor(layer, x, c);
      };
      unet.setProcessor(record);
      // with zero weights every block adds nothing, so ε̂ is the output conv's bias at every pixel
      unet.outConv.bias!.value.assign(tf.tensor1d([1, -2, 3, 0.5]));
      await expectNoLeak(() => {
        const [x, ctx] = [tf.randomNormal([1, 8, 8, 4]) as tf.Tensor4D, tf.randomNormal([1, 7, 768]) as tf.Tensor3D];
        const y = unet.forward(x, [999], ctx);
        expect(y.shape).toEqual([1, 8, 8, 4]);
        const d = y.dataSync();
        for (let i = 0; i < d.length; i++) expect(d[i]).toBe([1, -2, 3, 0.5][i % 4]);
        tf.dispose([x, ctx, y]);
      });
      expect(seen.size).toBe(32);
      for (const [p, l] of layers) {
        const [xs, cs] = seen.get(p)!;
        const width = l.queryDim;
        // widths 320/640/1280 live at 8×8, 4×4, 2×2 tokens; the middle block at 1×1
        const tokens = p.startsWith("middle_block") ? 1 : { 320: 64, 640: 16, 1280: 4 }[width];
        expect(xs, p).toEqual([1, tokens, width]);
        expect(cs, p).toEqual(l.isSelfAttention ? [] : [1, 7, 768]);
        expect(l.heads * l.dimHead).toBe(width);
        expect(l.heads).toBe(8);
      }
    } finally {
      unet.resetProcessors();
      unet.dispose();
      await tf.setBackend(previous);
    }
  });
});
