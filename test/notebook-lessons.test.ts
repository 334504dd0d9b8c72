/**
 * The helpers the teaching notebooks measure with, on the embedded tiny model:
 *
 * - `styleCheck` (notebooks 01 and 03): its scores are the demo's scores of the images that
 *   `sampleTiny` makes with the network attached (recomputed here from those images), ×0 is the
 *   bare model, its table prints one parseable row per multiplier, and no tensors are left.
 * - `writePastelSet`: the demo's style set with content-only captions.
 * - `attentionMaps` (notebook 02): each network row's per-token difference is the mean |Δ| of the
 *   shown maps, "largest" shows the layer whose captured maps the network changes most (found
 *   here from the capture processor directly), and an unknown layer is refused with the names.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { scoreImages } from "../src/demo/report";
import { DEMO_SETTINGS, demoPrompts } from "../src/demo/settings";
import { Rng, randn } from "../src/diffusion/random";
import { attachHypernetworks } from "../src/hypernet/attach";
import { createHypernetwork, type Hypernetwork } from "../src/hypernet/network";
import { attentionMaps } from "../src/kernel-helpers/attention-maps";
import { setOutputDir } from "../src/kernel-helpers/display";
import { styleCheck, writePastelSet } from "../src/kernel-helpers/style-check";
import type { BaseModel } from "../src/pipeline/base-model";
import { loadTinyModel } from "../src/tiny/model";
import { sampleTiny } from "../src/tiny/sample";
import { pastelStyleSet } from "../src/tiny/shapes-data/style";
import { expectNoLeak, setupBackend } from "./helpers/tf";

let tmp: string;
let base: BaseModel;
let net: Hypernetwork;
const previousOutputDir = process.env.HYPERNET_OUTPUT_DIR;

beforeAll(async () => {
  await setupBackend();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-lessons-"));
  setOutputDir(path.join(tmp, "shown"));
  base = loadTinyModel();
  net = createHypernetwork({
    name: "lesson",
    dims: base.contextDims,
    layerStructure: [1, 2, 1],
    activation: "relu",
    weightInit: "XavierNormal",
    seed: 4,
  });
});

afterAll(() => {
  net.dispose();
  base.dispose();
  setOutputDir(previousOutputDir ?? path.resolve("hypernet-output"));
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Run `fn` with stdout captured. */
async function quietly<T>(fn: () => Promise<T>): Promise<{ value: T; printed: string }> {
  let printed = "";
  const spy = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
    printed += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8");
    return true;
  });
  try {
    return { value: await fn(), printed };
  } finally {
    spy.mockRestore();
  }
}

describe("styleCheck", () => {
  it("scores what sampleTiny draws with the network attached (the demo's sampler and seed), ×0 being the bare model", async () => {
    const gate: [number, number] = [0, 250];
    const { value: r, printed } = await quietly(() =>
      expectNoLeak(() => styleCheck(base, net, { prompts: 2, multipliers: [1, 0], applyTimesteps: gate, show: 2, cell: 32 })),
    );
    const set = demoPrompts(2);
    const sampleAt = async (m: number | null): Promise<Uint8Array[]> => {
      const att = m === null ? undefined : attachHypernetworks(base.unet, [{ network: net, multiplier: m, timesteps: gate }]);
      try {
        return await sampleTiny(
          base,
          set.map((p) => p.prompt),
          { seed: DEMO_SETTINGS.sampleSeed, steps: DEMO_SETTINGS.sampleSteps, guidanceScale: DEMO_SETTINGS.cfg },
        );
      } finally {
        att?.detach();
      }
    };
    const expected = set.map((p) => p.expected);
    // Sorted by multiplier; ×0 scores the bare model's images, ×1 the attached network's.
    expect(r.scores.map((s) => s.multiplier)).toEqual([0, 1]);
    expect(r.scores[0]).toEqual(scoreImages(0, await sampleAt(null), expected));
    expect(r.scores[1]).toEqual(scoreImages(1, await sampleAt(1), expected));
    expect(r.rise).toBeCloseTo(r.scores[1]!.styleScore - r.scores[0]!.styleScore, 12);
    expect(r.prompts).toEqual(set.map((p) => p.prompt));
    // The printed table has one row per multiplier in the form test-notebooks parses.
    const rows = [...printed.matchAll(/^\s*×([\d.]+) │ ([\d.]+) │\s*(\d+)% │\s*(\d+)%\s*$/gm)];
    expect(rows.map((m) => Number(m[1]))).toEqual([0, 1]);
    expect(Number(rows[1]![2])).toBeCloseTo(r.scores[1]!.styleScore, 3);
    expect(printed).toMatch(/applied at timesteps \[0, 250\)/);
  }, 300_000);
});

describe("writePastelSet", () => {
  it("writes the demo's pastel images with their content-only captions, and refuses to replace them unasked", async () => {
    const dir = path.join(tmp, "pastel");
    const { value: r } = await quietly(() => writePastelSet(dir, { count: 3, seed: 5 }));
    const set = pastelStyleSet(3, 5);
    expect(r.images).toBe(3);
    expect(fs.readdirSync(dir).sort()).toEqual([
      "pastel-000.png",
      "pastel-000.txt",
      "pastel-001.png",
      "pastel-001.txt",
      "pastel-002.png",
      "pastel-002.txt",
    ]);
    expect(fs.readFileSync(path.join(dir, "pastel-001.txt"), "utf8")).toBe(set[1]!.caption);
    expect(set[1]!.caption).toMatch(/, black background$/);
    await expect(writePastelSet(dir, { count: 3, seed: 5 })).rejects.toThrow(/pastel-000\.png already exists/);
  });
});

describe("attentionMaps differences", () => {
  let image: tf.Tensor4D;
  const prompt = "a large red circle on the left, black background";
  beforeAll(() => {
    image = tf.tidy(() => randn([1, base.imageSize, base.imageSize, 3], new Rng(3)).clipByValue(-1, 1) as tf.Tensor4D);
  });
  afterAll(() => image.dispose());

  it("prints each token's mean |Δ| of the shown maps, and 'largest' shows the layer the network changes most", async () => {
    const { value: mean } = await quietly(() => expectNoLeak(() => attentionMaps(base, prompt, image, { networks: [{ network: net }] })));
    expect(mean.layer).toBe("mean");
    const meanAbs = (a: Float32Array, b: Float32Array): number => a.reduce((s, v, i) => s + Math.abs(v - b[i]!), 0) / a.length;
    expect(mean.rows[0]!.difference.every((d) => d === 0)).toBe(true);
    mean.rows[1]!.maps.forEach((m, j) => expect(mean.rows[1]!.difference[j]).toBeCloseTo(meanAbs(m, mean.rows[0]!.maps[j]!), 9));
    // One change per cross-attention layer; the largest is the one shown by "largest".
    const cross = base.unet.attentionLayers().filter(([, l]) => !l.isSelfAttention);
    expect(mean.layerChanges.map((c) => c.path).sort()).toEqual(cross.map(([p]) => p).sort());
    const top = mean.layerChanges.reduce((a, b) => (b.change > a.change ? b : a));
    expect(top.change).toBeGreaterThan(0);
    const { value: one, printed } = await quietly(() =>
      attentionMaps(base, prompt, image, { networks: [{ network: net }], layer: "largest" }),
    );
    expect(one.layer).toBe(top.path);
    // On a single layer the shown difference of the top token is that layer's own change (nearest upsampling keeps means).
    const k = one.tokens.indexOf(top.token);
    expect(one.rows[1]!.difference[k]).toBeCloseTo(top.change, 6);
    expect(printed).toContain(`layer ${top.path}: mean |Δ attention| per token`);
    await expect(quietly(() => attentionMaps(base, prompt, image, { layer: "nope" }))).rejects.toThrow(
      /no cross-attention layer "nope"; the model has/,
    );
  }, 120_000);
});
