import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { ACTIVATION_NAMES, applyActivation, checkActivation } from "../src/hypernet/activations";
import { HypernetworkModule, planLayers } from "../src/hypernet/module";
import { createHypernetwork, effectiveDropoutStructure } from "../src/hypernet/network";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

const keysOf = (m: HypernetworkModule): string[] => m.namedParameters().map(([k, p]) => `${k} [${p.torchShape.join(",")}]`);

describe("layer plan (spec §1.3 table, dim 768)", () => {
  const base = { layerNorm: false, dropoutStructure: [0, 0, 0], activateOutput: false };
  it("1,2,1 linear: Linear, Linear", () => {
    const m = new HypernetworkModule(768, { ...base, layerStructure: [1, 2, 1], activation: "linear" });
    expect(keysOf(m)).toEqual(["linear.0.weight [1536,768]", "linear.0.bias [1536]", "linear.1.weight [768,1536]", "linear.1.bias [768]"]);
    m.dispose();
  });
  it("1,2,1 relu: Linear, Act, Linear", () => {
    const m = new HypernetworkModule(768, { ...base, layerStructure: [1, 2, 1], activation: "relu" });
    expect(keysOf(m)).toEqual(["linear.0.weight [1536,768]", "linear.0.bias [1536]", "linear.2.weight [768,1536]", "linear.2.bias [768]"]);
    m.dispose();
  });
  it("1,2,1 relu LN dropout 0,0.3,0: Linear, Act, LN, Dropout, Linear, LN", () => {
    const plan = planLayers(768, {
      layerStructure: [1, 2, 1],
      activation: "relu",
      layerNorm: true,
      dropoutStructure: [0, 0.3, 0],
      activateOutput: false,
    });
    expect(plan.map((p) => `${p.index}:${p.kind}`)).toEqual([
      "0:linear",
      "1:activation",
      "2:layernorm",
      "3:dropout",
      "4:linear",
      "5:layernorm",
    ]);
  });
  it("1,2,2,1 swish LN 0,0.05,0.15,0", () => {
    const plan = planLayers(768, {
      layerStructure: [1, 2, 2, 1],
      activation: "swish",
      layerNorm: true,
      dropoutStructure: [0, 0.05, 0.15, 0],
      activateOutput: false,
    });
    const params = plan.filter((p) => p.kind === "linear" || p.kind === "layernorm").map((p) => p.index);
    expect(params).toEqual([0, 2, 4, 6, 8, 9]);
  });
  it("1,2,1 relu activate_output: Linear, Act, Linear, Act", () => {
    const plan = planLayers(768, { ...base, layerStructure: [1, 2, 1], activation: "relu", activateOutput: true });
    expect(plan.map((p) => p.kind)).toEqual(["linear", "activation", "linear", "activation"]);
  });
  it("fractional multipliers are truncated like int()", () => {
    const plan = planLayers(768, { ...base, layerStructure: [1, 1.5, 1], activation: "linear" });
    expect(plan[0]).toMatchObject({ inFeatures: 768, outFeatures: 1152 });
    const odd = planLayers(15, { ...base, layerStructure: [1, 0.5, 1], activation: "linear" });
    expect(odd[0]).toMatchObject({ outFeatures: 7 });
  });
  it("refuses structures A1111 asserts against", () => {
    expect(() => planLayers(8, { ...base, layerStructure: [2, 1], activation: "linear" })).toThrow(/start and end with 1/);
    expect(() => planLayers(8, { ...base, layerStructure: [1, 2, 1], dropoutStructure: [0, 1, 0], activation: "linear" })).toThrow(
      /between 0 and 1/,
    );
  });
});

describe("dropout structure (A1111 parse_dropout_structure)", () => {
  it("legacy derivation", () => {
    expect(effectiveDropoutStructure([1, 2, 1], false, false)).toEqual([0, 0, 0]);
    expect(effectiveDropoutStructure([1, 2, 1], true, false)).toEqual([0, 0, 0]);
    expect(effectiveDropoutStructure([1, 2, 1], true, true)).toEqual([0, 0.3, 0]);
    expect(effectiveDropoutStructure([1, 2, 2, 1], true, false)).toEqual([0, 0.3, 0, 0]);
    expect(effectiveDropoutStructure([1, 2, 2, 1], true, true)).toEqual([0, 0.3, 0.3, 0]);
    expect(effectiveDropoutStructure([1, 2, 1], false, false, [0, 0.1, 0])).toEqual([0, 0.1, 0]);
  });
});

describe("activations", () => {
  const xs = [-4, -1, -0.25, 0, 0.5, 2, 7];
  const run = (name: string, x = xs): number[] =>
    tf.tidy(() => [...(applyActivation(checkActivation(name), tf.tensor1d(x)).dataSync() as Float32Array)]);
  it("match the PyTorch definitions (hand-computed)", () => {
    const relu6 = (v: number): number => Math.min(Math.max(v, 0), 6);
    const table: Record<string, (v: number) => number> = {
      relu: (v) => Math.max(v, 0),
      leakyrelu: (v) => (v >= 0 ? v : 0.01 * v),
      elu: (v) => (v > 0 ? v : Math.exp(v) - 1),
      swish: (v) => (v * relu6(v + 3)) / 6, // Hardswish, not SiLU
      hardsigmoid: (v) => relu6(v + 3) / 6,
      tanh: Math.tanh,
      sigmoid: (v) => 1 / (1 + Math.exp(-v)),
      silu: (v) => v / (1 + Math.exp(-v)),
      mish: (v) => v * Math.tanh(Math.log1p(Math.exp(v))),
      hardtanh: (v) => Math.min(Math.max(v, -1), 1),
      relu6,
      rrelu: (v) => (v >= 0 ? v : ((1 / 8 + 1 / 3) / 2) * v), // eval-mode slope
      hardshrink: (v) => (Math.abs(v) > 0.5 ? v : 0),
      softshrink: (v) => (v > 0.5 ? v - 0.5 : v < -0.5 ? v + 0.5 : 0),
      logsigmoid: (v) => -Math.log1p(Math.exp(-v)),
      softplus: (v) => Math.log1p(Math.exp(v)),
      softsign: (v) => v / (1 + Math.abs(v)),
      tanhshrink: (v) => v - Math.tanh(v),
      selu: (v) => 1.0507009873554805 * (v > 0 ? v : 1.6732632423543772 * (Math.exp(v) - 1)),
      celu: (v) => (v > 0 ? v : Math.exp(v) - 1),
      // erf via a series is overkill; use known values of Φ at these points
    };
    for (const [name, f] of Object.entries(table)) expectClose(run(name), xs.map(f), 2e-6, 1e-5);
    const phi: Record<number, number> = {
      [-4]: 3.167124e-5,
      [-1]: 0.1586553,
      [-0.25]: 0.4012937,
      0: 0.5,
      0.5: 0.6914625,
      2: 0.9772499,
      7: 0.9999999999987,
    };
    expectClose(
      run("gelu"),
      xs.map((v) => v * phi[v]!),
      2e-6,
      1e-5,
    );
  });
  it("softmax family uses PyTorch's implicit dim (batch axis for 3-D contexts)", () => {
    const x = [1, 2, 3, 4, 5, 6, 7, 8]; // [2,2,2]
    const out = tf.tidy(() => [...(applyActivation("softmax", tf.tensor3d(x, [2, 2, 2])).dataSync() as Float32Array)]);
    // softmax over axis 0 pairs element i with i+4 (difference 4)
    const a = 1 / (1 + Math.exp(4));
    expectClose(out, [a, a, a, a, 1 - a, 1 - a, 1 - a, 1 - a], 1e-6);
  });
  it("refuses names that cannot work and unknown names, with the reason", () => {
    expect(() => checkActivation("multiheadattention")).toThrow(/cannot be used.*embed_dim/);
    expect(() => checkActivation("threshold")).toThrow(/cannot be used/);
    expect(() => checkActivation("glu")).toThrow(/halves the width/);
    expect(() => checkActivation("swishh")).toThrow(/unsupported activation function "swishh"/);
    expect(checkActivation(null)).toBe("linear");
    expect(checkActivation("LeakyReLU")).toBe("leakyrelu");
    expect(ACTIVATION_NAMES.length).toBe(31);
  });
});

describe("weight init distributions (spec §1.9)", () => {
  const std = (a: Float32Array): number => {
    let m = 0;
    for (const v of a) m += v;
    m /= a.length;
    let s = 0;
    for (const v of a) s += (v - m) ** 2;
    return Math.sqrt(s / a.length);
  };
  const w0 = (init: "Normal" | "XavierUniform" | "XavierNormal" | "KaimingUniform" | "KaimingNormal", layerNorm = false) => {
    const net = createHypernetwork({ name: "t", dims: [256], weightInit: init, layerNorm, activation: "relu" });
    const params = Object.fromEntries(
      net
        .pair(256)![0]
        .namedParameters()
        .map(([k, p]) => [k, p.toTorchSync().data as Float32Array]),
    );
    net.dispose();
    return params;
  };
  it("Normal: std 0.01, bias 0", () => {
    const p = w0("Normal");
    expect(std(p["linear.0.weight"]!)).toBeCloseTo(0.01, 3);
    expect(p["linear.0.bias"]!.reduce((a, v) => Math.max(a, Math.abs(v)), 0)).toBe(0);
  });
  it("Xavier and Kaiming bounds/stds for 256→512→256", () => {
    const xu = w0("XavierUniform")["linear.0.weight"]!;
    const b = Math.sqrt(6 / (256 + 512));
    expect(xu.reduce((a, v) => Math.max(a, Math.abs(v)), 0)).toBeLessThanOrEqual(b);
    expect(std(xu)).toBeCloseTo(b / Math.sqrt(3), 3);
    expect(std(w0("XavierNormal")["linear.0.weight"]!)).toBeCloseTo(Math.sqrt(2 / 768), 3);
    const ku = w0("KaimingUniform");
    expect(std(ku["linear.0.weight"]!)).toBeCloseTo((Math.SQRT2 * Math.sqrt(3 / 256)) / Math.sqrt(3), 3);
    expect(std(ku["linear.2.weight"]!)).toBeCloseTo((Math.SQRT2 * Math.sqrt(3 / 512)) / Math.sqrt(3), 3);
    expect(std(w0("KaimingNormal")["linear.0.weight"]!)).toBeCloseTo(Math.SQRT2 / 16, 3);
  });
  it("LayerNorm weight ~ N(0, 0.01²) whatever the scheme", () => {
    const p = w0("KaimingUniform", true);
    expect(std(p["linear.2.weight"]!)).toBeCloseTo(0.01, 2);
    expect(p["linear.2.bias"]!.reduce((a, v) => Math.max(a, Math.abs(v)), 0)).toBe(0);
  });
  it("the same seed gives the same network; A1111 default dims and parameter count", () => {
    const a = createHypernetwork({ name: "a", seed: 7, dims: [8] });
    const b = createHypernetwork({ name: "b", seed: 7, dims: [8] });
    expect([...a.pair(8)![1].namedParameters()[0]![1].toTorchSync().data]).toEqual([
      ...b.pair(8)![1].namedParameters()[0]![1].toTorchSync().data,
    ]);
    expect([...a.pair(8)![0].namedParameters()[0]![1].toTorchSync().data]).not.toEqual([
      ...a.pair(8)![1].namedParameters()[0]![1].toTorchSync().data,
    ]);
    a.dispose();
    b.dispose();
    // per dim d: 2 × (4d² + 3d); the default four dims give 21,939,840 (spec §1.10), counted from shapes
    const sum = [768, 320, 640, 1280].reduce((s, d) => s + 2 * (4 * d * d + 3 * d), 0);
    expect(sum).toBe(21_939_840);
    const small = createHypernetwork({ name: "c", dims: [16, 24] });
    expect(small.parameterCount()).toBe(2 * (4 * 256 + 48) + 2 * (4 * 576 + 72));
    small.dispose();
  });
});

describe("forward", () => {
  it("x + mlp(x)·m; multiplier 0 is identity; training forces m = 1 and dropout is random", async () => {
    const net = createHypernetwork({
      name: "f",
      dims: [4],
      activation: "relu",
      useDropout: true,
      dropoutStructure: [0, 0.5, 0],
      weightInit: "XavierNormal",
      seed: 3,
    });
    const k = net.pair(4)![0];
    const x = tf.tensor3d(
      [...Array(24).keys()].map((i) => Math.sin(i)),
      [2, 3, 4],
    );
    const outs = await expectNoLeak(() =>
      tf.tidy(() => {
        const y0 = k.forward(x, { multiplier: 0 });
        const y1 = k.forward(x, { multiplier: 1 });
        const yh = k.forward(x, { multiplier: 0.5 });
        const br = k.branch(x);
        const tr = k.forward(x, { multiplier: 0.1, training: true, seed: 1 });
        const tr2 = k.forward(x, { multiplier: 0.1, training: true, seed: 1 });
        const tr3 = k.forward(x, { multiplier: 0.1, training: true, seed: 2 });
        return [y0, y1, yh, br, tr, tr2, tr3].map((t) => [...(t.dataSync() as Float32Array)]);
      }),
    );
    const [y0, y1, yh, br, tr, tr2, tr3] = outs as number[][];
    const xv = [...(x.dataSync() as Float32Array)];
    expect(y0).toEqual(xv);
    expectClose(
      y1!,
      xv.map((v, i) => v + br![i]!),
      1e-6,
    );
    expectClose(
      yh!,
      xv.map((v, i) => v + 0.5 * br![i]!),
      1e-6,
    );
    expect(tr).toEqual(tr2); // same seed, same dropout mask
    expect(tr).not.toEqual(tr3);
    expect(tr).not.toEqual(y1); // dropout active
    x.dispose();
    net.dispose();
  });

  it("a hand-computed 1→2→1 relu module on dim 2", () => {
    const net = createHypernetwork({ name: "h", dims: [2], activation: "relu" });
    const k = net.pair(2)![0];
    const [w0, b0, w2, b2] = k.namedParameters().map(([, p]) => p);
    // PyTorch layout [out, in]
    w0!.assignTorch({ dtype: "F32", shape: [4, 2], data: new Float32Array([1, 0, 0, 1, -1, 0, 1, 1]) });
    b0!.assignTorch({ dtype: "F32", shape: [4], data: new Float32Array([0, 0, 0, -1]) });
    w2!.assignTorch({ dtype: "F32", shape: [2, 4], data: new Float32Array([1, 1, 1, 1, 0, 2, 0, -1]) });
    b2!.assignTorch({ dtype: "F32", shape: [2], data: new Float32Array([0.5, 0]) });
    const y = tf.tidy(() => [...(k.forward(tf.tensor2d([[2, 3]]), { multiplier: 2 }).dataSync() as Float32Array)]);
    // h = relu([2, 3, -2, 4]) = [2, 3, 0, 4]; out = [2+3+0+4+0.5, 0+6+0-4] = [9.5, 2]; y = x + 2·out
    expect(y).toEqual([2 + 19, 3 + 4]);
    net.dispose();
  });
});
