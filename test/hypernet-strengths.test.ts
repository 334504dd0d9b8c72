/**
 * Parallel groups and strengths at inference, on numbers: groups against hand-computed contexts
 * (one-Linear networks) and against the PyTorch ldm-tiny fixture; per-width and k/v strengths by
 * recording what reaches to_k and to_v in every attention layer; timestep ramps per call and per
 * sample against the fixture's multiplier-1 and multiplier-0.5 outputs; and the gate alongside.
 */
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyStack, attachHypernetworks, type StackItem } from "../src/hypernet/attach";
import { loadHypernetwork } from "../src/hypernet/file";
import { createHypernetwork, type Hypernetwork } from "../src/hypernet/network";
import { rampAt } from "../src/hypernet/strengths";
import { type LdmTiny, loadLdmTiny } from "./helpers/ldm-tiny";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

let tiny: LdmTiny;
let a: Hypernetwork;
let b: Hypernetwork;
/** mlp(c) = c (k) and 2c (v). */
let ident: Hypernetwork;
/** mlp(c) = [1, −1] (k) and [0, 3] (v). */
let shift: Hypernetwork;

/** A width-2 network with one Linear per module (layer_structure [1, 1]) holding the given numbers. */
function oneLinear(name: string, k: [number[], number[]], v: [number[], number[]]): Hypernetwork {
  const net = createHypernetwork({ name, dims: [2], layerStructure: [1, 1] });
  net.pair(2)!.forEach((m, j) => {
    const [w, bias] = j === 0 ? k : v;
    for (const [key, p] of m.namedParameters()) {
      const vals = key.endsWith("weight") ? w : bias;
      // tfjs keeps a Linear's weight as [in, out]: transpose of the torch [out, in] given here.
      tf.tidy(() => p.value.assign(key.endsWith("weight") ? tf.tensor2d(vals, [2, 2]).transpose() : tf.tensor1d(vals)));
    }
  });
  return net;
}

beforeAll(async () => {
  await setupBackend();
  tiny = loadLdmTiny();
  a = loadHypernetwork(fixture("ldm-a.pt"));
  b = loadHypernetwork(fixture("ldm-b.pt"));
  ident = oneLinear(
    "ident",
    [
      [1, 0, 0, 1],
      [0, 0],
    ],
    [
      [2, 0, 0, 2],
      [0, 0],
    ],
  );
  shift = oneLinear(
    "shift",
    [
      [0, 0, 0, 0],
      [1, -1],
    ],
    [
      [0, 0, 0, 0],
      [0, 3],
    ],
  );
});
afterAll(() => {
  for (const n of [a, b, ident, shift]) n.dispose();
  tiny.dispose();
});

/** applyStack on the context [[1, 2]] (batch 1, 1 token, width 2). */
function run(stack: StackItem[], which: "k" | "v" = "k", t?: number[]): number[] {
  return tf.tidy(() => [...applyStack(stack, which, tf.tensor3d([1, 2], [1, 1, 2]), { t }).dataSync()]);
}

describe("parallel groups (hand-computed, c = [1, 2])", () => {
  // k: ident(c) = c + c = [2, 4]; shift(c) = c + [1, −1] = [2, 1].
  it("weighted mean of the members' outputs, weights normalised (3 : 1 → 0.75, 0.25)", () => {
    const group: StackItem = {
      parallel: [
        { network: ident, multiplier: 1, weight: 3 },
        { network: shift, multiplier: 1, weight: 1 },
      ],
      multiplier: 1,
    };
    expect(run([group])).toEqual([2, 3.25]); // 0.75·[2, 4] + 0.25·[2, 1]
    // v: ident(c) = c + 2c = [3, 6]; shift(c) = c + [0, 3] = [1, 5]
    expect(run([group], "v")).toEqual([2.5, 5.75]); // 0.75·[3, 6] + 0.25·[1, 5]
    // In sequence instead: shift(ident(c)) = [2, 4] + [1, −1] = [3, 3]
    expect(
      run([
        { network: ident, multiplier: 1 },
        { network: shift, multiplier: 1 },
      ]),
    ).toEqual([3, 3]);
  });

  it("member multipliers, the group multiplier, and a nested sequence", () => {
    const m = (mi: number, mg: number): StackItem => ({
      parallel: [
        { network: ident, multiplier: mi, weight: 3 },
        { network: shift, multiplier: 1, weight: 1 },
      ],
      multiplier: mg,
    });
    expect(run([m(0.5, 1)])).toEqual([1.625, 2.5]); // 0.75·[1.5, 3] + 0.25·[2, 1]
    expect(run([m(1, 2)])).toEqual([3, 4.5]); // c + 2·(0.75·[1, 2] + 0.25·[1, −1])
    expect(run([m(1, 0)])).toEqual([1, 2]);
    const nested: StackItem = {
      parallel: [
        {
          weight: 1,
          stack: [
            { network: ident, multiplier: 1 },
            { network: shift, multiplier: 1 },
          ],
        },
        { network: shift, multiplier: 1, weight: 1 },
      ],
      multiplier: 1,
    };
    expect(run([nested])).toEqual([2.5, 2]); // 0.5·[3, 3] + 0.5·[2, 1]
    // A group then a network in sequence: shift([2, 3.25]) = [3, 2.25]
    expect(run([m(1, 1), { network: shift, multiplier: 1 }])).toEqual([3, 2.25]);
  });

  it("on the UNet: a group of ldm-a alone is ldm-a; ldm-a with ldm-b at weight 0 too; a real mix is neither a nor a-then-b", () => {
    const one = attachHypernetworks(tiny.unet, [{ parallel: [{ network: a, multiplier: 1, weight: 2 }] }]);
    expectClose(tiny.eps(), tiny.io.get("eps.a.1")!.data, 1e-4);
    one.detach();
    const zero = attachHypernetworks(tiny.unet, [
      {
        parallel: [
          { network: a, multiplier: 1, weight: 1 },
          { network: b, multiplier: 1, weight: 0 },
        ],
      },
    ]);
    expectClose(tiny.eps(), tiny.io.get("eps.a.1")!.data, 1e-4);
    zero.detach();
    const mix = attachHypernetworks(tiny.unet, [
      {
        parallel: [
          { network: a, multiplier: 1, weight: 1 },
          { network: b, multiplier: 0.8, weight: 1 },
        ],
      },
    ]);
    const out = tiny.eps();
    mix.detach();
    const far = (ref: ArrayLike<number>): number => Math.max(...out.map((v, i) => Math.abs(v - ref[i]!)));
    expect(far(tiny.io.get("eps.a.1")!.data)).toBeGreaterThan(1e-4);
    expect(far(tiny.io.get("eps.a1.b0.8")!.data)).toBeGreaterThan(1e-4);
  });

  it("malformed groups are refused", () => {
    expect(() => attachHypernetworks(tiny.unet, [{ parallel: [] }])).toThrow(/a parallel group needs at least one member/);
    expect(() =>
      attachHypernetworks(tiny.unet, [
        {
          parallel: [
            { network: a, multiplier: 1, weight: 1 },
            { network: b, multiplier: 1, weight: -1 },
          ],
        },
      ]),
    ).toThrow(/parallel group of "ldm-a", "ldm-b": member weights must be finite numbers with a non-zero sum, got \[1, -1\]/);
  });
});

/** Run the UNet recording the input of every layer's to_k and to_v, by layer path. */
function recordProjections(): Map<string, { k: Float32Array; v: Float32Array }> {
  const rec = new Map<string, { k: Float32Array; v: Float32Array }>();
  const restore: Array<() => void> = [];
  for (const [p, layer] of tiny.unet.attentionLayers()) {
    for (const which of ["k", "v"] as const) {
      const lin = which === "k" ? layer.to_k : layer.to_v;
      const orig = lin.apply.bind(lin);
      lin.apply = (x: tf.Tensor) => {
        const r = rec.get(p) ?? { k: new Float32Array(), v: new Float32Array() };
        r[which] = x.dataSync() as Float32Array;
        rec.set(p, r);
        return orig(x);
      };
      restore.push(() => {
        lin.apply = orig;
      });
    }
  }
  try {
    tiny.eps();
  } finally {
    for (const r of restore) r();
  }
  return rec;
}

describe("per-width and k/v strengths", () => {
  it("k only: every layer's to_v input is the base model's; to_k inputs change", () => {
    const base = recordProjections();
    const att = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths: { v: 0 } }]);
    const kOnly = recordProjections();
    att.detach();
    const layers = tiny.unet.attentionLayers();
    // The first layer sees the base model's hidden state: its to_v input is exactly the base one,
    // and to_k's differs. Later layers follow from changed attention, so compare the text context:
    // in cross-attention layers to_v's input is the context itself, untouched by a k-only network.
    const first = layers[0]![0];
    expect(kOnly.get(first)!.v).toEqual(base.get(first)!.v);
    expect(kOnly.get(first)!.k).not.toEqual(base.get(first)!.k);
    let cross = 0;
    for (const [p, layer] of layers) {
      if (layer.contextDim !== 40) continue;
      cross++;
      expect(kOnly.get(p)!.v).toEqual(base.get(p)!.v);
      expect(kOnly.get(p)!.k).not.toEqual(base.get(p)!.k);
    }
    expect(cross).toBeGreaterThan(0);
  });

  it("width 40 at 0: every cross-attention layer's to_k and to_v inputs are the base model's; self-attention still changes", () => {
    const base = recordProjections();
    const att = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths: { widths: { 40: 0 } } }]);
    const rec = recordProjections();
    att.detach();
    let self = 0;
    for (const [p, layer] of tiny.unet.attentionLayers()) {
      if (layer.contextDim === 40) {
        expect(rec.get(p)!.k).toEqual(base.get(p)!.k);
        expect(rec.get(p)!.v).toEqual(base.get(p)!.v);
      } else {
        self++;
        expect(rec.get(p)!.k).not.toEqual(base.get(p)!.k); // self-attention: ldm-a's 32/64 modules still act
      }
    }
    expect(self).toBeGreaterThan(0);
    // Module level: a width-2 context with widths {2: 0} comes back unchanged, other factors scale.
    expect(run([{ network: ident, multiplier: 1, strengths: { widths: { 2: 0 } } }])).toEqual([1, 2]);
    expect(run([{ network: ident, multiplier: 1, strengths: { widths: { 2: 0.5, 7: 0 } } }])).toEqual([1.5, 3]);
    expect(run([{ network: ident, multiplier: 2, strengths: { k: 0.25, v: 3 } }])).toEqual([1.5, 3]); // c + 0.5·c
    expect(run([{ network: ident, multiplier: 2, strengths: { k: 0.25, v: 3 } }], "v")).toEqual([13, 26]); // c + 6·2c
  });

  it("all factors 1 is the plain entry (fixture), and k = v = 0 is the base model exactly", () => {
    const same = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths: { k: 1, v: 1, widths: { 40: 1 } } }]);
    expectClose(tiny.eps(), tiny.io.get("eps.a.1")!.data, 1e-4);
    same.detach();
    const base = tiny.eps();
    const off = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths: { k: 0, v: 0 } }]);
    expect(tiny.eps()).toEqual(base);
    off.detach();
  });
});

/** Item i's part of a batch-of-2 fixture array. */
function item(key: string, i: number): Float32Array {
  const all = tiny.io.get(key)!.data as Float32Array;
  const n = all.length / 2;
  return all.slice(i * n, (i + 1) * n);
}

describe("timestep ramps (the fixture batch is at t = 17 and 640)", () => {
  it("piecewise-linear points: straight lines between them, flat beyond the ends", () => {
    const r: Array<[number, number]> = [
      [0, 0],
      [100, 1],
      [300, 0],
    ];
    expect([-5, 0, 50, 100, 200, 250, 300, 999].map((t) => rampAt(r, t))).toEqual([0, 0, 0.5, 1, 0.5, 0.25, 0, 0]);
    expect(rampAt((t) => t / 1000, 640)).toBe(0.64);
  });

  it("each sample gets its own factor: t = 17 → 1, t = 640 → 0.5", () => {
    expect(tiny.t).toEqual([17, 640]);
    const ramp: Array<[number, number]> = [
      [17, 1],
      [640, 0.5],
    ];
    const att = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths: { ramp } }]);
    const out = tiny.eps();
    att.detach();
    const n = out.length / 2;
    expectClose(out.slice(0, n), item("eps.a.1", 0), 1e-4);
    expectClose(out.slice(n), item("eps.a.0.5", 1), 1e-4);
  });

  it("a function ramp, the multiplier and a gate together; a step-shaped ramp equals the gate", () => {
    const att = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 2, strengths: { ramp: () => 0.25 } }]);
    expectClose(tiny.eps(), tiny.io.get("eps.a.0.5")!.data, 1e-4);
    att.detach();
    const gate = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, timesteps: [0, 100] }]);
    const g0 = tiny.eps([17, 17]);
    gate.detach();
    const step = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths: { ramp: (t) => (t >= 0 && t < 100 ? 1 : 0) } }]);
    expect(tiny.eps([17, 17])).toEqual(g0);
    // The step ramp also takes a batch that straddles the range, where a gate refuses the call.
    const out = tiny.eps();
    const n = out.length / 2;
    expectClose(out.slice(0, n), item("eps.a.1", 0), 1e-4);
    expectClose(out.slice(n), item("eps", 1), 1e-4);
    step.detach();
  });

  it("refuses malformed ramps and factors, naming the network", () => {
    const bad = (strengths: object): string => {
      try {
        attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths }]).detach();
      } catch (e) {
        return (e as Error).message;
      }
      return "no error";
    };
    expect(
      bad({
        ramp: [
          [100, 1],
          [50, 0],
        ],
      }),
    ).toMatch(/hypernetwork "ldm-a": strengths.ramp points must have strictly increasing t/);
    expect(bad({ ramp: [] })).toMatch(/ramp must be a function of t or a non-empty list/);
    expect(bad({ k: Number.NaN })).toMatch(/strengths.k must be a finite number, got NaN/);
    expect(bad({ widths: { wide: 1 } })).toMatch(/widths has the key "wide", which is not a width/);
    const att = attachHypernetworks(tiny.unet, [{ network: a, multiplier: 1, strengths: { ramp: () => Number.NaN } }]);
    expect(() => tiny.eps()).toThrow(/strength ramp gave NaN at t = 17/);
    att.detach();
  });

  it("ramps, width factors and groups leave no tensors", async () => {
    const att = attachHypernetworks(tiny.unet, [
      {
        network: a,
        multiplier: 1,
        strengths: {
          ramp: [
            [0, 0],
            [1000, 1],
          ],
          widths: { 32: 0.5 },
          v: 0.3,
        },
      },
      {
        parallel: [
          { network: b, multiplier: 1, weight: 1 },
          { network: a, multiplier: 0.5, weight: 2 },
        ],
      },
    ]);
    tiny.eps(); // warm-up (kernels, caches)
    await expectNoLeak(() => tiny.eps());
    att.detach();
    await expectNoLeak(() =>
      run(
        [
          {
            parallel: [
              { network: ident, multiplier: 1, weight: 1 },
              { network: shift, multiplier: 1, weight: 1 },
            ],
            multiplier: 1,
          },
        ],
        "v",
        [3],
      ),
    );
  });
});
