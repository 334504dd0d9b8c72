/**
 * MonkeyPatch's initialisation options on numbers: Normal's std (Linear and LayerNorm weights), the
 * seed (same seed, same weights), and the zero-initialised last layer (the fresh network is the
 * identity: the ldm-tiny UNet with it attached at multiplier 1 gives the base model's output exactly).
 */
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ACTIVATION_NAMES, applyActivation, checkActivation } from "../src/hypernet/activations";
import { attachHypernetworks } from "../src/hypernet/attach";
import { ZERO_AT_ZERO } from "../src/hypernet/module";
import { type CreateOptions, createHypernetwork, type Hypernetwork } from "../src/hypernet/network";
import { type LdmTiny, loadLdmTiny } from "./helpers/ldm-tiny";
import { expectNoLeak, setupBackend } from "./helpers/tf";

let tiny: LdmTiny;
beforeAll(async () => {
  await setupBackend();
  tiny = loadLdmTiny();
});
afterAll(() => tiny.dispose());

/** Values of one parameter (by its path in the k module of `dim`). */
function values(net: Hypernetwork, dim: number, key: string, which = 0): Float32Array {
  const p = net
    .pair(dim)!
    [which]!.namedParameters()
    .find(([k]) => k === key);
  if (!p) throw new Error(`no ${key}`);
  return p[1].value.dataSync() as Float32Array;
}

function stats(a: Float32Array): { mean: number; std: number; maxAbs: number } {
  let s = 0;
  let s2 = 0;
  let m = 0;
  for (const x of a) {
    s += x;
    s2 += x * x;
    m = Math.max(m, Math.abs(x));
  }
  const mean = s / a.length;
  return { mean, std: Math.sqrt(s2 / a.length - mean * mean), maxAbs: m };
}

const make = (o: Partial<CreateOptions>): Hypernetwork => createHypernetwork({ name: "init", dims: [320], ...o });

describe("normalStd", () => {
  it("Normal weights have the asked std (default 0.01); biases are 0", () => {
    for (const [std, want] of [
      [undefined, 0.01],
      [0.05, 0.05],
      [0.002, 0.002],
    ] as const) {
      const net = make({ normalStd: std });
      const w = stats(values(net, 320, "linear.0.weight")); // 640×320 = 204,800 draws
      expect(Math.abs(w.std / want - 1)).toBeLessThan(0.02);
      expect(Math.abs(w.mean)).toBeLessThan(want * 0.02);
      expect(stats(values(net, 320, "linear.0.bias")).maxAbs).toBe(0);
      net.dispose();
    }
  });

  it("std 0 gives all-zero weights", () => {
    const net = make({ normalStd: 0 });
    expect(stats(values(net, 320, "linear.0.weight")).maxAbs).toBe(0);
    expect(stats(values(net, 320, "linear.1.weight")).maxAbs).toBe(0);
    net.dispose();
  });

  it("sets LayerNorm weights under every scheme (as MonkeyPatch), and leaves Xavier's Linear weights alone", () => {
    const net = make({ weightInit: "XavierUniform", layerNorm: true, activation: "relu", normalStd: 0.1 });
    // Sequential: Linear(0), ReLU(1), LN(2), Linear(3), LN(4)
    const ln = stats(values(net, 320, "linear.2.weight")); // 640 draws
    expect(Math.abs(ln.std / 0.1 - 1)).toBeLessThan(0.15);
    const lin = stats(values(net, 320, "linear.0.weight"));
    const bound = Math.sqrt(6 / (320 + 640)); // 0.0791
    expect(lin.maxAbs).toBeLessThanOrEqual(bound);
    expect(Math.abs(lin.std / (bound / Math.sqrt(3)) - 1)).toBeLessThan(0.02); // U(-b, b) has std b/√3
    net.dispose();
  });

  it("refuses a negative or non-finite std", () => {
    expect(() => make({ normalStd: -0.01 })).toThrow(/normalStd must be a finite number ≥ 0, got -0.01/);
    expect(() => make({ normalStd: Number.NaN })).toThrow(/normalStd/);
  });
});

describe("seed", () => {
  it("the same seed gives the same weights; another seed other weights; k and v differ", () => {
    const a = make({ seed: 7, normalStd: 0.03 });
    const b = make({ seed: 7, normalStd: 0.03 });
    const c = make({ seed: 8, normalStd: 0.03 });
    for (const key of ["linear.0.weight", "linear.1.weight"]) {
      expect(values(a, 320, key)).toEqual(values(b, 320, key));
      expect(values(a, 320, key, 1)).toEqual(values(b, 320, key, 1));
      expect(values(a, 320, key)).not.toEqual(values(c, 320, key));
      expect(values(a, 320, key)).not.toEqual(values(a, 320, key, 1));
    }
    for (const n of [a, b, c]) n.dispose();
  });

  it("refuses a seed that is not a whole number", () => {
    expect(() => make({ seed: 1.5 })).toThrow(/seed must be a whole number, got 1.5/);
  });
});

describe("zeroLastLayer", () => {
  it("zeroes the last Linear only; the earlier ones keep their init", () => {
    const net = make({ zeroLastLayer: true, layerStructure: [1, 2, 2, 1], activation: "relu", weightInit: "KaimingUniform" });
    // Linear(0), ReLU(1), Linear(2), ReLU(3), Linear(4)
    expect(stats(values(net, 320, "linear.4.weight")).maxAbs).toBe(0);
    expect(stats(values(net, 320, "linear.4.bias", 1)).maxAbs).toBe(0);
    expect(stats(values(net, 320, "linear.0.weight")).std).toBeGreaterThan(0.01);
    expect(stats(values(net, 320, "linear.2.weight", 1)).std).toBeGreaterThan(0.01);
    net.dispose();
  });

  it("the fresh network is the identity: the UNet at multiplier 1 equals the base model exactly", () => {
    const base = tiny.eps();
    for (const o of [
      { weightInit: "KaimingNormal", activation: "relu" },
      { weightInit: "XavierUniform", activation: "sigmoid", layerNorm: true, activateOutput: true },
      { weightInit: "Normal", activation: "swish", useDropout: true, dropoutStructure: [0, 0.2, 0] },
    ] as Array<Partial<CreateOptions>>) {
      const net = createHypernetwork({ name: "id", dims: tiny.unet.contextDims, zeroLastLayer: true, normalStd: 0.5, ...o });
      const att = attachHypernetworks(tiny.unet, [{ network: net, multiplier: 1 }]);
      expect(tiny.eps()).toEqual(base);
      att.detach();
      // Without the option the same (deliberately large) init changes the output.
      const plain = createHypernetwork({ name: "id", dims: tiny.unet.contextDims, normalStd: 0.5, ...o });
      const att2 = attachHypernetworks(tiny.unet, [{ network: plain, multiplier: 1 }]);
      const changed = tiny.eps();
      expect(Math.max(...changed.map((v, i) => Math.abs(v - base[i]!)))).toBeGreaterThan(1e-3);
      att2.detach();
      net.dispose();
      plain.dispose();
    }
  });

  it("the zeroed layer still gets a gradient, so training moves it off the identity", () => {
    const net = make({ zeroLastLayer: true, activation: "relu" });
    const [k] = net.pair(320)!;
    const x = tf.randomNormal([2, 3, 320], 0, 1, "float32", 5);
    const last = k.namedParameters().find(([n]) => n === "linear.2.weight")![1].value;
    const { value, grads } = tf.variableGrads(() => tf.sum(tf.square(k.forward(x, { training: true }))), [last]);
    expect(tf.tidy(() => grads[last.name]!.abs().max().dataSync()[0]!)).toBeGreaterThan(0);
    tf.dispose([x, value, ...Object.values(grads)]);
    net.dispose();
  });

  it("is refused where an output activation is not 0 at 0 and no LayerNorm follows", () => {
    expect(() => make({ zeroLastLayer: true, activation: "sigmoid", activateOutput: true })).toThrow(
      /zeroLastLayer: the output activation sigmoid is not 0 at 0/,
    );
    // The refusal leaves no tensors behind.
    return expectNoLeak(() => {
      expect(() => make({ zeroLastLayer: true, activation: "softplus", activateOutput: true })).toThrow(/softplus/);
    });
  });

  it("ZERO_AT_ZERO lists exactly the usable activations with f(0) = 0", () => {
    for (const name of ACTIVATION_NAMES) {
      let usable = true;
      try {
        checkActivation(name);
      } catch {
        usable = false;
      }
      if (!usable) continue;
      if (name === "prelu") {
        expect(ZERO_AT_ZERO.has(name)).toBe(true); // max(0, 0) + a·min(0, 0) = 0 for any slope a
        continue;
      }
      const at0 = tf.tidy(() => Math.max(...(tf.abs(applyActivation(name, tf.zeros([2, 3, 4]))).dataSync() as Float32Array)));
      expect(ZERO_AT_ZERO.has(name), `${name}(0) = ${at0}`).toBe(at0 === 0);
    }
  });

  it("creating and disposing leaves no tensors", () =>
    expectNoLeak(() => make({ zeroLastLayer: true, layerNorm: true, normalStd: 0.02, seed: 3 }).dispose()));
});
