/**
 * MonkeyPatch "beta" networks (skip_connection residual blocks) and `.hns` sequences.
 *
 * The fixtures `hn-beta-a.pt` (resize skip paths, layer norm, dropout) and `hn-beta-b.pt` (frozen
 * Linear skip paths) and the expected numbers in `hn-beta.json` were written by PyTorch 1.13 with
 * `test/scripts/make_beta_fixture.py`, which builds the modules the way the extension does and
 * saves them with the extension's keys; it also computes one `.hns` composition the extension's
 * way. The one check that needs PyTorch itself (the file this project writes, loaded back by
 * torch with strict state dicts) skips when torch is missing; the rest needs no Python.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyStack, attachHypernetworks } from "../src/hypernet/attach";
import { loadHypernetwork, readHypernetworkFile, saveHypernetwork, writeHypernetworkFile } from "../src/hypernet/file";
import { HnsError, type HnsNode, loadHypernetworkSequence, parseHypernetworkSequence } from "../src/hypernet/hns";
import { createHypernetwork, type Hypernetwork } from "../src/hypernet/network";
import { describeHypernetwork } from "../src/kernel-helpers/steps";
import { inspectFile } from "../src/cli/main";
import { listHypernetworks } from "../src/hypernet/prompt";
import { clearHypernetworkCache, resolvePromptHypernetworks } from "../src/hypernet/prompt-networks";
import { txt2img } from "../src/pipeline/txt2img";
import { resBlockShapes } from "../src/hypernet/resblock";
import type { BaseModel } from "../src/pipeline/base-model";
import { train } from "../src/train";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";
import { skipWithoutTorch } from "./helpers/torch";
import { makeToyBase, makeToyDataset, toyTrainOptions } from "./helpers/train-setup";

interface DimCase {
  x: number[];
  k: number[];
  v: number[];
  k1: number[];
  kTrain?: number[];
}
interface Expected {
  multiplier: number;
  nets: Record<string, Record<string, DimCase>>;
  hns: { text: string; outputs: Record<string, { x: number[]; k: number[]; v: number[] }> };
}
const expected = JSON.parse(fs.readFileSync(fixture("hn-beta.json"), "utf8")) as Expected;
const NETS = ["hn-beta-a", "hn-beta-b"] as const;
const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), "hn-beta-"));

/** Run `which` of `net` on `x` ([2, 3, dim]) and read the result back. */
function run(
  net: Hypernetwork,
  which: "k" | "v",
  x: number[],
  dim: number,
  opts: { multiplier?: number; training?: boolean },
): Float32Array {
  return tf.tidy(() => net.apply(which, tf.tensor(x, [2, 3, dim]), opts).dataSync() as Float32Array);
}

function sameBits(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  return a.length === b.length && Array.from(a).every((v, i) => Object.is(Math.fround(v), Math.fround(b[i]!)));
}

beforeAll(setupBackend);

describe("reading MonkeyPatch beta files", () => {
  it("reads skip_connection files: metadata, the residual-block keys, no leftover extra keys", () => {
    const a = readHypernetworkFile(fixture("hn-beta-a.pt"));
    expect(a.info).toMatchObject({ skipConnection: true, upsampleLinear: null, layerStructure: [1, 1.5, 2, 1], activation: "elu" });
    expect(a.info.dropoutStructure).toEqual([0, 0.1, 0.2, 0.3]);
    expect([...a.extra.keys()]).toEqual([]);
    const b = readHypernetworkFile(fixture("hn-beta-b.pt"));
    expect(b.info).toMatchObject({ skipConnection: true, upsampleLinear: "Linear", activation: "tanh", step: 7 });
    expect([...b.weights.get(16)![0].keys()]).toEqual([
      "linear.0.upsample_layer.weight",
      "linear.0.linear.0.weight",
      "linear.0.linear.0.bias",
      "linear.1.upsample_layer.weight",
      "linear.1.linear.0.weight",
      "linear.1.linear.0.bias",
    ]);
    // a: 16 → 24 → 32 → 16, layer norm at index 1, dropout 2, ELU 3 (no tensors for the last two).
    // `inspect` shows the two MonkeyPatch keys for such a file (and only for such a file). Each
    // module of b: block 0 has upsample + Linear 2d×d and bias 2d, block 1 the same d×2d and bias d.
    expect(inspectFile(fixture("hn-beta-b.pt"))).toMatchObject({
      skip_connection: true,
      upsample_linear: "Linear",
      parameters: [16, 32, 64].reduce((n, d) => n + 2 * (8 * d * d + 3 * d), 0),
    });
    expect(inspectFile(fixture("hn-plain121.pt"))).not.toHaveProperty("skip_connection");
    expect([...resBlockShapes(16, a.info as never)]).toEqual([
      ["linear.0.linear.0.weight", [24, 16]],
      ["linear.0.linear.0.bias", [24]],
      ["linear.0.linear.1.weight", [24]],
      ["linear.0.linear.1.bias", [24]],
      ["linear.1.linear.0.weight", [32, 24]],
      ["linear.1.linear.0.bias", [32]],
      ["linear.1.linear.1.weight", [32]],
      ["linear.1.linear.1.bias", [32]],
      ["linear.2.linear.0.weight", [16, 32]],
      ["linear.2.linear.0.bias", [16]],
      ["linear.2.linear.1.weight", [16]],
      ["linear.2.linear.1.bias", [16]],
    ]);
  });

  it("refuses a beta file whose tensors do not fit its metadata, naming the key and the setting", () => {
    const b = readHypernetworkFile(fixture("hn-beta-b.pt"));
    b.weights.get(16)![1].delete("linear.1.upsample_layer.weight");
    const dir = tmp();
    writeHypernetworkFile(b, path.join(dir, "bad.pt"));
    expect(() => readHypernetworkFile(path.join(dir, "bad.pt"))).toThrow(
      /bad\.pt: dim 16 v module is missing "linear\.1\.upsample_layer\.weight" .*skip_connection, upsample_linear "Linear"/,
    );
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe("the beta forward pass equals PyTorch's", () => {
  for (const name of NETS) {
    it(`${name}: k and v at ×${expected.multiplier}, k at ×1 and in training, every width, to 1e-5`, () => {
      const net = loadHypernetwork(fixture(`${name}.pt`));
      for (const [d, c] of Object.entries(expected.nets[name]!)) {
        const dim = Number(d);
        expectClose(run(net, "k", c.x, dim, { multiplier: expected.multiplier }), c.k);
        expectClose(run(net, "v", c.x, dim, { multiplier: expected.multiplier }), c.v);
        expectClose(run(net, "k", c.x, dim, { multiplier: 1 }), c.k1);
        // Training gives the chain f(x) whatever the multiplier (b has no dropout, so it is deterministic).
        if (c.kTrain) expectClose(run(net, "k", c.x, dim, { multiplier: 0.2, training: true }), c.kTrain);
      }
      net.dispose();
    });
  }

  it("×0 is the identity, and loading, applying and disposing leak no tensors", async () => {
    const c = expected.nets["hn-beta-a"]!["16"]!;
    await expectNoLeak(() => {
      const net = loadHypernetwork(fixture("hn-beta-a.pt"));
      expect(sameBits(run(net, "v", c.x, 16, { multiplier: 0 }), c.x)).toBe(true);
      // One multiplier per sample (the first axis), as a timestep ramp gives them.
      const x = tf.tensor(c.x, [6, 16]);
      const y = net.apply("k", x, { multiplier: [0.7, 0.7, 0.7, 0.7, 0.7, 0.7] });
      expectClose(y.dataSync(), c.k);
      tf.dispose([x, y]);
      const x2 = tf.ones([1, 2, 16]);
      net.apply("k", x2, { training: true, seed: 3 }).dispose();
      x2.dispose();
      net.dispose();
    });
  });
});

describe("writing beta files", () => {
  it("save → read keeps every tensor and the metadata bit for bit; a second write is byte-identical", async () => {
    const dir = tmp();
    for (const name of NETS) {
      const orig = readHypernetworkFile(fixture(`${name}.pt`));
      const out = path.join(dir, `${name}.pt`);
      await expectNoLeak(() => {
        const net = loadHypernetwork(fixture(`${name}.pt`));
        saveHypernetwork(net, out);
        net.dispose();
      });
      const back = readHypernetworkFile(out);
      expect(back.info).toEqual(orig.info);
      expect([...back.weights.keys()]).toEqual([...orig.weights.keys()]);
      for (const [dim, pair] of orig.weights)
        pair.forEach((sd, j) => {
          const got = back.weights.get(dim)![j]!;
          expect([...got.keys()]).toEqual([...sd.keys()]);
          for (const [k, t] of sd) {
            expect(got.get(k)!.shape, k).toEqual(t.shape);
            expect(sameBits(got.get(k)!.data as Float32Array, t.data as Float32Array), `${name} ${dim} ${k}`).toBe(true);
          }
        });
      // (the same file name: torch's zip names its folder after the file)
      fs.mkdirSync(path.join(dir, "again"), { recursive: true });
      const again = path.join(dir, "again", `${name}.pt`);
      writeHypernetworkFile(back, again);
      expect(fs.readFileSync(again).equals(fs.readFileSync(out))).toBe(true);
      // .safetensors keeps the beta metadata too.
      const st = path.join(dir, `${name}.safetensors`);
      writeHypernetworkFile(orig, st);
      const fromSt = readHypernetworkFile(st);
      expect(fromSt.info).toEqual(orig.info);
      expect([...fromSt.extra.keys()]).toEqual([]);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("a written beta file loads in PyTorch the extension's way and gives this project's outputs", (ctx) => {
    skipWithoutTorch(ctx, "loading a written beta file in torch");
    const dir = tmp();
    for (const name of NETS) {
      const net = loadHypernetwork(fixture(`${name}.pt`));
      const out = path.join(dir, `${name}.pt`);
      saveHypernetwork(net, out);
      const res = JSON.parse(
        execFileSync("/usr/bin/python3", [path.join(__dirname, "scripts", "make_beta_fixture.py"), "--check", out], { encoding: "utf8" }),
      ) as { skip_connection: boolean; keys: Record<string, string[]>; outputs: Record<string, { k: number[]; v: number[] }> };
      expect(res.skip_connection).toBe(true);
      for (const [d, o] of Object.entries(res.outputs)) {
        const dim = Number(d);
        expect(res.keys[d]).toEqual(
          net
            .pair(dim)![0]
            .namedParameters()
            .map(([k]) => k),
        );
        const x = Array.from({ length: 6 * dim }, (_, i) => -1 + (2 * i) / (6 * dim - 1));
        expectClose(run(net, "k", x, dim, { multiplier: 0.7 }), o.k, 1e-5);
        expectClose(run(net, "v", x, dim, { multiplier: 0.7 }), o.v, 1e-5);
      }
      net.dispose();
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("createHypernetwork makes beta networks: frozen upsample layers left out of the optimizer's list, no zeroLastLayer", async () => {
    await expectNoLeak(() => {
      const net = createHypernetwork({
        name: "beta",
        dims: [16],
        layerStructure: [1, 2, 1],
        skipConnection: true,
        upsampleLinear: "Linear",
        seed: 2,
      });
      const stored = net
        .pair(16)![0]
        .namedParameters()
        .map(([k]) => k);
      expect(stored).toContain("linear.1.upsample_layer.weight");
      expect(net.namedParameters().map(([k]) => k)).toEqual([
        "16.0.linear.0.linear.0.weight",
        "16.0.linear.0.linear.0.bias",
        "16.0.linear.1.linear.0.weight",
        "16.0.linear.1.linear.0.bias",
        "16.1.linear.0.linear.0.weight",
        "16.1.linear.0.linear.0.bias",
        "16.1.linear.1.linear.0.weight",
        "16.1.linear.1.linear.0.bias",
      ]);
      // The upsample weights are drawn (PyTorch's default U(±1/√fan_in)), not zeros.
      const up = net
        .pair(16)![0]
        .namedParameters()
        .find(([k]) => k === "linear.0.upsample_layer.weight")![1];
      const w = up.value.dataSync();
      expect(w.some((v) => v !== 0) && w.every((v) => Math.abs(v) <= 1 / Math.sqrt(16))).toBe(true);
      expect(up.value.trainable).toBe(false);
      // Every stored tensor (what travels to the sampling workers) includes the upsample layers.
      expect(net.storedParameters().map(([k]) => k)).toContain("16.1.linear.0.upsample_layer.weight");
      expect(net.storedParameters()).toHaveLength(12);
      expect(describeHypernetwork(net)[0]!.layers).toEqual([
        "0: ResBlock(16 → 32; Linear skip (frozen); linear)",
        "1: ResBlock(32 → 16; Linear skip (frozen); linear)",
      ]);
      net.dispose();
    });
    expect(() => createHypernetwork({ name: "z", dims: [16], skipConnection: true, zeroLastLayer: true })).toThrow(
      /residual-block.*zeroLastLayer/,
    );
    expect(() => createHypernetwork({ name: "u", dims: [16], upsampleLinear: "Linear" })).toThrow(/needs skipConnection/);
  });
});

describe("training a beta network", () => {
  let dir: string;
  let base: BaseModel;
  beforeAll(async () => {
    dir = tmp();
    await makeToyDataset(path.join(dir, "data"));
    base = makeToyBase();
  });
  afterAll(() => {
    base?.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("moves the blocks' Linear and LayerNorm weights and leaves the upsample layers (and unused widths) bit for bit", async () => {
    const net = loadHypernetwork(fixture("hn-beta-b.pt"), { trainable: true });
    const used = new Set(base.contextDims);
    expect(used.has(16) && used.has(64) && !used.has(32)).toBe(true);
    const snapshot = (): Map<string, Float32Array> => {
      const m = new Map<string, Float32Array>();
      for (const [dim, pair] of net.modules)
        pair.forEach((mod, j) => {
          for (const [k, p] of mod.namedParameters()) m.set(`${dim}.${j}.${k}`, p.value.dataSync().slice() as Float32Array);
        });
      return m;
    };
    const before = snapshot();
    const logDir = path.join(dir, "run");
    const r = await train(base, net, toyTrainOptions(path.join(dir, "data"), logDir, { maxSteps: 9, saveEvery: 9 })).done;
    expect(r.reason, r.message).toBe("max-steps");
    const after = snapshot();
    let frozen = 0;
    let moved = 0;
    for (const [k, w] of before) {
      const stays = k.includes("upsample_layer") || k.startsWith("32.");
      expect(sameBits(after.get(k)!, w), `${k} ${stays ? "changed" : "did not change"}`).toBe(stays);
      if (k.includes("upsample_layer")) frozen++;
      else if (!stays) moved++;
    }
    expect(frozen).toBe(12);
    expect(moved).toBe(16);
    // The checkpoint is a beta file again, with the upsample layers as they were.
    const saved = readHypernetworkFile(path.join(logDir, "hypernetworks", "hn-beta-b-9.pt"));
    expect(saved.info).toMatchObject({ skipConnection: true, upsampleLinear: "Linear", step: 9 });
    const orig = readHypernetworkFile(fixture("hn-beta-b.pt"));
    const k = "linear.0.upsample_layer.weight";
    expect(sameBits(saved.weights.get(64)![1].get(k)!.data as Float32Array, orig.weights.get(64)![1].get(k)!.data as Float32Array)).toBe(
      true,
    );
    net.dispose();
  });
});

describe(".hns sequences", () => {
  it("parses each form the extension documents", () => {
    const n = (name: string, strength = 1, line = 1): HnsNode => ({ kind: "network", name, strength, line });
    expect(parseHypernetworkSequence('"a"')).toEqual(n("a"));
    expect(parseHypernetworkSequence('("a", 0.4)')).toEqual(n("a", 0.4));
    expect(parseHypernetworkSequence('{"a": 0.4}')).toEqual(n("a", 0.4));
    expect(parseHypernetworkSequence('[["a"]]')).toEqual(n("a"));
    expect(parseHypernetworkSequence('{"a": 1}')).toEqual(n("a"));
    expect(parseHypernetworkSequence('# two in a row\n[\n  "a",\n  ("b", 0.5),  # comment\n]')).toEqual({
      kind: "sequence",
      items: [n("a", 1, 3), n("b", 0.5, 4)],
    });
    expect(parseHypernetworkSequence('{"a": 2, "b": 1}')).toEqual({
      kind: "parallel",
      members: [
        { node: n("a"), weight: 2 },
        { node: n("b"), weight: 1 },
      ],
    });
    expect(parseHypernetworkSequence("{'a', 'b', 'c'}")).toEqual({
      kind: "parallel",
      members: ["a", "b", "c"].map((x) => ({ node: n(x), weight: 1 })),
    });
    expect(parseHypernetworkSequence(`{"['a', ('b', 0.3)]": 0.8, ('c', 0.5): 0.2}`)).toEqual({
      kind: "parallel",
      members: [
        { node: { kind: "sequence", items: [n("a"), n("b", 0.3)] }, weight: 0.8 },
        { node: n("c", 0.5), weight: 0.2 },
      ],
    });
  });

  it("reports malformed files with file, line, column and what to write", () => {
    const cases: Array<[string, RegExp]> = [
      ["", /x\.hns:1:1: the file is empty/],
      ['["a", "b"', /x\.hns:1:1: the "\[" opened here is never closed/],
      ['["a" "b"]', /x\.hns:1:6: expected "," or "\]" here/],
      ['[\n  "a",\n  ("b", 1.5)\n]', /x\.hns:3:9: the strength of "b" is 1\.5; MonkeyPatch accepts strengths from 0 to 1 only/],
      ['{"a": 1, "a": 2}', /x\.hns:1:10: this member is listed twice .*line 1/],
      ['{"a": 0, "b": 0}', /x\.hns:1:2: the weights of this parallel group add up to 0/],
      ['[a, "b"]', /x\.hns:1:2: a is not a quoted name \(write "a"/],
      ['["a', /x\.hns:1:2: the string starting here is not closed/],
      ['["a", 3]', /x\.hns:1:7: a number alone is not a network/],
      ['("a", "b")', /x\.hns:1:1: a tuple must be \("network name", strength\)/],
      ['["a"]\n["b"]', /x\.hns:2:1: unexpected text after the end/],
      ['{"[\\"a\\", (\\"b\\", 2)]": 1, "c": 1}', /x\.hns:1:\d+: in the quoted group: the strength of "b" is 2/],
      ['{["a", "b"]: 1, "c": 1}', /x\.hns:1:2: a parallel member must be a name/],
      ["{\"['a', 'b']\": 0.5}", /x\.hns:1:2: a one-entry dict sets the strength of one network/],
      ['["a", []]', /x\.hns:1:7: an empty group names no network/],
      ['["a"; "b"]', /x\.hns:1:5: unexpected character ";"/],
    ];
    for (const [text, re] of cases) {
      let err: unknown;
      try {
        parseHypernetworkSequence(text, "x.hns");
      } catch (e) {
        err = e;
      }
      expect(err, text).toBeInstanceOf(HnsError);
      expect((err as Error).message, text).toMatch(re);
    }
  });

  it("loads a .hns file, applies it as PyTorch composed it, and equals composing the networks by hand", async () => {
    const dir = tmp();
    const nets = path.join(dir, "hypernetworks");
    fs.mkdirSync(path.join(nets, "sub"), { recursive: true });
    fs.copyFileSync(fixture("hn-beta-a.pt"), path.join(nets, "hn-beta-a.pt"));
    fs.copyFileSync(fixture("hn-beta-b.pt"), path.join(nets, "sub", "hn-beta-b.pt"));
    const file = path.join(nets, "mix.hns");
    fs.writeFileSync(file, `${expected.hns.text}\n`);
    await expectNoLeak(() => {
      const seq = loadHypernetworkSequence(file);
      expect(seq.name).toBe("mix");
      expect([...seq.networks.keys()]).toEqual(["hn-beta-b", "hn-beta-a"]);
      const a = seq.networks.get("hn-beta-a")!;
      const b = seq.networks.get("hn-beta-b")!;
      for (const [d, o] of Object.entries(expected.hns.outputs)) {
        const dim = Number(d);
        for (const which of ["k", "v"] as const) {
          const got = tf.tidy(() => applyStack(seq.stack, which, tf.tensor(o.x, [2, 3, dim])).dataSync() as Float32Array);
          // Outputs reach ~20 after three chained networks: 1e-5, or 1e-6 of the value where larger.
          expectClose(got, o[which], 1e-5, 1e-6);
          // By hand: b at 0.6, then 2/3 · a(h) + 1/3 · b(h) at 0.5 (a width a lacks passes h through).
          const hand = tf.tidy(() => {
            const h = b.apply(which, tf.tensor(o.x, [2, 3, dim]), { multiplier: 0.6 });
            return tf
              .add(tf.mul(a.apply(which, h, { multiplier: 1 }), 2 / 3), tf.mul(b.apply(which, h, { multiplier: 0.5 }), 1 / 3))
              .dataSync();
          });
          expectClose(got, hand, 1e-6, 1e-6);
        }
      }
      // The stack attaches like any other (and detaches leaving the UNet as it was).
      const base = makeToyBase();
      const att = attachHypernetworks(base.unet, seq.stack, { onWarning: () => {} });
      att.detach();
      base.dispose();
      seq.dispose();
    });
    // An unknown name: the .hns file and line, and the close names.
    fs.writeFileSync(file, '[\n  "hn-beta-a",\n  "hn-beta-c"\n]\n');
    await expectNoLeak(() => {
      expect(() => loadHypernetworkSequence(file)).toThrow(/mix\.hns:3: no hypernetwork named "hn-beta-c" .*Did you mean/);
    });
    expect(() => loadHypernetworkSequence(path.join(dir, "none.hns"))).toThrow(/none\.hns: no such file/);
    // A sequence may not name another sequence (the extension loads only networks there).
    fs.writeFileSync(path.join(nets, "outer.hns"), '["hn-beta-a", "mix"]');
    expect(() => loadHypernetworkSequence(path.join(nets, "outer.hns"))).toThrow(
      /outer\.hns:1: "mix" is the sequence .*mix\.hns; a \.hns file can name networks/,
    );
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("<hypernet:NAME:m> tags name .hns files too: the sequence as one group scaled by m, its networks from the cache", async () => {
    const dir = tmp();
    const nets = path.join(dir, "hypernetworks");
    fs.mkdirSync(nets, { recursive: true });
    for (const n of NETS) fs.copyFileSync(fixture(`${n}.pt`), path.join(nets, `${n}.pt`));
    fs.writeFileSync(path.join(nets, "mix.hns"), expected.hns.text);
    expect(listHypernetworks(nets).get("mix")).toBe(path.join(nets, "mix.hns"));
    const base = makeToyBase();
    const GEN = { negativePrompt: "", steps: 2, cfgScale: 5, sampler: "Euler a", seed: 3, width: 8, height: 8 };
    try {
      await expectNoLeak(() => {
        expect(resolvePromptHypernetworks("<hypernet:mix:1>", "", nets).networks).toHaveLength(1);
        clearHypernetworkCache();
      });
      const { networks } = resolvePromptHypernetworks("red <hypernet:mix:0.5>", "", nets);
      expect(networks.map((n) => [n.name, n.multiplier, n.file, n.stack?.length])).toEqual([["mix", 0.5, path.join(nets, "mix.hns"), 2]]);
      // The networks are the prompt cache's: a plain tag for one of them gets the same object.
      const again = resolvePromptHypernetworks("<hypernet:hn-beta-b:1>", "", nets).networks[0]!.network;
      expect(networks[0]!.network).toBe(again);
      const tagged = await txt2img(base, { ...GEN, prompt: "red <hypernet:mix:0.5>", hypernetworkDir: nets });
      expect(tagged.infotexts[0]).toMatch(/^red <hypernet:mix:0\.5>\n/);
      expect(tagged.hypernetworks).toEqual([
        { name: "mix", multiplier: 0.5, file: path.join(nets, "mix.hns"), hash: expect.stringMatching(/^[0-9a-f]{10}$/) },
      ]);
      // By hand: the loaded sequence attached as one group at 0.5, and the tag-free prompt.
      const seq = loadHypernetworkSequence(path.join(nets, "mix.hns"));
      const att = attachHypernetworks(base.unet, [{ parallel: [{ weight: 1, stack: seq.stack }], multiplier: 0.5 }], {
        onWarning: () => {},
      });
      const byHand = await txt2img(base, { ...GEN, prompt: "red" });
      att.detach();
      seq.dispose();
      expectClose(tagged.pixels, byHand.pixels, 0);
      const plain = await txt2img(base, { ...GEN, prompt: "red" });
      expect(plain.pixels.some((v, i) => Math.abs(v - tagged.pixels[i]!) > 1e-3)).toBe(true);
    } finally {
      clearHypernetworkCache();
      base.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
