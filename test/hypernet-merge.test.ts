/**
 * Merging networks: the weighted sum of weights against hand-computed values, written through the
 * ordinary writer (read back here and by an A1111-style PyTorch loader), and the refusals that name
 * both files when structures differ.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { fromNetwork, type HypernetworkFile, loadHypernetwork, readHypernetworkFile, writeHypernetworkFile } from "../src/hypernet/file";
import { mergeHypernetworkData, mergeHypernetworkFiles, mergeHypernetworks } from "../src/hypernet/merge";
import { type CreateOptions, createHypernetwork } from "../src/hypernet/network";
import { hostTensor } from "../src/io/host-tensor";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { skipWithoutTorch } from "./helpers/torch";

beforeAll(setupBackend);
const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), "hn-merge-"));

/** A file with one Linear per module (layer_structure [1, 1], width 2) holding the given numbers. */
function oneLinear(name: string, kw: number[], kb: number[], vw: number[], vb: number[]): HypernetworkFile {
  const net = createHypernetwork({ name, dims: [2], layerStructure: [1, 1] });
  const hf = fromNetwork(net);
  net.dispose();
  const sd = (w: number[], b: number[]) =>
    new Map([
      ["linear.0.weight", hostTensor([2, 2], Float32Array.from(w))],
      ["linear.0.bias", hostTensor([2], Float32Array.from(b))],
    ]);
  hf.weights.set(2, [sd(kw, kb), sd(vw, vb)]);
  return hf;
}

function saved(dir: string, name: string, hf: HypernetworkFile): string {
  const f = path.join(dir, `${name}.pt`);
  writeHypernetworkFile(hf, f);
  return f;
}

describe("merging (weighted sum of weights)", () => {
  it("0.5·A + 0.25·B − 1·C, element by element, written as a .pt and read back", () => {
    const dir = tmp();
    const a = saved(dir, "a", oneLinear("a", [1, 2, 3, 4], [1, -1], [0, 0, 0, 0], [8, 8]));
    const b = saved(dir, "b", oneLinear("b", [10, 20, 30, 40], [4, 4], [4, 0, 0, 4], [0, -4]));
    const c = saved(dir, "c", oneLinear("c", [1, 1, 1, 1], [0, 0], [0, 1, 1, 0], [1, 1]));
    const out = path.join(dir, "ab.pt");
    mergeHypernetworkFiles(
      [
        { file: a, weight: 0.5 },
        { file: b, weight: 0.25 },
        { file: c, weight: -1 },
      ],
      out,
      { name: "ab" },
    );
    const m = readHypernetworkFile(out);
    const [k, v] = m.weights.get(2)!;
    // k weight: 0.5·[1,2,3,4] + 0.25·[10,20,30,40] − [1,1,1,1] = [2, 5, 8, 11]
    expect([...k.get("linear.0.weight")!.data]).toEqual([2, 5, 8, 11]);
    expect([...k.get("linear.0.bias")!.data]).toEqual([1.5, 0.5]); // 0.5·[1,−1] + 0.25·[4,4] − 0
    expect([...v.get("linear.0.weight")!.data]).toEqual([1, -1, -1, 1]); // 0.25·[4,0,0,4] − [0,1,1,0]
    expect([...v.get("linear.0.bias")!.data]).toEqual([3, 2]); // 0.5·[8,8] + 0.25·[0,−4] − [1,1] = [4 − 1, 4 − 1 − 1]
    expect(m.info.name).toBe("ab");
    expect(m.info.step).toBe(0);
    expect(m.info.optionalInfo).toBe(`merged: 0.5 × ${a} + 0.25 × ${b} + -1 × ${c}`);
    expect(m.info.layerStructure).toEqual([1, 1]);
  });

  it("refuses to replace an existing file", () => {
    const dir = tmp();
    const a = saved(dir, "a", oneLinear("a", [1, 2, 3, 4], [0, 0], [1, 2, 3, 4], [0, 0]));
    expect(() => mergeHypernetworkFiles([{ file: a, weight: 1 }], a)).toThrow(/exists/);
  });

  it("different structures are refused with both files named", () => {
    const dir = tmp();
    const mk = (name: string, o: Partial<CreateOptions>): string => {
      const net = createHypernetwork({ name, dims: [8, 16], ...o });
      const hf = fromNetwork(net);
      net.dispose();
      return saved(dir, name, hf);
    };
    const base = mk("base", {});
    const cases: Array<[string, Partial<CreateOptions>, RegExp]> = [
      ["deeper", { layerStructure: [1, 2, 2, 1] }, /layer_structure \[1,2,1\] in .*base\.pt, \[1,2,2,1\] in .*deeper\.pt/],
      ["relu", { activation: "relu" }, /activation "linear" in .*base\.pt, "relu" in .*relu\.pt/],
      ["widths", { dims: [8] }, /widths \[8, 16\] in .*base\.pt, \[8\] in .*widths\.pt/],
      ["ln", { layerNorm: true }, /layer norm false in .*base\.pt, true in .*ln\.pt/],
    ];
    for (const [name, o, re] of cases) {
      const other = mk(name, o);
      const err = (() => {
        try {
          mergeHypernetworkFiles(
            [
              { file: base, weight: 0.5 },
              { file: other, weight: 0.5 },
            ],
            path.join(dir, `out-${name}.pt`),
          );
        } catch (e) {
          return (e as Error).message;
        }
        return "no error";
      })();
      expect(err).toMatch(re);
      expect(err).toMatch(/only networks with the same structure can be merged/);
      expect(fs.existsSync(path.join(dir, `out-${name}.pt`))).toBe(false);
    }
  });

  it("dropout placement that moves the keys is a different structure; equal placement with other rates merges", () => {
    const f = (name: string, o: Partial<CreateOptions>) => {
      const net = createHypernetwork({ name, dims: [8], activation: "relu", ...o });
      const hf = fromNetwork(net);
      net.dispose();
      return hf;
    };
    const plain = f("plain", {});
    const d1 = f("d1", { useDropout: true, dropoutStructure: [0, 0.1, 0] });
    const d2 = f("d2", { useDropout: true, dropoutStructure: [0, 0.3, 0] });
    expect(() =>
      mergeHypernetworkData([
        { file: plain, weight: 1, where: "plain.pt" },
        { file: d1, weight: 1, where: "d1.pt" },
      ]),
    ).toThrow(/plain\.pt and d1\.pt have different structures: the width 8 k module holds linear\.0\.weight.*dropout placement differs/);
    const m = mergeHypernetworkData([
      { file: d1, weight: 1, where: "d1.pt" },
      { file: d2, weight: 1, where: "d2.pt" },
    ]);
    expect(m.info.dropoutStructure).toEqual([0, 0.1, 0]);
  });

  it("refuses a non-finite weight and an empty list", () => {
    const a = oneLinear("a", [1, 2, 3, 4], [0, 0], [1, 2, 3, 4], [0, 0]);
    expect(() => mergeHypernetworkData([{ file: a, weight: Number.NaN, where: "a.pt" }])).toThrow(
      /merge weight for a\.pt must be a finite number/,
    );
    expect(() => mergeHypernetworkData([])).toThrow(/at least one network/);
  });

  it("the merged .pt loads in an A1111-style PyTorch loader and computes what hypernet-lab computes", { timeout: 120_000 }, (ctx) => {
    skipWithoutTorch(ctx, "A1111 load of a merged file");
    const dir = tmp();
    const o: Partial<CreateOptions> = { dims: [24], activation: "relu", layerNorm: true, weightInit: "XavierNormal" };
    const files = [1, 2].map((seed) => {
      const net = createHypernetwork({ name: `n${seed}`, seed, ...o });
      const hf = fromNetwork(net);
      net.dispose();
      return saved(dir, `n${seed}`, hf);
    });
    const out = path.join(dir, "merged.pt");
    mergeHypernetworkFiles(
      [
        { file: files[0]!, weight: 0.7 },
        { file: files[1]!, weight: 0.3 },
      ],
      out,
    );
    const x = new Float32Array(3 * 24).map((_, i) => Math.sin(i * 0.7) * 2);
    const inp = path.join(dir, "x.bin");
    fs.writeFileSync(inp, Buffer.from(x.buffer));
    const r = spawnSync("/usr/bin/python3", [path.join(__dirname, "scripts", "a1111_load.py"), out, inp, "24", "1"], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const py = JSON.parse(r.stdout) as { k: number[]; v: number[] };
    const net = loadHypernetwork(out);
    for (const which of ["k", "v"] as const) {
      const ours = tf.tidy(() => net.apply(which, tf.tensor2d(x, [3, 24])).dataSync() as Float32Array);
      expectClose(ours, py[which], 1e-5, 1e-5);
    }
    net.dispose();
  });

  it("live networks: the merged network's weights are the weighted sums, and nothing leaks", async () => {
    const a = createHypernetwork({ name: "a", dims: [8], seed: 1 });
    const b = createHypernetwork({ name: "b", dims: [8], seed: 2 });
    const m = await expectNoLeak(() => {
      const merged = mergeHypernetworks(
        [
          { network: a, weight: 2 },
          { network: b, weight: -0.5 },
        ],
        { name: "mix" },
      );
      const n = merged.namedParameters().length;
      merged.dispose();
      return n;
    });
    expect(m).toBe(8);
    const merged = mergeHypernetworks([
      { network: a, weight: 2 },
      { network: b, weight: -0.5 },
    ]);
    const pa = a.namedParameters();
    const pb = b.namedParameters();
    merged.namedParameters().forEach(([name, p], i) => {
      expect(name).toBe(pa[i]![0]);
      const want = (pa[i]![1].value.dataSync() as Float32Array).map((x, e) =>
        Math.fround(2 * x + -0.5 * (pb[i]![1].value.dataSync()[e] ?? 0)),
      );
      expect(p.value.dataSync()).toEqual(want);
    });
    expect(merged.name).toBe("a-merged");
    for (const n of [a, b, merged]) n.dispose();
  });
});
