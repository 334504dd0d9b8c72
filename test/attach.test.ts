/**
 * Hypernetworks attached to a UNet through the attention processor, against PyTorch: the
 * ldm-tiny fixture's outputs with ldm-a.pt / ldm-b.pt attached (fixtures README), multiplier 0,
 * detach, training mode, timestep gates and leaks.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attachHypernetworks } from "../src/hypernet/attach";
import { loadHypernetwork } from "../src/hypernet/file";
import { type Hypernetwork, createHypernetwork } from "../src/hypernet/network";
import type { HostTensor } from "../src/io/host-tensor";
import { readSafetensors } from "../src/io/safetensors";
import { zerosInit } from "../src/nn/module";
import { fromJson } from "../src/unet/config";
import { loadUNetWeights } from "../src/unet/load";
import { UNetModel } from "../src/unet/unet";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

let unet: UNetModel;
let io: Map<string, HostTensor>;
let x: tf.Tensor4D;
let t: number[];
let ctx: tf.Tensor3D;
let a: Hypernetwork;
let b: Hypernetwork;

/** Run the UNet on the fixture inputs; NCHW floats like the fixture. */
function eps(): Float32Array {
  return tf.tidy(() => unet.forward(x, t, ctx).transpose([0, 3, 1, 2]).dataSync() as Float32Array);
}

beforeAll(async () => {
  await setupBackend();
  unet = new UNetModel(fromJson(JSON.parse(fs.readFileSync(fixture("ldm-tiny.config.json"), "utf8"))), { init: zerosInit });
  loadUNetWeights(unet, fixture("ldm-tiny.unet.safetensors"));
  io = readSafetensors(fixture("ldm-tiny.io.safetensors")).tensors;
  const xs = io.get("x")!;
  x = tf.tidy(() => tf.tensor4d(xs.data as Float32Array, xs.shape as [number, number, number, number]).transpose([0, 2, 3, 1]));
  t = [...io.get("t")!.data];
  ctx = tf.tensor3d(io.get("context")!.data as Float32Array, io.get("context")!.shape as [number, number, number]);
  a = loadHypernetwork(fixture("ldm-a.pt"));
  b = loadHypernetwork(fixture("ldm-b.pt"));
});

afterAll(() => {
  for (const v of [x, ctx]) v.dispose();
  a.dispose();
  b.dispose();
  unet.dispose();
});

describe("attaching hypernetworks (PyTorch fixture, 1e-4)", () => {
  it("the fixture networks cover self- and cross-attention widths", () => {
    const widths = new Set(unet.attentionLayers().map(([, l]) => l.contextDim));
    expect(a.dims.some((d) => widths.has(d))).toBe(true);
    expect(widths.has(40)).toBe(true); // the context width: cross-attention
  });

  it("plain UNet matches eps", () => {
    expectClose(eps(), io.get("eps")!.data, 1e-4);
  });

  it("ldm-a at multiplier 1 and 0.5", () => {
    const att = attachHypernetworks(unet, [{ network: a, multiplier: 1 }]);
    expectClose(eps(), io.get("eps.a.1")!.data, 1e-4);
    att.setMultiplier("ldm-a", 0.5);
    expect(att.stack[0]!.multiplier).toBe(0.5);
    expectClose(eps(), io.get("eps.a.0.5")!.data, 1e-4);
    att.detach();
  });

  it("ldm-a (1) then ldm-b (0.8), stacked in order", () => {
    const att = attachHypernetworks(unet, [
      { network: a, multiplier: 1 },
      { network: b, multiplier: 0.8 },
    ]);
    expectClose(eps(), io.get("eps.a1.b0.8")!.data, 1e-4);
    att.detach();
    // order matters: b then a is a different function
    const rev = attachHypernetworks(unet, [
      { network: b, multiplier: 0.8 },
      { network: a, multiplier: 1 },
    ]);
    const diff = eps().reduce((m, v, i) => Math.max(m, Math.abs(v - io.get("eps.a1.b0.8")!.data[i]!)), 0);
    expect(diff).toBeGreaterThan(1e-4);
    rev.detach();
  });

  it("multiplier 0 gives the plain UNet's output; detach gives it bit-exactly", () => {
    const plain = eps();
    const att = attachHypernetworks(unet, [{ network: a, multiplier: 0 }]);
    expectClose(eps(), plain, 1e-6);
    att.setMultiplier(0, 1);
    expect(Math.abs(eps()[0]! - plain[0]!) + Math.abs(eps()[100]! - plain[100]!)).toBeGreaterThan(0);
    att.detach();
    expect([...eps()]).toEqual([...plain]);
    expect(att.isAttached).toBe(false);
  });

  it("the hypernetwork's weights never join the UNet's parameters", () => {
    const before = unet.namedParameters().length;
    const att = attachHypernetworks(unet, [a]);
    expect(unet.namedParameters().length).toBe(before);
    expect(unet.trainableVariables().length).toBe(0);
    att.detach();
  });

  it("training mode forces multiplier 1 and seeds dropout reproducibly", () => {
    const att = attachHypernetworks(unet, [{ network: a, multiplier: 0.25 }]);
    att.training = true;
    att.setSeed(3);
    const t1 = eps();
    expectClose(t1, io.get("eps.a.1")!.data, 1e-4); // ldm-a has no dropout, so training = multiplier 1
    att.detach();
  });

  it("attach, forward and detach leak no tensors", async () => {
    await expectNoLeak(() => {
      const att = attachHypernetworks(unet, [a, { network: b, multiplier: 0.3 }]);
      eps();
      att.detach();
    });
  });
});

/** One item of the fixture batch through the UNet alone (its own timestep), NCHW floats. */
function epsItem(i: number): Float32Array {
  return tf.tidy(() => unet.forward(x.slice(i, 1), [t[i]!], ctx.slice(i, 1)).transpose([0, 3, 1, 2]).dataSync() as Float32Array);
}

/** Item i's part of a batch-of-2 fixture array. */
function fixtureItem(key: string, i: number): Float32Array {
  const all = io.get(key)!.data as Float32Array;
  const n = all.length / 2;
  return all.slice(i * n, (i + 1) * n);
}

describe("timestep gates (PyTorch fixture; the fixture batch is at t = 17 and 640)", () => {
  it("a gated network applies exactly in calls whose timestep is in [min, max), and is absent elsewhere", () => {
    expect(t).toEqual([17, 640]);
    const att = attachHypernetworks(unet, [{ network: a, multiplier: 1, timesteps: [0, 100] }]);
    expectClose(epsItem(0), fixtureItem("eps.a.1", 0), 1e-4); // t = 17: inside
    expectClose(epsItem(1), fixtureItem("eps", 1), 1e-4); // t = 640: outside, the plain UNet
    att.stack[0]!.timesteps = [640, 641]; // min is inclusive
    expectClose(epsItem(1), fixtureItem("eps.a.1", 1), 1e-4);
    att.stack[0]!.timesteps = [600, 640]; // max is exclusive
    expectClose(epsItem(1), fixtureItem("eps", 1), 1e-4);
    att.stack[0]!.timesteps = [0, 1000]; // the whole batch inside: as ungated
    expectClose(eps(), io.get("eps.a.1")!.data, 1e-4);
    att.stack[0]!.timesteps = [700, 1000]; // the whole batch outside
    expectClose(eps(), io.get("eps")!.data, 1e-4);
    att.detach();
  });

  it("in a stack only the gated entry drops out; the other still applies", () => {
    const att = attachHypernetworks(unet, [
      { network: a, multiplier: 1 },
      { network: b, multiplier: 0.8, timesteps: [700, 1000] },
    ]);
    expectClose(eps(), io.get("eps.a.1")!.data, 1e-4);
    att.stack[1]!.timesteps = [0, 1000];
    expectClose(eps(), io.get("eps.a1.b0.8")!.data, 1e-4);
    att.detach();
  });

  it("refuses a call that mixes timesteps across the gate, timesteps given as a tensor, and malformed gates", async () => {
    const att = attachHypernetworks(unet, [{ network: a, multiplier: 1, timesteps: [0, 100] }]);
    expect(() => eps()).toThrow(/gated to timesteps \[0, 100\) but one UNet call mixes timesteps inside and outside that range \(17–640\)/);
    const tt = tf.tensor1d(t);
    expect(() => tf.tidy(() => unet.forward(x, tt, ctx))).toThrow(/timesteps as a tensor/);
    tt.dispose();
    att.detach();
    expect(() => attachHypernetworks(unet, [{ network: a, multiplier: 1, timesteps: [500, 100] }])).toThrow(
      /timesteps must be \[min, max\) with min < max/,
    );
    // the refused calls left nothing behind, and a gated attachment leaks nothing either
    await expectNoLeak(() => {
      const g = attachHypernetworks(unet, [{ network: a, multiplier: 1, timesteps: [0, 100] }]);
      epsItem(0);
      epsItem(1);
      g.detach();
    });
  });
});

describe("widths checked against the model", () => {
  it("contextDims lists each attention layer's context width once, ascending", () => {
    const byHand = [...new Set(unet.attentionLayers().map(([, l]) => l.contextDim))].sort((p, q) => p - q);
    expect(unet.contextDims).toEqual(byHand);
    expect(unet.contextDims).toContain(40); // the text width of the fixture's cross-attention
  });

  it("refuses a network none of whose widths the model uses, naming the widths it has (nothing attached)", () => {
    const sd = createHypernetwork({ name: "sd-widths", dims: [768, 320, 640, 1280] });
    const before = unet.getProcessors();
    expect(() => attachHypernetworks(unet, [sd])).toThrow(
      new RegExp(`widths \\[768, 320, 640, 1280\\].*use widths \\[${unet.contextDims.join(", ")}\\].*dims: base.contextDims`),
    );
    const after = unet.getProcessors();
    for (const [p, proc] of before) expect(after.get(p)).toBe(proc);
    sd.dispose();
  });

  it("warns once per network about widths the model never calls, and still applies the others", () => {
    const dims = [...unet.contextDims, 1024];
    const net = createHypernetwork({ name: "extra-1024", dims, seed: 3 });
    const warnings: string[] = [];
    const plain = eps();
    const first = attachHypernetworks(unet, [net], { onWarning: (m) => warnings.push(m) });
    const withNet = eps();
    first.detach();
    expect(Math.max(...withNet.map((v, i) => Math.abs(v - plain[i]!)))).toBeGreaterThan(1e-3);
    attachHypernetworks(unet, [net], { onWarning: (m) => warnings.push(m) }).detach();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/"extra-1024".*widths \[1024\] are never used/);
    net.dispose();
  });

  it('createHypernetwork({ dims: "all" }, model) takes the model\'s widths; without a model it says what to pass', () => {
    const net = createHypernetwork({ name: "fits", dims: "all" }, unet);
    expect(net.dims).toEqual(unet.contextDims);
    net.dispose();
    expect(() => createHypernetwork({ name: "x", dims: "all" })).toThrow(/needs the model/);
  });
});
