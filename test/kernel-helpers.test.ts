/**
 * The notebook helpers outside a notebook (src/kernel-helpers): chart builders against values
 * computed here, the files display adapter (one file per live display, rewritten in place), the
 * step functions on the toy model (layer tables from the A1111 layer rules, save/load round trip
 * with the file's own SHA-256, multiplier 0 = the bare model, a short live training run), and
 * attention-map capture on the embedded tiny model (probabilities sum to 1, processors restored,
 * a hypernetwork changes the maps). Every tfjs-facing call is checked for leaked tensors.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Rng, randn } from "../src/diffusion/random";
import { attachHypernetworks } from "../src/hypernet/attach";
import { planLayers } from "../src/hypernet/module";
import { createHypernetwork, structureOf, type Hypernetwork } from "../src/hypernet/network";
import { attentionCaptureProcessor, attentionMaps, type LayerAttention } from "../src/kernel-helpers/attention-maps";
import { type Figure, figureHtml, lossFigure, lrTicks, normsFigure, smoothEma } from "../src/kernel-helpers/charts";
import { displayMode, getOutputDir, liveDisplay, setOutputDir, show } from "../src/kernel-helpers/display";
import { describeHypernetwork } from "../src/kernel-helpers/steps";
import * as verbs from "../src/kernel-helpers/steps";
import type { BaseModel } from "../src/pipeline/base-model";
import { clearHypernetworkCache } from "../src/hypernet/prompt-networks";
import { txt2img } from "../src/pipeline/txt2img";
import { loadTinyModel } from "../src/tiny/model";
import { expectClose, expectNoLeak, setupBackend } from "./helpers/tf";
import { TOY_TEMPLATE, makeToyBase, makeToyDataset, makeToyNet } from "./helpers/train-setup";

let tmp: string;
let outDir: string;
const previousOutputDir = process.env.HYPERNET_OUTPUT_DIR;

beforeAll(async () => {
  await setupBackend();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hn-kernel-helpers-"));
  outDir = path.join(tmp, "out");
  setOutputDir(outDir);
});

afterAll(() => {
  setOutputDir(previousOutputDir ?? path.resolve("hypernet-output"));
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Run `fn` with stdout captured; returns its result and what it printed. */
async function captureStdout<T>(fn: () => T | Promise<T>): Promise<{ value: T; printed: string }> {
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

/** Bias-corrected EMA written as what it is: a weighted mean with weights β^(n−k) over the finite values so far. */
function weightedMeanEma(values: number[], beta: number): number[] {
  return values.map((_, i) => {
    const seen = values.slice(0, i + 1).filter(Number.isFinite);
    if (seen.length === 0) return NaN;
    let num = 0;
    let den = 0;
    seen.forEach((x, k) => {
      const w = beta ** (seen.length - 1 - k);
      num += w * x;
      den += w;
    });
    return num / den;
  });
}

// ---- charts ----------------------------------------------------------------------------------------

describe("smoothEma", () => {
  it("matches hand-computed bias-corrected values", () => {
    // β = 0.5 on [4, 2, 6]: m = 2, 2, 4; corrections 1−β^n = 0.5, 0.75, 0.875.
    expectClose(smoothEma([4, 2, 6], 0.5), [4, 2 / 0.75, 4 / 0.875], 1e-12);
  });

  it("equals the β^(n−k)-weighted mean of the values so far (random series, several β)", () => {
    const rng = new Rng(7);
    const xs = Array.from(rng.uniform(200), (u) => 0.05 + u);
    for (const beta of [0, 0.3, 0.9, 0.99]) expectClose(smoothEma(xs, beta), weightedMeanEma(xs, beta), 1e-12, 1e-12);
    // β = 0 is no smoothing at all; the first value is never pulled toward 0.
    expect(smoothEma(xs, 0)).toEqual(xs);
    expect(smoothEma(xs, 0.99)[0]).toBeCloseTo(xs[0]!, 12);
  });

  it("skips non-finite values (the curve carries over) and is NaN until the first finite value", () => {
    const out = smoothEma([NaN, 4, Infinity, 2, NaN], 0.5);
    expect(out[0]).toBeNaN();
    expectClose(out.slice(1), [4, 4, 2 / 0.75, 2 / 0.75], 1e-12);
    expectClose(smoothEma([NaN, 4, Infinity, 2, NaN], 0.5).slice(1), weightedMeanEma([NaN, 4, Infinity, 2, NaN], 0.5).slice(1), 1e-12);
  });

  it("rejects β outside [0, 1)", () => {
    expect(() => smoothEma([1], 1)).toThrow(/smoothing must be in \[0, 1\)/);
    expect(() => smoothEma([1], -0.1)).toThrow(/smoothing/);
    expect(() => smoothEma([1], NaN)).toThrow(/smoothing/);
  });
});

type Trace = { name?: string; type?: string; mode?: string; x: number[]; y: number[]; yaxis?: string };

describe("lossFigure", () => {
  const points = Array.from({ length: 10 }, (_, i) => ({ step: i + 1, loss: 1 / (i + 1) + (i % 2) * 0.05, lr: i < 5 ? 1e-3 : 1e-4 }));

  it("has the loss, its smoothed curve, checkpoint markers at the given steps and the LR on a second log axis", () => {
    const fig = lossFigure(points, { smoothing: 0.8, checkpoints: [3, 7, 99], previews: [5], totalSteps: 20, title: "T" });
    const traces = fig.data as Trace[];
    const byName = (re: RegExp): Trace => {
      const t = traces.find((d) => re.test(d.name ?? ""));
      expect(t, `trace ${re}`).toBeDefined();
      return t!;
    };
    const loss = byName(/^loss$/);
    expect(loss.x).toEqual(points.map((p) => p.step));
    expect(loss.y).toEqual(points.map((p) => p.loss));
    const smooth = byName(/^smoothed/);
    expect(smooth.x).toEqual(loss.x);
    expectClose(
      smooth.y,
      weightedMeanEma(
        points.map((p) => p.loss),
        0.8,
      ),
      1e-12,
    );
    const ckpt = byName(/checkpoint/);
    expect(ckpt.mode).toBe("markers");
    // Step 99 was never logged, so it has no marker.
    expect(ckpt.x).toEqual([3, 7]);
    expect(ckpt.y).toEqual([points[2]!.loss, points[6]!.loss]);
    const lr = byName(/learning rate/);
    expect(lr.yaxis).toBe("y2");
    expect(lr.y).toEqual(points.map((p) => p.lr));
    for (const t of [loss, smooth, ckpt]) expect(t.yaxis ?? "y").toBe("y");
    const layout = fig.layout as { yaxis2: object; xaxis: { range?: number[] }; title: { text: string }; shapes: object[] };
    // The log axis is labelled at the schedule's own rates, written as 1e-4 / 1e-3 (not Plotly's bare minor digits).
    expect(layout.yaxis2).toMatchObject({
      overlaying: "y",
      side: "right",
      type: "log",
      tickvals: [1e-4, 1e-3],
      ticktext: ["1e-4", "1e-3"],
    });
    expect((ckpt as { cliponaxis?: boolean }).cliponaxis).toBe(false);
    expect(layout.xaxis.range).toEqual([0, 20]);
    expect(layout.title.text).toBe("T");
    expect(layout.shapes).toHaveLength(1);
    expect(layout.shapes[0]).toMatchObject({ x0: 5, x1: 5, xref: "x", yref: "paper" });
  });

  it("lrTicks: the distinct rates of a step schedule, or five log-spaced rates for a smooth one", () => {
    expect(lrTicks([5e-3, 5e-3, 1.5e-3, 6e-4])).toEqual({ tickvals: [6e-4, 1.5e-3, 5e-3], ticktext: ["6e-4", "1.5e-3", "5e-3"] });
    const cosine = Array.from({ length: 50 }, (_, i) => 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + Math.cos((Math.PI * i) / 49)));
    const t = lrTicks(cosine);
    expect(t.tickvals).toHaveLength(5);
    expectClose(t.tickvals!, [1e-5, 10 ** -4.5, 1e-4, 10 ** -3.5, 1e-3], 1e-9);
    expect(t.ticktext).toEqual(["1e-5", "3.2e-5", "1e-4", "3.2e-4", "1e-3"]);
    expect(lrTicks([])).toEqual({});
  });

  it("drops the smoothed curve at smoothing 0, and the LR and checkpoint traces when there are none", () => {
    const fig = lossFigure(
      points.map(({ step, loss }) => ({ step, loss })),
      { smoothing: 0 },
    );
    expect((fig.data as Trace[]).map((d) => d.name)).toEqual(["loss"]);
  });
});

describe("figureHtml", () => {
  it("embeds the figure JSON, calls Plotly.react on the div, and names no network URL", () => {
    const fig = lossFigure(
      [
        { step: 1, loss: 0.5, lr: 1e-3 },
        { step: 2, loss: 0.25, lr: 1e-3 },
      ],
      { checkpoints: [2], title: "a </script><b>x" },
    );
    const html = figureHtml(fig, "loss chart/1");
    const m = /var fig = (.*?); var n = 0;/.exec(html);
    expect(m).not.toBeNull();
    expect(JSON.parse(m![1]!)).toEqual(JSON.parse(JSON.stringify(fig)));
    expect(html).toContain(`<div id="loss_chart_1"`);
    expect(html).toContain(`document.getElementById("loss_chart_1")`);
    expect(html).toContain("window.Plotly.react(");
    // The title's "</script>" must not close the script early: exactly one closing tag.
    expect(html.match(/<\/script>/gi)).toHaveLength(1);
    expect(html).not.toMatch(/https?:\/\//);
    expect(html).not.toMatch(/<script[^>]*\bsrc=/);
  });
});

describe("normsFigure", () => {
  it("is one bar trace with the labels and values in order, from a Map or a record", () => {
    const want = { x: ["768 k", "768 v", "320 k"], y: [0.5, 0.25, 2] };
    for (const input of [
      new Map([
        ["768 k", 0.5],
        ["768 v", 0.25],
        ["320 k", 2],
      ]),
      { "768 k": 0.5, "768 v": 0.25, "320 k": 2 },
    ]) {
      const fig: Figure = normsFigure(input, "norms");
      expect(fig.data).toHaveLength(1);
      expect(fig.data[0]).toMatchObject({ type: "bar", ...want });
      expect((fig.layout.title as { text: string }).text).toBe("norms");
    }
  });
});

// ---- display adapters outside a notebook -----------------------------------------------------------------

describe("display (files mode)", () => {
  it("is in files mode under vitest (no tslab kernel)", () => {
    expect(displayMode()).toBe("files");
  });

  it("show writes the file it reports (HTML wrapped as a page, PNG bytes as given), text only prints", async () => {
    const png = await sharp({ create: { width: 3, height: 2, channels: 3, background: { r: 10, g: 20, b: 30 } } })
      .png()
      .toBuffer();
    const { value, printed } = await captureStdout(() => ({
      html: show("my chart!", { html: "<p>hello</p>" }),
      png: show("pic", { png }),
      text: show("note", { text: "just text" }),
    }));
    expect(value.html).toBe(path.join(outDir, "my-chart.html"));
    expect(fs.readFileSync(value.html!, "utf8")).toMatch(/^<!doctype html>[\s\S]*<title>my chart!<\/title>[\s\S]*<p>hello<\/p>/);
    expect(value.png).toBe(path.join(outDir, "pic.png"));
    expect(fs.readFileSync(value.png!).equals(png)).toBe(true);
    expect(value.text).toBeUndefined();
    expect(printed).toContain(`my chart!: ${value.html}`);
    expect(printed).toContain(`pic: ${value.png}`);
    expect(printed).toContain("just text\n");
    expect(fs.readdirSync(outDir).sort()).toEqual(["my-chart.html", "pic.png"]);
  });

  it("liveDisplay rewrites ONE file in place on every update and reports its path once", async () => {
    const dir = path.join(tmp, "live");
    setOutputDir(dir);
    try {
      const d = liveDisplay("live chart");
      const { printed } = await captureStdout(() => {
        for (let i = 0; i < 7; i++) d.update({ html: `<p>update ${i}</p>` });
      });
      expect(d.updates).toBe(7);
      expect(d.file).toBe(path.join(dir, "live-chart.html"));
      expect(fs.readdirSync(dir)).toEqual(["live-chart.html"]);
      const body = fs.readFileSync(d.file!, "utf8");
      expect(body).toContain("<p>update 6</p>");
      expect(body).not.toContain("update 5");
      expect(printed.split(d.file!).length - 1).toBe(1);
      // Text updates print lines and write no file.
      const p = liveDisplay("progress");
      const { printed: lines } = await captureStdout(() => {
        p.update({ text: "step 1" });
        p.update({ text: "step 2" });
      });
      expect(p.file).toBeUndefined();
      expect(lines).toContain("step 2");
      expect(fs.readdirSync(dir)).toEqual(["live-chart.html"]);
    } finally {
      setOutputDir(outDir);
    }
  });

  it("setOutputDir is respected (resolved to an absolute path)", async () => {
    const rel = path.relative(process.cwd(), path.join(tmp, "elsewhere"));
    setOutputDir(rel);
    try {
      expect(getOutputDir()).toBe(path.join(tmp, "elsewhere"));
      const { value } = await captureStdout(() => show("x", { html: "x" }));
      expect(value).toBe(path.join(tmp, "elsewhere", "x.html"));
      expect(fs.existsSync(value!)).toBe(true);
    } finally {
      setOutputDir(outDir);
    }
    expect(getOutputDir()).toBe(outDir);
  });
});

// ---- step functions on the toy model --------------------------------------------------------------------

/** The layer list A1111 builds for one module (independent of the code under test). */
function expectedLayers(
  dim: number,
  ls: number[],
  act: string,
  layerNorm: boolean,
  dropout: number[],
): { layers: string[]; parameters: number } {
  const layers: string[] = [];
  let idx = 0;
  let parameters = 0;
  for (let i = 0; i < ls.length - 1; i++) {
    const a = Math.trunc(dim * ls[i]!);
    const b = Math.trunc(dim * ls[i + 1]!);
    layers.push(`${idx++}: Linear(${a} → ${b})`);
    parameters += a * b + b;
    if (i < ls.length - 2) layers.push(`${idx++}: ${act}`);
    if (layerNorm) {
      layers.push(`${idx++}: LayerNorm(${b})`);
      parameters += 2 * b;
    }
    if (dropout[i + 1]! > 0) layers.push(`${idx++}: Dropout(p=${dropout[i + 1]})`);
  }
  return { layers, parameters };
}

describe("describeHypernetwork / the createHypernetwork verb", () => {
  it("lists, per width and k/v, the layers of A1111's module plan with their parameter counts", async () => {
    const ls = [1, 1.5, 2, 1];
    const dropout = [0, 0.1, 0.2, 0];
    const dims = [16, 24];
    const opts = {
      name: "tbl",
      dims,
      layerStructure: ls,
      activation: "relu",
      layerNorm: true,
      useDropout: true,
      dropoutStructure: dropout,
      seed: 4,
    };
    const before = tf.memory().numTensors;
    const { value: net, printed } = await captureStdout(() => verbs.createHypernetwork(opts));
    try {
      const rows = describeHypernetwork(net);
      expect(rows.map((r) => [r.dim, r.which])).toEqual([
        [16, "k"],
        [16, "v"],
        [24, "k"],
        [24, "v"],
      ]);
      let total = 0;
      for (const r of rows) {
        const want = expectedLayers(r.dim, ls, "relu", true, dropout);
        expect(r.layers).toEqual(want.layers);
        expect(r.parameters).toBe(want.parameters);
        total += want.parameters;
        // The same kinds and widths as planLayers gives the module.
        const plan = planLayers(r.dim, structureOf(net.info));
        expect(plan.map((p) => p.kind)).toEqual(
          want.layers.map((l) =>
            /Linear/.test(l) ? "linear" : /LayerNorm/.test(l) ? "layernorm" : /Dropout/.test(l) ? "dropout" : "activation",
          ),
        );
      }
      expect(printed).toContain("tbl:");
      expect(printed).toContain(`${total} parameters`);
      // the createHypernetwork verb = core createHypernetwork (same seed → same weights) plus the table.
      const ref = createHypernetwork(opts);
      try {
        expect(weights(net)).toEqual(weights(ref));
      } finally {
        ref.dispose();
      }
    } finally {
      net.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});

/** Every parameter of a network by path, as plain arrays. */
function weights(net: Hypernetwork): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [dim, pair] of net.modules) {
    pair.forEach((m, i) => {
      for (const [p, param] of m.namedParameters()) out[`${dim}.${i}.${p}`] = Array.from(param.value.dataSync());
    });
  }
  return out;
}

describe("step functions on the toy model", () => {
  let base: BaseModel;
  let net: Hypernetwork;
  let dataDir: string;
  const prompt = "a photo of red";

  beforeAll(async () => {
    base = makeToyBase();
    net = makeToyNet();
    dataDir = path.join(tmp, "data");
    await makeToyDataset(dataDir);
  });

  afterAll(() => {
    net.dispose();
    base.dispose();
    clearHypernetworkCache();
  });

  it("the saveHypernetwork / loadHypernetwork verbs round-trip the network; the hash is the file's SHA-256 prefix", async () => {
    const file = path.join(tmp, "nets", "toy.pt");
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const { value: rep, printed } = await captureStdout(() => expectNoLeak(() => verbs.saveHypernetwork(net, file)));
    const bytes = fs.readFileSync(file);
    expect(rep).toEqual({
      file: path.resolve(file),
      bytes: bytes.length,
      hash: createHash("sha256").update(bytes).digest("hex").slice(0, 10),
    });
    expect(printed).toContain(rep.hash);
    const before = tf.memory().numTensors;
    const { value: loaded } = await captureStdout(() => verbs.loadHypernetwork(file));
    try {
      expect(describeHypernetwork(loaded)).toEqual(describeHypernetwork(net));
      expect(weights(loaded)).toEqual(weights(net));
      expect(loaded.info.layerStructure).toEqual(net.info.layerStructure);
      expect(loaded.info.activation).toBe(net.info.activation);
    } finally {
      loaded.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it("the txt2img verb: an in-memory network = its prompt tag; neither leaks; files are written", async () => {
    const common = { steps: 2, seed: 11, cfgScale: 3 };
    const viaNet = (
      await captureStdout(() => expectNoLeak(() => verbs.txt2img(base, { ...common, prompt, network: net, multiplier: 0.7 })))
    ).value;
    expect(fs.existsSync(path.join(outDir, "sample-11-0.png"))).toBe(true);
    const viaTag = (
      await captureStdout(() =>
        expectNoLeak(async () => {
          const r = await verbs.txt2img(base, {
            ...common,
            prompt: `${prompt} <hypernet:toy:0.7>`,
            hypernetworkDir: path.join(tmp, "nets"),
          });
          clearHypernetworkCache();
          return r;
        }),
      )
    ).value;
    expect(viaTag.hypernetworks.map((h) => [h.name, h.multiplier])).toEqual([["toy", 0.7]]);
    expect(viaTag.shape).toEqual([1, 8, 8, 3]);
    expectClose(viaTag.pixels, viaNet.pixels, 1e-5);
    // The network is detached afterwards: a bare sample differs from the networked one.
    const bare = await txt2img(base, { ...common, prompt });
    let diff = 0;
    bare.pixels.forEach((v, i) => (diff = Math.max(diff, Math.abs(v - viaNet.pixels[i]!))));
    expect(diff).toBeGreaterThan(1e-3);
  });

  it("multiplierSweep: a seeds × multipliers grid whose ×0 cells are the bare model's samples", async () => {
    const cell = 8; // = the toy image size, so cells are the samples' pixels unresized
    const common = { steps: 2, cfgScale: 3 };
    const multipliers = [0, 1, 2];
    const seeds = [5, 6];
    const png = (
      await captureStdout(() => expectNoLeak(() => verbs.multiplierSweep(base, net, prompt, multipliers, { ...common, seeds, cell })))
    ).value;
    const meta = await sharp(png).metadata();
    expect(meta.width).toBe(multipliers.length * cell);
    const cellH = meta.height! / seeds.length;
    expect(Number.isInteger(cellH) && cellH > cell).toBe(true);
    const cellPixels = (row: number, col: number): Promise<Buffer> =>
      sharp(png)
        .extract({ left: col * cell, top: row * cellH, width: cell, height: cell })
        .removeAlpha()
        .raw()
        .toBuffer();
    for (const [row, seed] of seeds.entries()) {
      const bare = await txt2img(base, { ...common, prompt, seed });
      const bareRaw = await sharp(bare.png[0]!).removeAlpha().raw().toBuffer();
      expect((await cellPixels(row, 0)).equals(bareRaw), `seed ${seed} ×0 cell`).toBe(true);
      expect((await cellPixels(row, 2)).equals(bareRaw), `seed ${seed} ×2 cell differs`).toBe(false);
    }
    expect(fs.existsSync(path.join(outDir, "multiplier-sweep.png"))).toBe(true);
  });

  it("the train verb runs outside a kernel: rewrites loss.html and preview.png in place, checkpoints are marked, no tensors are left", async () => {
    const dir = path.join(tmp, "train-out");
    setOutputDir(dir);
    const trained = makeToyNet(9);
    try {
      const before = tf.memory().numTensors;
      const { value: result } = await captureStdout(async () => {
        const run = verbs.train(base, trained, {
          dataDir,
          template: TOY_TEMPLATE,
          maxSteps: 4,
          batchSize: 2,
          learningRate: "1e-3",
          seed: 2,
          logDir: path.join(tmp, "run1"),
          saveEvery: 2,
          previewEvery: 2,
          preview: { steps: 1, save: false },
          chartEveryMs: 0,
          handleSigint: false,
          onLog: () => {},
        });
        return run.done;
      });
      expect(tf.memory().numTensors).toBe(before);
      expect(result.reason).toBe("max-steps");
      expect(result.points.map((p) => p.step)).toEqual([1, 2, 3, 4]);
      expect(result.points.map((p) => p.loss)).toEqual(result.losses);
      expect(result.checkpoints).toEqual([2, 4]);
      // Every step redraws (chartEveryMs 0) plus the final draw; two previews.
      expect(result.displayUpdates.chart).toBe(5);
      expect(result.displayUpdates.preview).toBe(2);
      expect(fs.readdirSync(dir).sort()).toEqual(["loss.html", "preview.png"]);
      const html = fs.readFileSync(path.join(dir, "loss.html"), "utf8");
      const fig = JSON.parse(/var fig = (.*?); var n = 0;/.exec(html)![1]!) as Figure;
      const traces = fig.data as Trace[];
      expect(traces.find((t) => t.name === "loss")!.y).toEqual(result.losses);
      expect(traces.find((t) => t.name === "checkpoint")!.x).toEqual([2, 4]);
      // The standalone file loads plotly.js from this machine, never from the network.
      expect(html).toMatch(/<script src="file:\/\/[^"]*plotly[^"]*"><\/script>/);
      expect(html).not.toMatch(/https?:\/\//);
      expect((await sharp(path.join(dir, "preview.png")).metadata()).width).toBe(8);
    } finally {
      trained.dispose();
      setOutputDir(outDir);
    }
  });

  it("the train verb's stop() ends the run early with reason 'stopped'", async () => {
    const trained = makeToyNet(9);
    const dir = path.join(tmp, "train-stop");
    setOutputDir(dir);
    try {
      const before = tf.memory().numTensors;
      const { value: result } = await captureStdout(async () => {
        let stop = (): void => {};
        const run = verbs.train(base, trained, {
          dataDir,
          template: TOY_TEMPLATE,
          maxSteps: 200,
          batchSize: 2,
          learningRate: "1e-3",
          logDir: path.join(tmp, "run2"),
          saveEvery: 0,
          chartEveryMs: 0,
          handleSigint: false,
          onLog: () => {},
          onStep: (e) => {
            if (e.step === 2) stop();
          },
        });
        stop = run.stop;
        return run.done;
      });
      expect(result.reason).toBe("stopped");
      expect(result.step).toBeLessThan(200);
      expect(result.points.length).toBe(result.step);
      expect(tf.memory().numTensors).toBe(before);
      expect(fs.existsSync(path.join(dir, "loss.html"))).toBe(true);
    } finally {
      trained.dispose();
      setOutputDir(outDir);
    }
  });
});

// ---- attention maps on the embedded tiny model --------------------------------------------------------------

describe("attention maps (tiny model)", () => {
  let base: BaseModel;
  let net: Hypernetwork;
  let image: tf.Tensor4D;
  const prompt = "a large red circle on the left";

  beforeAll(() => {
    base = loadTinyModel();
    net = createHypernetwork({
      name: "maps",
      dims: [base.contextDim],
      layerStructure: [1, 2, 1],
      activation: "relu",
      weightInit: "XavierNormal",
      seed: 1,
    });
    image = tf.tidy(() => randn([1, base.imageSize, base.imageSize, 3], new Rng(3)).clipByValue(-1, 1) as tf.Tensor4D);
  });

  afterAll(() => {
    image.dispose();
    net.dispose();
    base.dispose();
  });

  /** One UNet forward on fixed inputs with whatever processors are set. */
  function unetOut(): Float32Array {
    return tf.tidy(() => {
      const x = randn([1, base.sampleSize, base.sampleSize, base.unet.config.in_channels], new Rng(5)) as tf.Tensor4D;
      return base.unet.forward(x, [300], base.encodeText([prompt])).dataSync() as Float32Array;
    });
  }

  it("the capture processor records [T, h·w] maps of every cross-attention layer whose rows sum to 1 per query, and leaves the output unchanged", () => {
    const plain = unetOut();
    const sink: LayerAttention[] = [];
    const layers = base.unet.attentionLayers();
    const paths = new Map<object, string>(layers.map(([p, l]) => [l, p]));
    const previous = base.unet.getProcessors();
    base.unet.setProcessor(attentionCaptureProcessor(sink, paths));
    let captured: Float32Array;
    try {
      captured = unetOut();
    } finally {
      base.unet.setProcessor(previous);
    }
    expectClose(captured, plain, 1e-6);
    const cross = layers.filter(([p]) => p.endsWith("attn2")).map(([p]) => p);
    expect(cross.length).toBeGreaterThan(0);
    expect(sink.map((s) => s.path).sort()).toEqual([...cross].sort());
    const T = tf.tidy(() => base.encodeText([prompt]).shape[1]);
    for (const s of sink) {
      expect(s.tokens).toBe(T);
      expect(s.maps.length).toBe(s.tokens * s.height * s.width);
      // Square grids of a 32×32 model: 16×16, 8×8 and 4×4 (and 2×2 in the middle block if it attends).
      expect(s.height).toBe(s.width);
      expect(base.sampleSize % s.height).toBe(0);
      const n = s.height * s.width;
      for (let i = 0; i < n; i++) {
        let sum = 0;
        for (let j = 0; j < s.tokens; j++) sum += s.maps[j * n + i]!;
        expect(Math.abs(sum - 1), `${s.path} query ${i}`).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it("attentionMaps: per-token maps on the image grid, processors restored bit-identically, no leaks, and a hypernetwork changes the maps", async () => {
    const before = unetOut();
    const previous = base.unet.getProcessors();
    const res = (
      await captureStdout(() => expectNoLeak(() => attentionMaps(base, prompt, image, { networks: [{ network: net, multiplier: 1 }] })))
    ).value;
    // Processors restored: the same functions, and the same output bit for bit.
    const after = base.unet.getProcessors();
    expect([...after.entries()]).toEqual([...previous.entries()]);
    expect(Buffer.from(unetOut().buffer).equals(Buffer.from(before.buffer))).toBe(true);

    // <start>, one label per word (each a single token in the tiny vocabulary), <end>.
    expect(res.tokens).toEqual(["<start>", ...prompt.split(" "), "<end>"]);
    expect(res.size).toBe(base.sampleSize);
    expect(res.rows.map((r) => r.label)).toEqual(["no hypernetwork", "maps ×1"]);
    for (const r of res.rows) {
      expect(r.maps).toHaveLength(res.tokens.length);
      for (const m of r.maps) expect(m.length).toBe(res.size * res.size);
      // Shown tokens are a subset of all positions: per pixel their probabilities sum to at most 1.
      for (let i = 0; i < res.size * res.size; i++) {
        const sum = r.maps.reduce((a, m) => a + m[i]!, 0);
        expect(sum).toBeGreaterThan(0);
        expect(sum).toBeLessThanOrEqual(1 + 1e-5);
      }
    }
    let diff = 0;
    res.rows[0]!.maps.forEach((m, j) => m.forEach((v, i) => (diff = Math.max(diff, Math.abs(v - res.rows[1]!.maps[j]![i]!)))));
    expect(diff).toBeGreaterThan(1e-3);
    const meta = await sharp(res.png).metadata();
    expect(meta.width).toBe(72 * res.tokens.length);
    expect(fs.existsSync(path.join(outDir, "attention-maps.png"))).toBe(true);
  });

  it("attentionMaps keeps an attached hypernetwork attached and restores its processors", async () => {
    const att = attachHypernetworks(base.unet, [{ network: net, multiplier: 1 }]);
    try {
      const withNet = unetOut();
      await captureStdout(() => expectNoLeak(() => attentionMaps(base, prompt, image)));
      expect(Buffer.from(unetOut().buffer).equals(Buffer.from(withNet.buffer))).toBe(true);
    } finally {
      att.detach();
    }
  });
});
