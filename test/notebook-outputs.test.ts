/**
 * What the notebook verbs put in a saved notebook: chart outputs that carry a PNG of themselves
 * (as `image/png` and inside the HTML, shown when plotly.js is absent), results that echo as one
 * line, the loss CSV a resumed chart starts from, and the default run folder under out/.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { inspect } from "node:util";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { lossFigure, figureHtml, type LossPoint } from "../src/kernel-helpers/charts";
import { mimeBundle } from "../src/kernel-helpers/display";
import {
  compactInspect,
  defaultRunDir,
  finalLossChart,
  readLossCsv,
  readValidationCsv,
  resumedLossCsv,
  validationCsv,
} from "../src/kernel-helpers/results";

const points: LossPoint[] = Array.from({ length: 30 }, (_, i) => ({ step: i + 1, loss: 0.5 / (i + 1), lr: i < 15 ? 5e-3 : 1e-3 }));

/** Run a chart's inline script against a stand-in page: the div holds `children`; Plotly is optional. */
function runChartScript(html: string, plotly: boolean): { removed: string[]; reacted: number; text: string | undefined } {
  const script = /<script type="text\/javascript">([\s\S]*)<\/script>$/.exec(html)![1]!;
  const removed: string[] = [];
  let reacted = 0;
  const fallback = html.includes('class="hn-plot-fallback"')
    ? { className: "hn-plot-fallback", textContent: undefined as string | undefined }
    : undefined;
  const wait = html.includes('class="hn-plot-wait"')
    ? { className: "hn-plot-wait", textContent: "chart: waiting" as string | undefined }
    : undefined;
  let children = [fallback, wait].filter((c): c is NonNullable<typeof c> => c !== undefined);
  const el = {
    querySelector: (sel: string) => children.find((c) => sel.split(",").some((s) => s.trim() === `.${c.className}`)) ?? null,
    removeChild: (c: { className: string }) => {
      removed.push(c.className);
      children = children.filter((x) => x !== c);
    },
  };
  const win: { Plotly?: { react: () => void } } = plotly ? { Plotly: { react: () => void reacted++ } } : {};
  const queue: Array<() => void> = [];
  new Function("window", "document", "setTimeout", script)(win, { getElementById: () => el }, (f: () => void) => queue.push(f));
  while (queue.length) queue.shift()!();
  return { removed, reacted, text: children.find((c) => c.className === "hn-plot-wait")?.textContent };
}

describe("chart outputs carry what they need", () => {
  it("the final loss chart has text/html and an image/png of itself that decodes", async () => {
    const fig = lossFigure(points, { title: "t" });
    const out = await finalLossChart(fig, "hn-loss-test", points, "t");
    const bundle = mimeBundle(out, "loss");
    expect(Object.keys(bundle).sort()).toEqual(["image/png", "text/html", "text/plain"]);
    const png = Buffer.from(bundle["image/png"]!, "base64");
    expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const meta = await sharp(png).metadata();
    expect([meta.width, meta.height]).toEqual([720, 360]);
    // The same picture sits inside the chart's div.
    const inDiv = /<div id="hn-loss-test" class="hn-plot"[^>]*><img class="hn-plot-fallback" src="data:image\/png;base64,([^"]+)"/.exec(
      bundle["text/html"]!,
    );
    expect(inDiv?.[1]).toBe(bundle["image/png"]);
    expect(bundle["text/plain"]).toMatch(/^\[loss: HTML \+ PNG \d+ bytes\]$/);
  });

  it("without plotly.js the fallback picture stays; with it, Plotly draws and the picture goes", async () => {
    const out = await finalLossChart(lossFigure(points), "c1", points, "t");
    const absent = runChartScript(out.html, false);
    expect(absent).toEqual({ removed: [], reacted: 0, text: undefined });
    const present = runChartScript(out.html, true);
    expect(present.removed).toEqual(["hn-plot-fallback"]);
    expect(present.reacted).toBe(1);
  });

  it("a live chart without a fallback says how to load plotly.js when it never arrives", () => {
    const html = figureHtml(lossFigure(points), "c2");
    expect(html).not.toContain("<img");
    const absent = runChartScript(html, false);
    expect(absent.reacted).toBe(0);
    expect(absent.text).toMatch(/plotly\.js is not loaded.*hn\.enablePlotly\(\{ force: true \}\)/);
    expect(runChartScript(html, true)).toMatchObject({ removed: ["hn-plot-wait"], reacted: 1 });
  });

  it("plain text and PNG-only contents make one-type bundles", () => {
    expect(mimeBundle({ text: "hello" })).toEqual({ "text/plain": "hello" });
    const b = mimeBundle({ png: new Uint8Array([1, 2, 3]) }, "x");
    expect(b["image/png"]).toBe("AQID");
    expect(b["text/html"]).toBeUndefined();
  });
});

describe("results echo compactly", () => {
  it("a txt2img-like result prints one line but keeps its fields", () => {
    const r = compactInspect(
      { pixels: new Float32Array(3072), png: [Buffer.from([0x89, 0x50])], seed: 7 },
      (v) => `Result { seed ${v.seed} }`,
    );
    const shown = inspect(r);
    expect(shown).toBe("Result { seed 7 }");
    expect(shown).not.toMatch(/Float32Array\(|<Buffer |Uint8Array\(/);
    expect(Object.keys(r)).toEqual(["pixels", "png", "seed"]);
    expect(JSON.stringify({ seed: r.seed })).toBe('{"seed":7}');
    expect(r.pixels.length).toBe(3072);
  });

  it("a Buffer keeps its bytes and prints as its summary", () => {
    const b = compactInspect(Buffer.from([1, 2, 3]), (x) => `[PNG ${x.length} bytes]`);
    expect(inspect(b)).toBe("[PNG 3 bytes]");
    expect([...b]).toEqual([1, 2, 3]);
  });
});

describe("run folders and resumed charts", () => {
  it("the default run folder is out/textual_inversion/<day>/<stem>", () => {
    const d = defaultRunDir("my style/v2", "/repo", new Date(2026, 0, 5, 12));
    expect(d).toBe(path.join("/repo", "out", "textual_inversion", "2026-01-05", "my style_v2"));
  });

  it("reads an A1111 loss CSV up to the resumed step, by column name", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hn-csv-"));
    const file = path.join(dir, "hypernetwork_loss.csv");
    fs.writeFileSync(
      file,
      "step,epoch,epoch_step,loss,learn_rate\n1,1,1,0.25,0.005\n2,1,2,0.125,0.005\nbroken line\n3,1,3,0.0625,0.001\n4,2,1,0.03,0.001\n",
    );
    expect(readLossCsv(file, 3)).toEqual([
      { step: 1, loss: 0.25, lr: 0.005 },
      { step: 2, loss: 0.125, lr: 0.005 },
      { step: 3, loss: 0.0625, lr: 0.001 },
    ]);
    expect(readLossCsv(path.join(dir, "missing.csv"))).toEqual([]);
    expect(resumedLossCsv(path.join(dir, "hypernetworks", "x-3.pt"))).toBe(file);
    expect(resumedLossCsv("/a/b.pt", "/run")).toBe(path.join("/run", "hypernetwork_loss.csv"));
    fs.rmSync(dir, { recursive: true });
  });
});

describe("the train verb's chart after a resume", () => {
  /**
   * A toy run folder for the resume tests: backend, a toy base model and dataset in a fresh temp
   * folder, the display writing there, and quiet options for 4 steps with a checkpoint every 2
   * (plus `extra`). `done()` puts the display back and removes the folder.
   */
  async function resumeRig(prefix: string, extra: Record<string, unknown>) {
    const { setupBackend } = await import("./helpers/tf");
    const { makeToyBase, makeToyDataset, toyTrainOptions } = await import("./helpers/train-setup");
    const { setOutputDir } = await import("../src/kernel-helpers/display");
    await setupBackend();
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    const done = (): void => {
      setOutputDir(os.tmpdir());
      fs.rmSync(tmp, { recursive: true, force: true });
    };
    setOutputDir(path.join(tmp, "display"));
    const base = makeToyBase();
    const dataDir = path.join(tmp, "data");
    await makeToyDataset(dataDir);
    const logDir = path.join(tmp, "run");
    const quiet = {
      ...toyTrainOptions(dataDir, logDir),
      maxSteps: 4,
      saveEvery: 2,
      chartEveryMs: 0,
      preview: undefined,
      previewEvery: 0,
      ...extra,
    };
    return { tmp, base, logDir, quiet, done };
  }
  it("starts with the first run's points from its CSV, then the resumed steps", async () => {
    const { makeToyNet } = await import("./helpers/train-setup");
    const { loadHypernetwork } = await import("../src/hypernet/file");
    const verbs = await import("../src/kernel-helpers/steps");
    const tf = await import("@tensorflow/tfjs");
    const { base, logDir, quiet, done } = await resumeRig("hn-resume-chart-", {});
    try {
      const first = await verbs.train(base, makeToyNet(4), quiet).done;
      expect(first.points.map((p) => p.step)).toEqual([1, 2, 3, 4]);
      // Resume from the step-2 checkpoint: the chart holds steps 1–2 from the CSV, then 3–6 trained again.
      const ckpt = path.join(logDir, "hypernetworks", "toy-2.pt");
      const net = loadHypernetwork(ckpt, { trainable: true });
      const before = tf.memory().numTensors;
      const resumed = await verbs.train(base, net, { ...quiet, maxSteps: 6, resumeFrom: ckpt }).done;
      expect(tf.memory().numTensors).toBe(before);
      expect(resumed.points.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6]);
      // The seeded points are the first run's, read back from its CSV (rounded as the CSV writes them).
      for (const i of [0, 1]) expect(resumed.points[i]!.loss).toBeCloseTo(first.points[i]!.loss, 5);
      expect(resumed.losses.length).toBe(4);
      net.dispose();
    } finally {
      done();
    }
  }, 240_000);

  it("continues the validation curve too: the first run's losses before the resumed step, then the resumed run's", async () => {
    const { makeToyNet } = await import("./helpers/train-setup");
    const { loadHypernetwork } = await import("../src/hypernet/file");
    const verbs = await import("../src/kernel-helpers/steps");
    const { tmp, base, logDir, quiet, done } = await resumeRig("hn-resume-validation-", { validationEvery: 2 });
    try {
      const first = await verbs.train(base, makeToyNet(4), quiet).done;
      const firstVal = first.validation.map((v) => [v.step, v.loss]);
      expect(firstVal.map(([step]) => step)).toEqual([0, 2, 4]);
      expect(readValidationCsv(validationCsv(logDir)).map((p) => [p.step, p.loss])).toEqual(firstVal);
      // Resumed from step 2: the chart keeps the step-0 loss from the file, then measures 2, 4, 6 again.
      const ckpt = path.join(logDir, "hypernetworks", "toy-2.pt");
      const net = loadHypernetwork(ckpt, { trainable: true });
      const resumed = await verbs.train(base, net, { ...quiet, maxSteps: 6, resumeFrom: ckpt }).done;
      expect(resumed.validation.map((v) => v.step)).toEqual([2, 4, 6]);
      // The same network at step 2, the same fixed batch: the resumed run measures what the first one did.
      expect(resumed.validation[0]!.loss).toBeCloseTo(first.validation[1]!.loss, 6);
      const html = fs.readFileSync(path.join(tmp, "display", "loss.html"), "utf8");
      const curve = /"name":"validation loss","x":\[([^\]]*)\],"y":\[([^\]]*)\]/.exec(html);
      expect(curve?.[1]).toBe("0,2,4,6");
      expect(Number(curve![2]!.split(",")[0])).toBe(first.validation[0]!.loss);
      // The file now holds the whole curve once, for a later resume.
      expect(readValidationCsv(validationCsv(logDir)).map((p) => p.step)).toEqual([0, 2, 4, 6]);
      expect(readValidationCsv(validationCsv(logDir), 4).map((p) => p.step)).toEqual([0, 2]);
      expect(readValidationCsv(path.join(tmp, "missing.csv"))).toEqual([]);
      net.dispose();
    } finally {
      done();
    }
  }, 240_000);
});
