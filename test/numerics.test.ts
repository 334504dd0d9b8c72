/**
 * Numerics at the edges: fp16 hypernetwork files against their fp32 equivalents, extreme
 * multipliers (±10) on a module and on the ldm-tiny UNet, and empty / 300-token prompts through the
 * CLIP tokenizer fixture and a tiny text tower. See RELIABILITY.md, "Numerics".
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attachHypernetworks } from "../src/hypernet/attach";
import { loadHypernetwork, readHypernetworkFile, saveHypernetwork, toNetwork, writeHypernetworkFile } from "../src/hypernet/file";
import { createHypernetwork } from "../src/hypernet/network";
import { floatToHalf, halfToFloat, type HostTensor } from "../src/io/host-tensor";
import { readSafetensors } from "../src/io/safetensors";
import { zerosInit } from "../src/nn/module";
import { ClipTextModel, tinyClipTextConfig } from "../src/text/clip";
import { ClipTokenizer } from "../src/text/tokenizer";
import { fromJson } from "../src/unet/config";
import { loadUNetWeights } from "../src/unet/load";
import { UNetModel } from "../src/unet/unet";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "numerics-"));
beforeAll(setupBackend);
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const allFinite = (a: ArrayLike<number>): boolean => Array.prototype.every.call(a, (v: number) => Number.isFinite(v));
const maxAbs = (a: ArrayLike<number>): number => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
};
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
};

describe("fp16 hypernetwork files", () => {
  it("hn-half.pt widened to fp32 gives the same outputs as the fp16 file, which match PyTorch", async () => {
    const half = readHypernetworkFile(fixture("hn-half.pt"));
    const io = readSafetensors(fixture("hn-half.io.safetensors")).tensors;
    // fp16 → fp32 is exact, so an fp32 copy of the file must compute bit-for-bit the same.
    const f32File = path.join(tmp, "half-as-f32.pt");
    writeHypernetworkFile(half, f32File, { dtype: "F32" });
    const f32 = readHypernetworkFile(f32File);
    expect(f32.weights.get(16)![0].get("linear.0.weight")!.dtype).toBe("F32");
    const a = toNetwork(half, { trainable: false });
    const b = toNetwork(f32, { trainable: false });
    for (const dim of a.dims) {
      const xs = io.get(`x.${dim}`)!;
      for (const m of ["1.0", "0.6"]) {
        await expectNoLeak(() => {
          tf.tidy(() => {
            const x = tf.tensor(xs.data as Float32Array, xs.shape);
            const ya = a
              .pair(dim)![0]
              .forward(x, { multiplier: Number(m) })
              .dataSync();
            const yb = b
              .pair(dim)![0]
              .forward(x, { multiplier: Number(m) })
              .dataSync();
            expect(maxDiff(ya, yb)).toBe(0);
            expectClose(ya, io.get(`k.${dim}.${m}`)!.data, 1e-5);
          });
        });
      }
    }
    a.dispose();
    b.dispose();
  });

  it("an fp32 network saved as fp16 stays within fp16 rounding of the fp32 outputs", () => {
    const net = createHypernetwork({ name: "n", dims: [32], layerStructure: [1, 2, 1], activation: "relu", seed: 3 });
    const file = path.join(tmp, "n16.safetensors");
    saveHypernetwork(net, file, { dtype: "F16" });
    const stored = readHypernetworkFile(file);
    // Every stored weight is the round-to-nearest-even fp16 value of the fp32 weight: relative error
    // ≤ 2⁻¹¹, or ≤ 2⁻²⁵ absolute below fp16's normal range (subnormal spacing 2⁻²⁴).
    const w32 = net
      .pair(32)![0]
      .namedParameters()
      .find(([k]) => k === "linear.0.weight")![1]
      .toTorchSync() as HostTensor;
    const w16 = stored.weights.get(32)![0].get("linear.0.weight")!;
    expect(w16.dtype).toBe("F16");
    expect([...w16.data]).toEqual([...w32.data].map((v) => halfToFloat(floatToHalf(v))));
    for (let i = 0; i < w32.data.length; i++)
      expect(Math.abs(w16.data[i]! - w32.data[i]!)).toBeLessThanOrEqual(Math.max(Math.abs(w32.data[i]!) * 2 ** -11, 2 ** -25));
    const net16 = toNetwork(stored, { trainable: false });
    tf.tidy(() => {
      const x = tf.randomNormal([2, 7, 32], 0, 1, "float32", 5);
      const b32 = net.pair(32)![1].branch(x).dataSync();
      const b16 = net16.pair(32)![1].branch(x).dataSync();
      // Two layers of 2⁻¹¹ relative weight error: the branch moves by well under 1% of its size …
      expect(maxDiff(b32, b16)).toBeLessThan(1e-2 * maxAbs(b32));
      // … but it does move: the rounding is real.
      expect(maxDiff(b32, b16)).toBeGreaterThan(0);
    });
    net.dispose();
    net16.dispose();
  });
});

describe("extreme multipliers", () => {
  it("m = ±10 gives finite x + m·mlp(x): exactly our own branch, and PyTorch's mlp to 1e-4", async () => {
    const net = loadHypernetwork(fixture("hn-plain121.pt"));
    const io = readSafetensors(fixture("hn-plain121.io.safetensors")).tensors;
    for (const dim of net.dims) {
      const xs = io.get(`x.${dim}`)!;
      // PyTorch's mlp(x) = (x + mlp(x)·1) − x, from the fixture.
      const k1 = io.get(`k.${dim}.1.0`)!.data;
      const mlpTorch = Float32Array.from(k1, (v, i) => v - xs.data[i]!);
      for (const m of [-10, 10]) {
        await expectNoLeak(() =>
          tf.tidy(() => {
            const x = tf.tensor(xs.data as Float32Array, xs.shape);
            const mod = net.pair(dim)![0];
            const y = mod.forward(x, { multiplier: m }).dataSync();
            expect(allFinite(y)).toBe(true);
            const own = tf.add(x, tf.mul(mod.branch(x), m)).dataSync();
            expect(maxDiff(y, own)).toBe(0);
            expectClose(
              y,
              Float32Array.from(mlpTorch, (v, i) => xs.data[i]! + m * v),
              1e-4,
            );
          }),
        );
      }
    }
    net.dispose();
  });

  it("ldm-a attached to the ldm-tiny UNet at multiplier ±10 gives finite outputs", async () => {
    const unet = new UNetModel(fromJson(JSON.parse(fs.readFileSync(fixture("ldm-tiny.config.json"), "utf8"))), { init: zerosInit });
    loadUNetWeights(unet, fixture("ldm-tiny.unet.safetensors"));
    const io = readSafetensors(fixture("ldm-tiny.io.safetensors")).tensors;
    const xs = io.get("x")!;
    const x = tf.tidy(() =>
      tf.tensor4d(xs.data as Float32Array, xs.shape as [number, number, number, number]).transpose<tf.Tensor4D>([0, 2, 3, 1]),
    );
    const ctx = tf.tensor3d(io.get("context")!.data as Float32Array, io.get("context")!.shape as [number, number, number]);
    const t = [...io.get("t")!.data];
    const net = loadHypernetwork(fixture("ldm-a.pt"));
    const att = attachHypernetworks(unet, [{ network: net, multiplier: 10 }]);
    const run = () => tf.tidy(() => unet.forward(x, t, ctx).transpose([0, 3, 1, 2]).dataSync() as Float32Array);
    const plus = await expectNoLeak(run);
    att.setMultiplier(0, -10);
    const minus = await expectNoLeak(run);
    att.detach();
    const plain = run();
    for (const out of [plus, minus]) {
      expect(out.length).toBe(xs.data.length);
      expect(allFinite(out)).toBe(true);
    }
    // The plain output still matches PyTorch after detaching, and ±10 really changed the result.
    expectClose(plain, io.get("eps")!.data, 1e-4);
    expect(maxDiff(plus, plain)).toBeGreaterThan(maxDiff(io.get("eps.a.1")!.data, plain));
    expect(maxDiff(plus, minus)).toBeGreaterThan(0);
    net.dispose();
    unet.dispose();
    x.dispose();
    ctx.dispose();
  });
});

describe("empty and 300-token prompts", () => {
  const tok = ClipTokenizer.fromFiles(fixture("tokenizer"));
  const prompt300 = "a photo of a cat, ".repeat(50); // 6 tokens × 50

  it("the tokenizer frames them into 77·k ids", () => {
    expect(tok.tokenize(prompt300).length).toBe(300);
    const empty = tok.encode("");
    expect(empty.chunks).toBe(1);
    expect(empty.ids[0]).toEqual([42, ...Array(76).fill(43)]);
    expect(empty.tokenCounts).toEqual([0]);
    // Without comma backtracking: ⌈300 / 75⌉ = 4 windows of BOS + 75 tokens + EOS.
    const plain = tok.encode(prompt300, { commaBacktrack: 0 });
    expect(plain.chunks).toBe(4);
    expect(plain.ids[0]!.length).toBe(4 * 77);
    for (let w = 0; w < 4; w++) {
      const win = plain.ids[0]!.slice(77 * w, 77 * (w + 1));
      expect(win[0]).toBe(42);
      expect(win[76]).toBe(43);
      expect(win.slice(1, 76)).not.toContain(43);
    }
    // With A1111's backtrack the windows end at commas: 75 is not a multiple of 6, so each window
    // ends at the last comma (72 tokens) and 300 tokens need 5 windows.
    const bt = tok.encode(prompt300);
    expect(bt.chunks).toBe(5);
    expect(bt.ids[0]!.length).toBe(5 * 77);
    expect(bt.ids[0]![72]).toBe(27); // "," closes the first window's content
    expect(bt.ids[0]![73]).toBe(43);
    // Batched with the empty prompt, both rows get the same number of windows.
    const both = tok.encode(["", prompt300]);
    expect(both.ids.map((r) => r.length)).toEqual([5 * 77, 5 * 77]);
  });

  it("a tiny ClipTextModel encodes them to [B, 77·k, width] with finite values, window by window", async () => {
    const model = new ClipTextModel(tinyClipTextConfig({ vocabSize: 44 }));
    const batch = tok.encode(["", prompt300]);
    const out = await expectNoLeak(() => {
      const t = model.encode(batch.ids);
      const v = { shape: t.shape, data: t.dataSync() as Float32Array };
      t.dispose();
      return v;
    });
    expect(out.shape).toEqual([2, 5 * 77, 32]);
    expect(allFinite(out.data)).toBe(true);
    // Each window is encoded on its own: window 2 of row 1 equals that window encoded alone.
    const alone = tf.tidy(() => model.encode([batch.ids[1]!.slice(2 * 77, 3 * 77)]).dataSync() as Float32Array);
    const rowLen = 5 * 77 * 32;
    expectClose(out.data.subarray(rowLen + 2 * 77 * 32, rowLen + 3 * 77 * 32), alone, 1e-5);
    // The empty prompt on its own is one window: [1, 77, width], the same as its first window in the batch.
    const empty = tf.tidy(() => model.encode(tok.encode("").ids).dataSync() as Float32Array);
    expect(empty.length).toBe(77 * 32);
    expect(allFinite(empty)).toBe(true);
    expectClose(out.data.subarray(0, 77 * 32), empty, 1e-5);
    model.dispose();
  });
});
