/**
 * `npm run demo` at toy size (`--quick`: 3 training steps, 2 prompts, 3 sampling steps): every output
 * file exists and is what it claims to be. Also the pieces the demo adds: the fixed prompt set, the
 * content-accuracy score, and the loss chart drawn as SVG → PNG without a browser.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { beforeAll, describe, expect, it } from "vitest";
import { DEMO_SETTINGS, QUICK_SETTINGS, demoPrompts, runDemo, type DemoSummary } from "../src/demo/run";
import { main } from "../src/cli/main";
import { readHypernetworkFile } from "../src/hypernet/file";
import { lossChartPng, lossChartSvg, niceTicks } from "../src/kernel-helpers/charts";
import { contentAccuracy } from "../src/tiny/shapes-data/classify";
import { loadTinyModel } from "../src/tiny/model";
import { captionVocabulary, COLOR_NAMES, SHAPES, shapeSamples } from "../src/tiny/shapes-data/shapes";
import { setupBackend } from "./helpers/tf";

describe("demo --quick", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "hn-demo-"));
  let summary: DemoSummary;
  const lines: string[] = [];

  beforeAll(async () => {
    // The timestep gate (an option; the demo applies the network in every step by default) is
    // set here so that both paths, gated and every step, are exercised. Modules on every width and
    // A1111's Normal init (not the demo's identity start) make 3 toy steps change the images
    // visibly; the identity start is exercised below.
    summary = await runDemo({
      out,
      quick: true,
      progress: false,
      settings: { applyTimesteps: [0, 250], dims: "all", zeroLastLayer: false },
      log: (l) => lines.push(l),
    });
  }, 120_000);

  it("writes a hypernetwork .pt that readHypernetworkFile loads, with the tiny model's attention widths", () => {
    const hf = readHypernetworkFile(path.join(out, "pastel.pt"));
    expect(hf.format).toBe("a1111");
    expect(hf.info.name).toBe("pastel");
    expect(hf.info.step).toBe(3);
    expect(hf.info.layerStructure).toEqual([1, 2, 1]);
    const base = loadTinyModel();
    const widths = [...new Set(base.unet.attentionLayers().map(([, l]) => l.contextDim))].sort((a, b) => a - b);
    base.dispose();
    expect([...hf.weights.keys()].sort((a, b) => a - b)).toEqual(widths);
  });

  it("writes loss.csv with A1111's header and one row per step", () => {
    const rows = fs.readFileSync(path.join(out, "loss.csv"), "utf8").trim().split("\n");
    expect(rows[0]).toBe("step,epoch,epoch_step,loss,learn_rate");
    expect(rows.slice(1).map((r) => Number(r.split(",")[0]))).toEqual([1, 2, 3]);
    for (const r of rows.slice(1)) {
      const [, , , loss, lr] = r.split(",").map(Number);
      expect(loss).toBeGreaterThan(0);
      expect([9e-3, 4.5e-3]).toContain(lr);
    }
  });

  it("writes the loss chart as a self-contained Plotly page and as a PNG", async () => {
    const html = fs.readFileSync(path.join(out, "loss.html"), "utf8");
    expect(html).toContain("Plotly.react");
    expect(html).toContain("if (!window.Plotly)"); // the bundle is embedded: no network, no node_modules path
    const meta = await sharp(path.join(out, "loss.png")).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(["png", 720, 360]);
  });

  it("writes before/after preview grids: one row per prompt, one column per multiplier", async () => {
    for (const f of ["preview-before.png", "preview-after.png", "preview-after-every-step.png"]) {
      const meta = await sharp(path.join(out, f)).metadata();
      expect(meta.format).toBe("png");
      expect(meta.width).toBe(3 * 128);
      // Two rows of a 128 px image plus three caption lines each.
      expect(meta.height! % 2).toBe(0);
      expect(meta.height! / 2).toBeGreaterThan(128);
    }
  });

  it("applies the trained network only in the gated steps: the gated and every-step previews differ where the multiplier is not 0", async () => {
    // (×0 images are reused from the untrained run — multiplier 0 is the plain UNet, tested in
    // attach.test.ts — so only the ×0.5 and ×1 columns are sampled twice, once per gate.)
    const read = (f: string) => sharp(path.join(out, f)).raw().toBuffer({ resolveWithObject: true });
    const gated = await read("preview-after.png");
    const every = await read("preview-after-every-step.png");
    expect([every.info.width, every.info.height]).toEqual([gated.info.width, gated.info.height]);
    const { width, height, channels } = gated.info;
    let differing = 0;
    for (let y = 0; y < height; y++) {
      for (let x = 128; x < width; x++) {
        const i = (y * width + x) * channels;
        if (Math.abs(gated.data[i]! - every.data[i]!) > 8) differing++;
      }
    }
    expect(differing).toBeGreaterThan(100);
  });

  it("writes summary.json with the style score and colour/shape accuracy at each multiplier", () => {
    const json = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8")) as DemoSummary;
    expect(json).toEqual(summary);
    expect(json.backend).toBe(tf.getBackend());
    expect(json.prompts).toHaveLength(2);
    expect(json.training.steps).toBe(3);
    expect(json.settings.applyTimesteps).toEqual([0, 250]);
    for (const rows of [json.before, json.after, json.afterEveryStep!]) {
      expect(rows.map((r) => r.multiplier)).toEqual([0, 0.5, 1]);
      for (const r of rows) {
        // Two prompts: an accuracy is the share of the two images that are right.
        expect([0, 0.5, 1]).toContain(r.colorAccuracy);
        expect([0, 0.5, 1]).toContain(r.shapeAccuracy);
        expect(r.styleScore).toBeGreaterThanOrEqual(0); // 0: fully saturated colours (3 toy sampling steps)
        expect(r.styleScore).toBeLessThan(1);
      }
    }
    // ×0 is the base model: the same images before and after training, gated or not.
    expect(json.after[0]).toEqual(json.before[0]);
    expect(json.afterEveryStep![0]).toEqual(json.before[0]);
    // The checks are what the rows say, worked out here independently.
    const styles = json.after.map((r) => r.styleScore);
    expect(json.checks.styleRisesWithMultiplier).toBe(styles.every((v, i) => i === 0 || v > styles[i - 1]!));
    const base = json.before[0]!;
    const kept = json.after.every((r) => r.colorAccuracy >= base.colorAccuracy - 0.15 && r.shapeAccuracy >= base.shapeAccuracy - 0.15);
    expect(json.checks.contentWithin15Points).toBe(kept);
    const kept10 = json.after.every((r) => r.colorAccuracy >= base.colorAccuracy - 0.1 && r.shapeAccuracy >= base.shapeAccuracy - 0.1);
    expect(json.checks.contentWithin10Points).toBe(kept10);
    expect(json.styleSetScore).toBeGreaterThan(0.55); // the pastel colours themselves
    for (const f of Object.values(json.files)) expect(fs.existsSync(f)).toBe(true);
  });

  it("applies the network in every sampling step by default, as A1111 does (the gate is an option)", () => {
    expect(DEMO_SETTINGS.applyTimesteps).toBeNull();
    expect(QUICK_SETTINGS.applyTimesteps).toBeNull();
  });

  it("prints progress and a final summary table", () => {
    const text = lines.join("\n");
    expect(text).toMatch(/tfjs backend: /);
    expect(text).toMatch(/training reached Max steps 3/);
    expect(text).toMatch(/multiplier │ style/);
    expect(text).toMatch(/×0\.5 │/);
  });

  it("replaces its own outputs on a second run instead of failing on existing files; with zeroLastLayer (the default) the untrained network is sampled once, at ×0", async () => {
    expect(DEMO_SETTINGS.zeroLastLayer).toBe(true);
    const log: string[] = [];
    const s = await runDemo({ out, quick: true, progress: false, settings: { prompts: 1, multipliers: [0, 1] }, log: (l) => log.push(l) });
    expect(readHypernetworkFile(path.join(out, "pastel.pt")).info.step).toBe(3);
    expect((JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8")) as DemoSummary).prompts).toHaveLength(1);
    // Sampled: ×0 before training (it stands for ×1 too: the untrained network is the identity),
    // ×1 after (×0 is reused); the first run, with Normal init, sampled ×0, ×0.5 and ×1 before.
    expect(log.filter((l) => /^ {2}sampled 1 prompts at ×/.test(l))).toHaveLength(2);
    const untrainedLines = lines.slice(
      0,
      lines.findIndex((l) => /sampling with the trained network/.test(l)),
    );
    expect(untrainedLines.filter((l) => /^ {2}sampled 2 prompts at ×/.test(l))).toHaveLength(3);
    expect(s.before[1]).toEqual({ ...s.before[0], multiplier: 1 });
  }, 60_000);

  it("gives modules only to the widths in settings.dims, and refuses a width the model does not have (no tensors left behind)", async () => {
    const s = await runDemo({
      out,
      quick: true,
      progress: false,
      settings: { prompts: 1, multipliers: [0, 1], dims: [64, 96] },
      log: () => {},
    });
    expect([...readHypernetworkFile(s.files.hypernetwork!).weights.keys()].sort((a, b) => a - b)).toEqual([64, 96]);
    const before = tf.memory().numTensors;
    await expect(runDemo({ out, quick: true, progress: false, settings: { dims: [64, 768] }, log: () => {} })).rejects.toThrow(
      /\[768\] are not attention widths .*it has 32, 64, 80, 96/,
    );
    expect(tf.memory().numTensors).toBe(before);
  }, 60_000);
});

describe("hypernet demo (CLI)", () => {
  it("rejects a --out without a value", async () => {
    const err: string[] = [];
    const orig = console.error;
    console.error = (m: string) => err.push(m);
    try {
      expect(await main(["demo", "--out"])).toBe(2);
    } finally {
      console.error = orig;
    }
    expect(err.join("\n")).toMatch(/--out needs a value/);
  });
});

describe("demoPrompts", () => {
  it("covers all 36 shape × colour pairs once in its first 36 prompts, in the tiny model's vocabulary", () => {
    const set = demoPrompts(36);
    const pairs = new Set(set.map((p) => `${p.expected.shape}/${p.expected.color}`));
    expect(pairs.size).toBe(SHAPES.length * COLOR_NAMES.length);
    const vocab = new Set(captionVocabulary());
    for (const { prompt, expected } of set) {
      expect(prompt).toContain(` ${expected.color} ${expected.shape} `);
      expect(prompt.endsWith(", black background")).toBe(true);
      for (const w of prompt.replace(",", " ,").split(" ")) expect(vocab.has(w)).toBe(true);
    }
    expect(() => demoPrompts(0)).toThrow(/positive integer/);
  });
});

describe("contentAccuracy", () => {
  const samples = shapeSamples(2024, 0, 12);
  it("scores ground-truth images against their own scenes as (nearly) all right", () => {
    const acc = contentAccuracy(
      samples.map((s) => s.scene),
      samples.map((s) => s.pixels),
    );
    expect(acc.colorAccuracy).toBe(1);
    expect(acc.shapeAccuracy).toBeGreaterThanOrEqual(11 / 12);
    expect(acc.backgroundAccuracy).toBe(1);
    expect(acc.perImage).toHaveLength(12);
  });
  it("scores images against the wrong colours as all wrong, and says which", () => {
    const wrong = samples.map((s) => ({ ...s.scene, color: COLOR_NAMES[(COLOR_NAMES.indexOf(s.scene.color) + 1) % COLOR_NAMES.length]! }));
    const acc = contentAccuracy(
      wrong,
      samples.map((s) => s.pixels),
    );
    expect(acc.colorAccuracy).toBe(0);
    expect(acc.perImage.every((c) => !c.colorOk)).toBe(true);
    expect(() =>
      contentAccuracy(
        wrong.slice(1),
        samples.map((s) => s.pixels),
      ),
    ).toThrow(/11 prompts but 12 images/);
  });
});

describe("loss chart PNG (SVG, no browser)", () => {
  beforeAll(() => setupBackend());
  const points = Array.from({ length: 50 }, (_, i) => ({ step: i + 1, loss: 0.5 / (i + 1) + 0.05, lr: i < 20 ? 1e-3 : 1e-4 }));

  it("rasterises to a PNG of the requested size", async () => {
    const png = await lossChartPng(points, { width: 600, height: 300, title: "t" });
    const meta = await sharp(png).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(["png", 600, 300]);
  });

  it("draws the raw and smoothed loss and the learning rate, with a log axis when the rate spans decades", () => {
    const svg = lossChartSvg(points);
    expect(svg.match(/<path /g)).toHaveLength(3);
    expect(svg).toContain("learning rate (log)");
    expect(svg).toContain(">smoothed (β=0.9)<");
    const flat = lossChartSvg(
      points.map((p) => ({ ...p, lr: 1e-3 })),
      { smoothing: 0 },
    );
    expect(flat.match(/<path /g)).toHaveLength(2);
    expect(flat).not.toContain("(log)");
  });

  it("survives no points, one point and a NaN loss (the line breaks at it)", async () => {
    for (const pts of [
      [],
      [{ step: 1, loss: 0.2 }],
      [
        { step: 1, loss: 0.2 },
        { step: 2, loss: NaN },
        { step: 3, loss: 0.1 },
      ],
    ]) {
      const meta = await sharp(await lossChartPng(pts)).metadata();
      expect(meta.width).toBe(720);
    }
    const broken = lossChartSvg(
      [
        { step: 1, loss: 0.2 },
        { step: 2, loss: 0.3 },
        { step: 3, loss: NaN },
        { step: 4, loss: 0.1 },
        { step: 5, loss: 0.1 },
      ],
      { smoothing: 0 },
    );
    const d = /<path d="([^"]*)"/.exec(broken)![1]!;
    expect(d.match(/M/g)).toHaveLength(2);
    expect(() => lossChartSvg(points, { width: 10 })).toThrow(/at least 200×150/);
  });

  it("picks 1-2-5 ticks", () => {
    expect(niceTicks(0, 1)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(0.03, 0.47)).toEqual([0.1, 0.2, 0.3, 0.4]);
    expect(niceTicks(0, 200)).toEqual([0, 50, 100, 150, 200]);
  });
});
