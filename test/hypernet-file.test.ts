import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import {
  fromNetwork,
  loadHypernetwork,
  readHypernetworkFile,
  saveHypernetwork,
  writeHypernetworkFile,
  type HypernetworkFile,
} from "../src/hypernet/file";
import { createHypernetwork } from "../src/hypernet/network";
import { readSafetensors } from "../src/io/safetensors";
import { readTorchFile, writeTorchFile } from "../src/io/torch-file";
import { PyDict, PyFloat, PyTuple } from "../src/io/pyvalue";
import { halfToFloat, floatToHalf } from "../src/io/host-tensor";
import { expectClose, expectNoLeak, fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

interface ManifestEntry {
  file: string;
  io: string;
  dims: number[];
  multipliers: number[];
  activation: string | null;
  legacy?: boolean;
}
const manifest = JSON.parse(fs.readFileSync(fixture("hn-manifest.json"), "utf8")) as ManifestEntry[];
const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), "hn-"));
const mStr = (m: number): string => m.toFixed(1);

describe("PyTorch-written fixtures reproduce the stored module outputs", () => {
  for (const entry of manifest) {
    it(`${entry.file}: k/v outputs for every dim and multiplier to 1e-5`, async () => {
      const net = loadHypernetwork(fixture(entry.file));
      expect(net.dims.sort()).toEqual([...entry.dims].sort());
      const io = readSafetensors(fixture(entry.io)).tensors;
      let checked = 0;
      await expectNoLeak(() => {
        for (const dim of entry.dims) {
          const x = io.get(`x.${dim}`)!;
          for (const m of entry.multipliers) {
            for (const which of ["k", "v"] as const) {
              const y = tf.tidy(() => net.apply(which, tf.tensor(x.data, x.shape), { multiplier: m }));
              expectClose(y.dataSync() as Float32Array, io.get(`${which}.${dim}.${mStr(m)}`)!.data, 1e-5);
              y.dispose();
              checked++;
            }
          }
        }
      });
      expect(checked).toBe(entry.dims.length * entry.multipliers.length * 2);
      net.dispose();
    });
  }

  it("reads layouts and metadata defaults as A1111 does", () => {
    const legacy = readHypernetworkFile(fixture("hn-legacy-nai.pt"));
    expect(legacy.format).toBe("novelai-legacy");
    expect(legacy.info.layerStructure).toEqual([1, 2, 1]);
    expect(legacy.info.activation).toBe("linear");
    expect(legacy.info.activateOutput).toBe(true); // missing key → true (A1111), harmless without activation
    expect([...legacy.weights.get(32)![0].keys()]).toEqual(["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]);
    const half = readHypernetworkFile(fixture("hn-half.pt"));
    expect(half.weights.get(32)![0].get("linear.0.weight")!.dtype).toBe("F16");
    const relu = readHypernetworkFile(fixture("hn-relu-ln-drop.pt"));
    expect(relu.info.layerNorm).toBe(true);
    expect(relu.info.useDropout).toBe(true);
    expect(relu.info.dropoutStructure.some((p) => p > 0)).toBe(true);
  });
});

describe("writing files", () => {
  const sample = (): ReturnType<typeof createHypernetwork> =>
    createHypernetwork({
      name: "round trip",
      dims: [24, 16],
      layerStructure: [1, 1.5, 1],
      activation: "leakyrelu",
      layerNorm: true,
      useDropout: true,
      dropoutStructure: [0, 0.1, 0],
      weightInit: "KaimingNormal",
      seed: 11,
    });

  const sameFile = (a: HypernetworkFile, b: HypernetworkFile): void => {
    expect(b.info).toEqual(a.info);
    expect([...b.weights.keys()]).toEqual([...a.weights.keys()]);
    for (const [dim, pair] of a.weights) {
      pair.forEach((sd, j) => {
        const other = b.weights.get(dim)![j];
        expect([...other.keys()]).toEqual([...sd.keys()]);
        for (const [k, t] of sd) {
          expect(other.get(k)!.shape).toEqual(t.shape);
          expect([...other.get(k)!.data]).toEqual([...t.data]);
        }
      });
    }
  };

  it(".pt and .safetensors round-trip exactly, and .pt → .safetensors → .pt loses nothing", () => {
    const dir = tmp();
    const net = sample();
    const a = fromNetwork(net);
    net.info.step = 1234;
    saveHypernetwork(net, path.join(dir, "a.pt"));
    saveHypernetwork(net, path.join(dir, "a.safetensors"));
    const fromPt = readHypernetworkFile(path.join(dir, "a.pt"));
    const fromSt = readHypernetworkFile(path.join(dir, "a.safetensors"));
    a.info.step = 1234;
    sameFile(a, fromPt);
    sameFile(a, fromSt);
    writeHypernetworkFile(fromSt, path.join(dir, "b.pt"));
    sameFile(a, readHypernetworkFile(path.join(dir, "b.pt")));
    net.dispose();
  });

  it("keeps fp16 storage through a conversion, and --dtype f16 rounds like torch .half()", () => {
    const dir = tmp();
    const half = readHypernetworkFile(fixture("hn-half.pt"));
    writeHypernetworkFile(half, path.join(dir, "h.safetensors"));
    const back = readHypernetworkFile(path.join(dir, "h.safetensors"));
    expect(back.weights.get(16)![1].get("linear.1.bias")!.dtype).toBe("F16");
    expect([...back.weights.get(16)![1].get("linear.1.bias")!.data]).toEqual([...half.weights.get(16)![1].get("linear.1.bias")!.data]);
    const f32 = readHypernetworkFile(fixture("hn-plain121.pt"));
    writeHypernetworkFile(f32, path.join(dir, "p16.pt"), { dtype: "F16" });
    const p16 = readHypernetworkFile(path.join(dir, "p16.pt"));
    const w = f32.weights.get(24)![0].get("linear.0.weight")!.data;
    expect([...p16.weights.get(24)![0].get("linear.0.weight")!.data]).toEqual([...w].map((v) => halfToFloat(floatToHalf(v))));
  });

  it("writes A1111's object layout: int dims, (k, v) tuples, OrderedDicts with _metadata, float layer_structure, all metadata keys", () => {
    const dir = tmp();
    const net = sample();
    saveHypernetwork(net, path.join(dir, "x.pt"));
    net.dispose();
    const root = readTorchFile(path.join(dir, "x.pt")) as PyDict;
    expect(root).toBeInstanceOf(PyDict);
    expect([...root.map.keys()]).toEqual([
      24,
      16,
      "step",
      "name",
      "layer_structure",
      "activation_func",
      "is_layer_norm",
      "weight_initialization",
      "sd_checkpoint",
      "sd_checkpoint_name",
      "activate_output",
      "use_dropout",
      "dropout_structure",
      "last_layer_dropout",
      "optional_info",
    ]);
    const pair = root.get(24) as PyTuple;
    expect(pair).toBeInstanceOf(PyTuple);
    const sd = pair.items[0] as PyDict;
    expect(sd.kind).toBe("OrderedDict");
    expect([...sd.map.keys()]).toEqual([
      "linear.0.weight",
      "linear.0.bias",
      "linear.2.weight",
      "linear.2.bias",
      "linear.4.weight",
      "linear.4.bias",
      "linear.5.weight",
      "linear.5.bias",
    ]);
    expect(((root.get("layer_structure") as unknown[])[1] as PyFloat).value).toBe(1.5);
    expect(root.get("layer_structure")).toEqual([new PyFloat(1), new PyFloat(1.5), new PyFloat(1)]);
    expect(root.get("last_layer_dropout")).toBe(true);
    expect(root.get("activate_output")).toBe(false);
    const meta = (sd.state as PyDict).get("_metadata") as PyDict;
    expect([...meta.map.keys()]).toEqual(["", "linear", "linear.0", "linear.1", "linear.2", "linear.3", "linear.4", "linear.5"]);
  });

  it("never overwrites an existing file unless asked", () => {
    const dir = tmp();
    const net = sample();
    const f = path.join(dir, "keep.pt");
    saveHypernetwork(net, f);
    const before = fs.readFileSync(f);
    expect(() => saveHypernetwork(net, f)).toThrow(/already exists/);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
    net.info.step = 9;
    saveHypernetwork(net, f, { overwrite: true });
    expect(readHypernetworkFile(f).info.step).toBe(9);
    expect(fs.readdirSync(dir)).toEqual(["keep.pt"]); // no temp files left behind
    net.dispose();
  });

  it("refuses foreign and broken layouts with a clear message", () => {
    const dir = tmp();
    const write = (name: string, root: PyDict): string => {
      const f = path.join(dir, name);
      writeTorchFile(f, root);
      return f;
    };
    const good = readTorchFile(fixture("hn-plain121.pt")) as PyDict;
    const mp = new PyDict("dict", [...good.map]);
    mp.set("skip_connection", true);
    // MonkeyPatch's residual-block flag on A1111 tensors: the layout does not fit the flag.
    expect(() => readHypernetworkFile(write("mp.pt", mp))).toThrow(/missing "linear\.0\.linear\.0\.weight" .*skip_connection/);
    const wrongAct = new PyDict("dict", [...good.map]);
    wrongAct.set("activation_func", "relu"); // implies linear.2.*, file has linear.1.*
    expect(() => readHypernetworkFile(write("act.pt", wrongAct))).toThrow(/missing "linear\.2\.weight"/);
    const noDims = new PyDict("dict", [["name", "x"]]);
    expect(() => readHypernetworkFile(write("nodims.pt", noDims))).toThrow(/no hypernetwork modules/);
    const bad = new PyDict("dict", [...good.map]);
    bad.set("activation_func", "multiheadattention");
    expect(() => readHypernetworkFile(write("mha.pt", bad))).toThrow(/mha\.pt.*cannot be used/);
    expect(() => readHypernetworkFile(path.join(dir, "missing.pt"))).toThrow(/missing\.pt: no such file/);
  });

  it("save/load of live networks leaks no tensors", async () => {
    const dir = tmp();
    const net = sample();
    await expectNoLeak(() => saveHypernetwork(net, path.join(dir, "leak.pt")));
    await expectNoLeak(() => loadHypernetwork(path.join(dir, "leak.pt")).dispose());
    net.dispose();
  });
});

const torchCheck = spawnSync("/usr/bin/python3", ["-c", "import torch; print(torch.__version__)"], { encoding: "utf8" });
const haveTorch = torchCheck.status === 0;
if (!haveTorch) {
  console.warn(
    `[hypernet-file] real-PyTorch checks SKIPPED: /usr/bin/python3 cannot import torch (${(torchCheck.stderr || String(torchCheck.error)).trim().split("\n").pop()}). Install it with: apt-get install python3-torch`,
  );
}

describe("files written here load in real PyTorch as A1111 loads them", () => {
  it.runIf(haveTorch)(`torch ${torchCheck.stdout?.trim()}: strict load_state_dict into A1111's layout and matching outputs`, async () => {
    const dir = tmp();
    const cases = [
      createHypernetwork({ name: "plain", dims: [24], seed: 1, weightInit: "XavierNormal" }),
      createHypernetwork({
        name: "relu-ln-drop",
        dims: [16, 24],
        activation: "relu",
        layerNorm: true,
        useDropout: true,
        dropoutStructure: [0, 0.2, 0],
        seed: 2,
        weightInit: "KaimingUniform",
      }),
      createHypernetwork({
        name: "swish-out",
        dims: [16],
        layerStructure: [1, 1.5, 2, 1],
        activation: "swish",
        activateOutput: true,
        seed: 3,
        weightInit: "XavierUniform",
      }),
    ];
    for (const net of cases) {
      const file = path.join(dir, `${net.name}.pt`);
      saveHypernetwork(net, file);
      const dim = net.dims[net.dims.length - 1]!;
      const x = new Float32Array(3 * dim).map((_, i) => Math.sin(i * 0.7) * 2);
      const inp = path.join(dir, "x.bin");
      fs.writeFileSync(inp, Buffer.from(x.buffer));
      const r = spawnSync("/usr/bin/python3", [path.join(__dirname, "scripts", "a1111_load.py"), file, inp, String(dim), "0.7"], {
        encoding: "utf8",
      });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as {
        meta: Record<string, { type: string; value: unknown }>;
        dims: number[];
        pair_type: string;
        state_dict_type: string;
        has_metadata: boolean;
        k: number[];
        v: number[];
        layer_structure_item_types?: string[];
      };
      expect(out.dims).toEqual(net.dims);
      expect(out.pair_type).toBe("tuple");
      expect(out.state_dict_type).toBe("OrderedDict");
      expect(out.has_metadata).toBe(true);
      expect(out.meta.layer_structure_item_types).toEqual(net.info.layerStructure.map(() => "float"));
      expect(out.meta.step).toEqual({ type: "int", value: 0 });
      expect(out.meta.name).toEqual({ type: "str", value: net.name });
      expect(out.meta.activation_func!.value).toBe(net.info.activation);
      expect(out.meta.is_layer_norm).toEqual({ type: "bool", value: net.info.layerNorm });
      expect(out.meta.activate_output).toEqual({ type: "bool", value: net.info.activateOutput });
      expect(out.meta.sd_checkpoint).toEqual({ type: "NoneType", value: null });
      for (const which of ["k", "v"] as const) {
        const ours = tf.tidy(() => net.apply(which, tf.tensor2d(x, [3, dim]), { multiplier: 0.7 }).dataSync() as Float32Array);
        expectClose(ours, out[which], 1e-5, 1e-5);
      }
      net.dispose();
    }
  });
});
