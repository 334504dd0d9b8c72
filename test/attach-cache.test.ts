/**
 * The once-per-forward cross-attention cache of `attachHypernetworks` (src/hypernet/attach.ts):
 * the cached path must compute exactly what A1111's per-layer recomputation computes — outputs,
 * gradients (against the uncached path and a finite difference) — apply the k/v modules only once
 * per forward for the text context, stay off when dropout makes layers differ, and leak nothing.
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attachHypernetworks } from "../src/hypernet/attach";
import { loadHypernetwork } from "../src/hypernet/file";
import { type Hypernetwork, createHypernetwork } from "../src/hypernet/network";
import { zerosInit } from "../src/nn/module";
import { fromJson } from "../src/unet/config";
import { loadUNetWeights } from "../src/unet/load";
import { UNetModel } from "../src/unet/unet";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

let unet: UNetModel;
let a: Hypernetwork;
let x: tf.Tensor4D;
let ctx: tf.Tensor3D;
let probe: tf.Tensor4D;
const t = [10, 700];

beforeAll(async () => {
  await setupBackend();
  unet = new UNetModel(fromJson(JSON.parse(fs.readFileSync(fixture("ldm-tiny.config.json"), "utf8"))), { init: zerosInit });
  loadUNetWeights(unet, fixture("ldm-tiny.unet.safetensors"));
  a = loadHypernetwork(fixture("ldm-a.pt"));
  x = tf.randomNormal([2, 8, 8, 4], 0, 1, "float32", 1) as tf.Tensor4D;
  ctx = tf.randomNormal([2, 5, 40], 0, 1, "float32", 2) as tf.Tensor3D;
  probe = tf.randomNormal([2, 8, 8, 4], 0, 1, "float32", 3) as tf.Tensor4D;
});

afterAll(() => {
  tf.dispose([x, ctx, probe]);
  a.dispose();
  unet.dispose();
});

const forward = (): Float32Array => tf.tidy(() => unet.forward(x, t, ctx).dataSync() as Float32Array);

/** Count network applications (k and v, self and cross) during `fn`. */
function countApplies(net: Hypernetwork, fn: () => void): { cross: number; self: number } {
  const orig = net.apply.bind(net);
  const n = { cross: 0, self: 0 };
  net.apply = (which, c, o) => {
    n[c.shape[c.shape.length - 1] === 40 ? "cross" : "self"]++;
    return orig(which, c, o);
  };
  try {
    fn();
  } finally {
    net.apply = orig;
  }
  return n;
}

describe("cross-attention hypernetwork cache", () => {
  it("gives the same output as per-layer recomputation, with one k and one v application per forward", () => {
    const att = attachHypernetworks(unet, [{ network: a, multiplier: 0.7 }]);
    const crossLayers = unet.attentionLayers().filter(([, l]) => !l.isSelfAttention).length;
    expect(crossLayers).toBeGreaterThan(1);
    att.cacheCrossAttention = false;
    let plain = new Float32Array();
    const uncached = countApplies(a, () => (plain = forward()));
    att.cacheCrossAttention = true;
    let fast = new Float32Array();
    const cached = countApplies(a, () => (fast = forward()));
    expect(uncached.cross).toBe(2 * crossLayers);
    expect(cached.cross).toBe(2);
    expect(cached.self).toBe(uncached.self);
    expectClose(fast, plain, 1e-6);
    att.detach();
  });

  it("gradients match the uncached path and a central finite difference", () => {
    const net = createHypernetwork({ name: "fd", dims: [40, 32, 64], layerStructure: [1, 2, 1], activation: "relu", seed: 5 });
    const att = attachHypernetworks(unet, [net]);
    att.training = true; // no dropout: the cache stays on in training
    expect(att.canCache).toBe(true);
    const vars = net.trainableVariables();
    const loss = (): tf.Scalar => tf.tidy(() => tf.sum(tf.mul(unet.forward(x, t, ctx), probe)) as tf.Scalar);
    const grads = (cache: boolean): Float32Array[] => {
      att.cacheCrossAttention = cache;
      const { value, grads: g } = tf.variableGrads(loss, vars);
      const out = vars.map((v) => g[v.name]!.dataSync() as Float32Array);
      tf.dispose([value, ...Object.values(g)]);
      return out;
    };
    const slow = grads(false);
    const fast = grads(true);
    for (let i = 0; i < vars.length; i++) {
      const scale = Math.max(1e-3, ...slow[i]!.map(Math.abs));
      expectClose(fast[i]!, slow[i]!, 1e-4 * scale);
    }
    // Finite difference along a random direction in the cross-attention (width-40) k module's
    // output weight (its input weight's gradient is scaled by the ~0.01 init of this one).
    const names = net.namedParameters().map(([p]) => p);
    const idx = names.indexOf(names.filter((p) => p.startsWith("40.0.") && p.endsWith("weight")).pop()!);
    const w = vars[idx]!;
    const dir = tf.randomNormal(w.shape, 0, 1, "float32", 9);
    const w0 = w.clone();
    const at = (h: number): number => {
      w.assign(tf.tidy(() => tf.add(w0, tf.mul(dir, h))));
      const l = loss();
      const v = l.dataSync()[0]!;
      l.dispose();
      return v;
    };
    const h = 1e-2;
    const fd = (at(h) - at(-h)) / (2 * h);
    w.assign(w0);
    const analytic = tf.tidy(() => tf.sum(tf.mul(tf.tensor(fast[idx]!, w.shape), dir)).dataSync()[0]!);
    expect(Math.abs(analytic)).toBeGreaterThan(1e-3);
    expect(Math.abs(fd - analytic) / Math.abs(analytic)).toBeLessThan(5e-3);
    tf.dispose([dir, w0]);
    att.detach();
    net.dispose();
  });

  it("is bypassed when dropout is active in training (each layer draws its own mask)", () => {
    const net = createHypernetwork({
      name: "drop",
      dims: [40],
      layerStructure: [1, 2, 1],
      activation: "relu",
      useDropout: true,
      dropoutStructure: [0, 0.3, 0],
      seed: 6,
    });
    const att = attachHypernetworks(unet, [net]);
    att.training = true;
    expect(att.canCache).toBe(false);
    const crossLayers = unet.attentionLayers().filter(([, l]) => !l.isSelfAttention).length;
    const n = countApplies(net, () => void forward());
    expect(n.cross).toBe(2 * crossLayers);
    att.training = false; // eval: dropout off, cache back on
    expect(att.canCache).toBe(true);
    att.detach();
    net.dispose();
  });

  it("forward, gradient and detach leak no tensors; the caller's context survives", async () => {
    await expectNoLeak(() => {
      const att = attachHypernetworks(unet, [a]);
      forward();
      const net = createHypernetwork({ name: "leak", dims: [40, 32], activation: "relu", seed: 1 });
      const att2 = attachHypernetworks(unet, [net]);
      att2.training = true;
      const { value, grads } = tf.variableGrads(
        () => tf.tidy(() => tf.mean(unet.forward(x, t, ctx)) as tf.Scalar),
        net.trainableVariables(),
      );
      tf.dispose([value, ...Object.values(grads)]);
      att2.detach();
      att.detach();
      net.dispose();
    });
    expect(ctx.isDisposed).toBe(false);
  });
});
