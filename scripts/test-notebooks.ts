/**
 * `npm run test:notebooks`: execute every notebook through real Jupyter with the tslab kernel, the
 * way a user's "Run All" would, and check what came out.
 *
 * 1. `environment/setup-jupyter.sh --chromium` (fast when everything is installed).
 * 2. Each `notebooks/*.ipynb` runs through nbclient (`scripts/run_notebook.py`, Debian's Jupyter)
 *    into `out/notebooks/`; any cell error fails (a TypeScript error in a cell is an error too).
 *    A notebook with a `live` cell is run twice in one kernel ("Run All" pressed twice) and the
 *    second run's outputs are checked: plotly.js was embedded by the first run's outputs, which
 *    the second run replaced, so each chart must stand on its own.
 * 3. Cells tagged `live` must hold few outputs: a live display is one output updated in place, so
 *    a 40-step training cell has a handful of outputs, not one per step.
 *    Every chart output must show something without plotly.js (an `image/png` of itself that
 *    decodes, and the same picture inside its HTML) unless the saved notebook holds the bundle;
 *    no output may hold a raw typed-array or Buffer dump (`Float32Array(`, `<Buffer `, `Uint8Array(`).
 * 4. Notebooks with a cell tagged `screenshot` are converted to HTML and rendered in headless
 *    Chromium: every chart must have drawn (Plotly SVG traces, or its fallback picture where the
 *    notebook holds no plotly.js) and every `<img>` must have decoded.
 *    With `--screenshot`, that cell is also saved as `docs/notebook-training.png`.
 *
 * Usage: npm run test:notebooks [-- NAME-FILTER...] [-- --screenshot]
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

const root = path.resolve(__dirname, "..");
const outDir = path.join(root, "out", "notebooks");
const args = process.argv.slice(2);
const wantScreenshot = args.includes("--screenshot");
const filters = args.filter((a) => !a.startsWith("--"));
const MAX_LIVE_OUTPUTS = 6;

const env = {
  ...process.env,
  JUPYTER_PATH: [path.join(root, ".jupyter", "share", "jupyter"), process.env.JUPYTER_PATH].filter(Boolean).join(":"),
  PYDEVD_DISABLE_FILE_VALIDATION: "1",
  HYPERNET_NOTEBOOK_TEST: "1",
};

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, string | string[]>;
  ename?: string;
  evalue?: string;
}
interface Cell {
  cell_type: string;
  source: string | string[];
  metadata: { tags?: string[] };
  outputs?: Output[];
}
const joined = (t: string | string[] | undefined): string => (Array.isArray(t) ? t.join("") : (t ?? ""));

function run(
  cmd: string,
  argv: string[],
  opts: { timeoutMs?: number; quiet?: boolean } = {},
): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, argv, { cwd: root, env, encoding: "utf8", timeout: opts.timeoutMs, maxBuffer: 256 * 1024 * 1024 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  return { status: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

const failures: string[] = [];
function fail(msg: string): void {
  failures.push(msg);
  console.log(`  FAIL ${msg}`);
}

// 1. Jupyter, the kernel and Chromium.
const setup = spawnSync(path.join(root, "environment", "setup-jupyter.sh"), ["--chromium"], { cwd: root, env, stdio: "inherit" });
if (setup.status !== 0) process.exit(setup.status ?? 1);
fs.mkdirSync(outDir, { recursive: true });

// 2–3. Execute.
const notebooks = fs
  .readdirSync(path.join(root, "notebooks"))
  .filter((f) => f.endsWith(".ipynb") && (filters.length === 0 || filters.some((x) => f.includes(x))))
  .sort();
if (notebooks.length === 0) {
  console.error("test-notebooks: no notebooks matched");
  process.exit(1);
}
/** Width × height from a PNG's IHDR, or undefined when the bytes are not a PNG. */
function pngSize(b: Buffer): { width: number; height: number } | undefined {
  const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (b.length < 33 || sig.some((v, i) => b[i] !== v) || b.toString("latin1", 12, 16) !== "IHDR") return undefined;
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
}
const RAW_DUMP = /Float32Array\(|<Buffer |Uint8Array\(/;
const PLOTLY_LOADER = "if (!window.Plotly) { (function (module, exports, define)";

/** Check what a saved notebook's outputs show: charts that stand alone, no raw dumps. */
function checkOutputs(nb: string, code: Cell[]): void {
  const all = code.flatMap((c) => c.outputs ?? []);
  const hasBundle = all.some((o) => joined(o.data?.["text/html"]).includes(PLOTLY_LOADER));
  let charts = 0;
  for (const [i, c] of code.entries()) {
    for (const o of c.outputs ?? []) {
      const shown = [joined(o.text), joined(o.data?.["text/plain"]), joined(o.data?.["text/html"])].join("\n");
      const dump = RAW_DUMP.exec(shown);
      if (dump) fail(`${nb}: code cell ${i + 1} shows a raw dump: …${shown.slice(Math.max(0, dump.index - 80), dump.index + 80)}…`);
      const html = joined(o.data?.["text/html"]);
      if (!html.includes('class="hn-plot"')) continue;
      charts++;
      const b64 = joined(o.data?.["image/png"]);
      const size = b64 ? pngSize(Buffer.from(b64, "base64")) : undefined;
      if (b64 && !size) fail(`${nb}: code cell ${i + 1}: a chart's image/png is not a PNG`);
      if (size && !(size.width >= 200 && size.height >= 150))
        fail(`${nb}: code cell ${i + 1}: a chart's image/png is ${size.width}×${size.height}`);
      if (size && !html.includes(`class="hn-plot-fallback" src="data:image/png;base64,${b64}"`))
        fail(`${nb}: code cell ${i + 1}: a chart's HTML lacks its fallback picture`);
      if (!size && !hasBundle)
        fail(
          `${nb}: code cell ${i + 1}: a chart output is empty without plotly.js (no image/png, and the notebook holds no plotly.js bundle)`,
        );
    }
  }
  console.log(`  ${nb}: ${charts} chart output(s), plotly.js bundle ${hasBundle ? "present" : "absent"}`);
}

const forHtml: string[] = [];
for (const nb of notebooks) {
  const t0 = Date.now();
  const source = JSON.parse(fs.readFileSync(path.join(root, "notebooks", nb), "utf8")) as { cells: Cell[] };
  const runs = source.cells.some((c) => (c.metadata.tags ?? []).includes("live")) ? 2 : 1;
  const r = run(
    "/usr/bin/python3",
    [path.join(root, "scripts", "run_notebook.py"), path.join(root, "notebooks", nb), path.join(outDir, nb), "--runs", String(runs)],
    { timeoutMs: runs * 20 * 60_000 },
  );
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  if (r.status !== 0) {
    fail(`${nb}: execution failed after ${secs} s\n${r.stderr.split("\n").slice(-40).join("\n")}`);
    continue;
  }
  const cells = (JSON.parse(fs.readFileSync(path.join(outDir, nb), "utf8")) as { cells: Cell[] }).cells;
  const code = cells.filter((c) => c.cell_type === "code");
  let outputs = 0;
  for (const [i, c] of code.entries()) {
    const outs = c.outputs ?? [];
    outputs += outs.length;
    for (const o of outs) {
      if (o.output_type === "error") fail(`${nb}: code cell ${i + 1} raised ${o.ename}: ${o.evalue}`);
      if (o.output_type === "stream" && o.name === "stderr" && /\d+:\d+ - |Error:/.test(joined(o.text)))
        fail(`${nb}: code cell ${i + 1} wrote an error to stderr: ${joined(o.text).slice(0, 400)}`);
    }
    const tags = c.metadata.tags ?? [];
    if (tags.includes("live")) {
      const text = outs
        .map(
          (o) =>
            joined(o.text) +
            Object.values(o.data ?? {})
              .map(joined)
              .join(""),
        )
        .join("\n");
      const steps = /step (\d+)\/(\d+)/.exec(text);
      console.log(`  ${nb}: live cell ${i + 1} has ${outs.length} outputs${steps ? ` after ${steps[1]}/${steps[2]} steps` : ""}`);
      if (outs.length > MAX_LIVE_OUTPUTS)
        fail(`${nb}: live cell ${i + 1} has ${outs.length} outputs (> ${MAX_LIVE_OUTPUTS}): displays are being appended, not updated`);
      if (!steps) fail(`${nb}: live cell ${i + 1} shows no "step N/M" progress line`);
      if (!text.includes("hn-plot")) fail(`${nb}: live cell ${i + 1} has no loss chart`);
    }
    if (tags.includes("screenshot")) forHtml.push(nb);
  }
  checkOutputs(nb, code);
  console.log(`ok ${nb}: ${code.length} code cells, ${outputs} outputs, ${runs} run(s), ${secs} s`);
}

// 4. Render in headless Chromium.
const CHECK_SCRIPT = `<script>
window.addEventListener("load", function () { setTimeout(function () {
  var plots = document.querySelectorAll(".hn-plot");
  var traces = document.querySelectorAll(".hn-plot .scatterlayer .trace path.js-line, .hn-plot .scatterlayer .trace path.point");
  var blank = Array.prototype.filter.call(plots, function (p) { var f = p.querySelector("img.hn-plot-fallback"); return !p.querySelector(".scatterlayer") && !(f && f.complete && f.naturalWidth > 0); }).length;
  var drawn = Array.prototype.filter.call(traces, function (p) { var d = p.getAttribute("d") || ""; return d.length > 10; }).length;
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img"));
  var decoded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var pre = document.createElement("pre"); pre.id = "hn-check";
  pre.textContent = JSON.stringify({ plots: plots.length, blank: blank, traces: traces.length, drawn: drawn, images: imgs.length, decoded: decoded, plotly: !!window.Plotly });
  document.body.appendChild(pre);
}, 1500); });
</script>`;
const chromiumFlags = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-dev-shm-usage",
  "--hide-scrollbars",
  "--virtual-time-budget=60000",
];
for (const nb of forHtml) {
  const executed = path.join(outDir, nb);
  const html = executed.replace(/\.ipynb$/, ".html");
  const conv = run("/usr/bin/python3", ["-m", "nbconvert", "--to", "html", "--output-dir", outDir, executed]);
  if (conv.status !== 0) {
    fail(`${nb}: nbconvert --to html failed: ${conv.stderr.slice(-800)}`);
    continue;
  }
  const page = fs.readFileSync(html, "utf8").replace("</body>", `${CHECK_SCRIPT}</body>`);
  const checked = html.replace(/\.html$/, ".check.html");
  fs.writeFileSync(checked, page);
  const dom = run("chromium", [...chromiumFlags, "--dump-dom", `file://${checked}`], { timeoutMs: 180_000 });
  const m = /<pre id="hn-check">([^<]*)<\/pre>/.exec(dom.stdout);
  if (!m) {
    fail(`${nb}: Chromium produced no check result (status ${dom.status}): ${dom.stderr.slice(-600)}`);
    continue;
  }
  const res = JSON.parse(m[1]!.replace(/&quot;/g, '"')) as {
    plots: number;
    blank: number;
    traces: number;
    drawn: number;
    images: number;
    decoded: number;
    plotly: boolean;
  };
  console.log(
    `  ${nb} in Chromium: plotly loaded ${res.plotly}, ${res.plots} charts (${res.blank} blank), ${res.drawn}/${res.traces} trace paths drawn, ${res.decoded}/${res.images} images decoded`,
  );
  if (res.plots === 0 || res.blank > 0) fail(`${nb}: a chart showed nothing in Chromium (${JSON.stringify(res)})`);
  if (res.plotly && res.drawn === 0) fail(`${nb}: plotly.js loaded but the chart drew no traces in Chromium (${JSON.stringify(res)})`);
  if (res.images === 0 || res.decoded !== res.images) fail(`${nb}: preview images did not all decode in Chromium (${JSON.stringify(res)})`);
  if (wantScreenshot) {
    // Only the cell tagged "screenshot" (nbconvert puts each tag on the cell as a celltag_ class).
    const shotPage = page.replace(
      "</head>",
      `<style>.jp-Cell:not(.celltag_screenshot),.cell:not(.celltag_screenshot){display:none!important} .jp-Cell-inputWrapper,.input{display:none!important} body{margin:0}</style></head>`,
    );
    const shotFile = html.replace(/\.html$/, ".shot.html");
    fs.writeFileSync(shotFile, shotPage);
    fs.mkdirSync(path.join(root, "docs"), { recursive: true });
    const png = path.join(root, "docs", "notebook-training.png");
    const shot = run("chromium", [...chromiumFlags, "--window-size=1000,900", `--screenshot=${png}`, `file://${shotFile}`], {
      timeoutMs: 180_000,
    });
    console.log(
      shot.status === 0 && fs.existsSync(png)
        ? `  screenshot: ${path.relative(root, png)}`
        : `  screenshot failed: ${shot.stderr.slice(-400)}`,
    );
  }
}

if (failures.length) {
  console.log(`\ntest-notebooks: ${failures.length} failure(s)`);
  process.exit(1);
}
console.log(`\ntest-notebooks: ${notebooks.length} notebook(s) passed`);
