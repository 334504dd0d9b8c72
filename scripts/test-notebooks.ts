/**
 * `npm run test:notebooks`: execute every notebook through real Jupyter with the tslab kernel, the
 * way a user's "Run All" would, and check what came out.
 *
 * 1. `environment/setup-jupyter.sh --chromium` (fast when everything is installed).
 * 2. Each `notebooks/*.ipynb` runs through nbclient (`scripts/run_notebook.py`, Debian's Jupyter)
 *    into `out/notebooks/`, its kernel in a copy of the working tree (`out/notebooks/tree/`); any cell error fails (a TypeScript error in a cell is an error too).
 *    A notebook with a `live` cell is run twice in one kernel ("Run All" pressed twice) and the
 *    second run's outputs are checked: plotly.js was embedded by the first run's outputs, which
 *    the second run replaced, so each chart must stand on its own.
 * 3. Cells tagged `live` must hold few outputs: a live display is one output updated in place, so
 *    a 40-step training cell has a handful of outputs, not one per step.
 *    Every chart output must show something without plotly.js (an `image/png` of itself that
 *    decodes, and the same picture inside its HTML) unless the saved notebook holds the bundle;
 *    no output may hold a raw typed-array or Buffer dump (`Float32Array(`, `<Buffer `, `Uint8Array(`);
 *    every code cell that ran has its execution count (In [n], not In [ ]).
 *    Notebooks 01 and 03 must hold a cell tagged `style-check` (`hn.styleCheck`): its printed table
 *    (the demo's style and content scores at ×0 / ×0.5 / ×1) is read back and must show the style
 *    learned — the style score rising with the multiplier, ×1 at least 0.1 above ×0, and colour and
 *    shape accuracy at every multiplier within 15 points of ×0 (the demo's checks).
 *    Notebook 02 must print the attention difference of its trained network (`pastel02`): a largest
 *    per-token mean |Δ| of at least 0.03, above the untrained network's. Notebook 03's live charts
 *    must draw the validation loss, and its LR range test must print a suggested schedule.
 * 4. Notebooks with a cell tagged `screenshot` are converted to HTML and rendered in headless
 *    Chromium: every chart must have drawn (Plotly SVG traces, or its fallback picture where the
 *    notebook holds no plotly.js) and every `<img>` must have decoded.
 *    With `--screenshot`, that cell is also saved as `docs/notebook-training.png`.
 * 5. With `--publish`, every notebook that passed is written to `docs/notebooks/` for readers who
 *    do not run anything (GitHub renders it): the executed notebook without the ~10 MB plotly.js
 *    bundle (every chart shows the PNG of itself it carries) and without nbclient's per-cell
 *    timings, so the folder stays a few MB and a rerun changes only what the notebook shows.
 *
 * Notebooks execute in parallel (`--jobs N`, default 4), each in its own kernel; the checks and
 * their report follow in the notebooks' order.
 *
 * Usage: npm run test:notebooks [-- NAME-FILTER...] [-- --screenshot] [-- --once] [-- --jobs N] [-- --publish]
 */
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

const root = path.resolve(__dirname, "..");
const outDir = path.join(root, "out", "notebooks");
const args = process.argv.slice(2);
const wantScreenshot = args.includes("--screenshot");
/** `--publish`: write the notebooks that passed to docs/notebooks/ (outputs kept, plotly.js bundle left out). */
const wantPublish = args.includes("--publish");
const publishDir = path.join(root, "docs", "notebooks");
/** `--once`: run every notebook once (a quick look while writing one; the second-run checks are skipped). */
const once = args.includes("--once");
/** `--jobs N`: notebooks executed at the same time (default 4; each has its own kernel and out/ folder). */
const jobsArg = args.indexOf("--jobs");
const jobs = jobsArg >= 0 ? Math.max(1, Number(args[jobsArg + 1]) || 1) : 4;
const filters = args.filter((a, i) => !a.startsWith("--") && args[i - 1] !== "--jobs");
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
  execution_count?: number | null;
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

/**
 * The kernels run in a copy of the working tree (`out/notebooks/tree/`, node_modules linked): tslab
 * watches every source file it compiled, and an edit to src/ while a notebook runs (a second
 * checkout's work, an editor's atomic save) made it re-check mid-run or crash ("Unexpected pending
 * rebuildTimer"). The copy also makes one run see one version of src/. Its own kernel spec starts
 * the kernel there; paths in the notebooks (out/nb01, …) are then inside the copy.
 */
function copyTree(): string {
  const tree = path.join(outDir, "tree");
  fs.rmSync(tree, { recursive: true, force: true });
  for (const p of ["src", "models", "templates", "environment", "package.json", "tsconfig.json"])
    fs.cpSync(path.join(root, p), path.join(tree, p), { recursive: true });
  fs.symlinkSync(path.join(root, "node_modules"), path.join(tree, "node_modules"), "dir");
  const spec = path.join(tree, ".jupyter", "share", "jupyter", "kernels", "tslab");
  fs.mkdirSync(spec, { recursive: true });
  const argv = [path.join(tree, "environment", "tslab-kernel.sh"), "kernel", "--config-path", "{connection_file}"];
  fs.writeFileSync(path.join(spec, "kernel.json"), JSON.stringify({ argv, display_name: "TypeScript", language: "typescript" }));
  env.JUPYTER_PATH = [path.join(tree, ".jupyter", "share", "jupyter"), env.JUPYTER_PATH].filter(Boolean).join(":");
  return tree;
}
const tree = copyTree();
console.log(`notebooks run in a copy of the working tree: ${path.relative(root, tree)}`);

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
      // The plotly.js bundle output is library source (it says `new Uint8Array(256)`), not a value dump.
      const html0 = joined(o.data?.["text/html"]);
      const shown = [joined(o.text), joined(o.data?.["text/plain"]), html0.includes(PLOTLY_LOADER) ? "" : html0].join("\n");
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

/** Notebooks that must show a style being learned (a `style-check` cell that passes). */
const MUST_LEARN = /^0[13]-/;
/** ×1 must score at least this much more style than ×0 (the demo's network rises about 0.2; the flat control 0.003). */
const STYLE_RISE = 0.1;
/** Content may drop at most this much below ×0 at any multiplier (the demo's check). */
const CONTENT_DROP = 0.15;

interface StyleRow {
  multiplier: number;
  style: number;
  colour: number;
  shape: number;
}

/** The rows of `hn.styleCheck`'s table (`      ×0.5 │ 0.324 │   100% │  88%`). */
function parseStyleTable(text: string): StyleRow[] {
  const rows: StyleRow[] = [];
  for (const m of text.matchAll(/^\s*×([\d.]+) │ ([\d.]+) │\s*(\d+)% │\s*(\d+)%\s*$/gm))
    rows.push({ multiplier: Number(m[1]), style: Number(m[2]), colour: Number(m[3]) / 100, shape: Number(m[4]) / 100 });
  return rows;
}

/** Check, from the printed scores alone, that the notebook's network learned the style and kept the content. */
function checkStyleLearned(nb: string, code: Cell[]): void {
  const cells = code.filter((c) => (c.metadata.tags ?? []).includes("style-check"));
  if (cells.length === 0) {
    if (MUST_LEARN.test(nb)) fail(`${nb}: no cell tagged style-check (hn.styleCheck) shows that the style was learned`);
    return;
  }
  for (const c of cells) {
    const text = (c.outputs ?? []).map((o) => joined(o.text) + joined(o.data?.["text/plain"])).join("\n");
    const rows = parseStyleTable(text).sort((a, b) => a.multiplier - b.multiplier);
    if (rows.length < 3 || rows[0]!.multiplier !== 0 || rows.at(-1)!.multiplier !== 1) {
      fail(`${nb}: the style-check cell printed no ×0 … ×1 score table (got ${rows.length} rows)`);
      continue;
    }
    const shown = rows.map((r) => `×${r.multiplier} style ${r.style.toFixed(3)} colour ${r.colour} shape ${r.shape}`).join("; ");
    console.log(`  ${nb}: style check ${shown}`);
    const x0 = rows[0]!;
    const x1 = rows.at(-1)!;
    if (!(x1.style - x0.style >= STYLE_RISE))
      fail(`${nb}: the style score rises only ${(x1.style - x0.style).toFixed(3)} from ×0 to ×1 (needs ${STYLE_RISE}): ${shown}`);
    if (!rows.every((r, i) => i === 0 || r.style > rows[i - 1]!.style))
      fail(`${nb}: the style score does not rise with the multiplier: ${shown}`);
    for (const r of rows)
      if (r.colour < x0.colour - CONTENT_DROP - 1e-9 || r.shape < x0.shape - CONTENT_DROP - 1e-9)
        fail(`${nb}: content lost at ×${r.multiplier} (more than 15 points below ×0): ${shown}`);
  }
}

/** Everything a code cell printed or displayed, as one text (stream text and every MIME type's data). */
function cellText(c: Cell): string {
  return (c.outputs ?? [])
    .map(
      (o) =>
        joined(o.text) +
        Object.values(o.data ?? {})
          .map(joined)
          .join(""),
    )
    .join("\n");
}

/** The largest mean |Δ attention| a network row printed by `hn.attentionMaps`, by the row's label (`pastel02 ×1`). */
function attentionChanges(text: string): Map<string, number> {
  const rows = new Map<string, number>();
  for (const m of text.matchAll(/^(.+?), (?:layer \S+|mean over every cross-attention layer): mean \|Δ attention\| per token (.+)$/gm)) {
    const values = [...m[2]!.matchAll(/ (\d+\.\d+)(?:,|$)/g)].map((v) => Number(v[1]));
    rows.set(m[1]!, Math.max(...values));
  }
  return rows;
}

/** The trained network of notebook 02 must change attention visibly: its largest per-token mean |Δ| at least this. */
const ATTENTION_VISIBLE = 0.03;

/**
 * What notebooks 02 and 03 promise beyond the style check: 02 prints the attention difference of
 * a trained network (label `pastel02`), large enough to see and larger than the untrained one's;
 * 03's live chart draws the validation loss and its LR range test prints a suggested schedule.
 */
function checkLessons(nb: string, code: Cell[]): void {
  const all = code.map(cellText).join("\n");
  if (nb.startsWith("02-")) {
    const rows = attentionChanges(all);
    const trained = [...rows].find(([label]) => label.startsWith("pastel02"));
    const others = [...rows].filter(([label]) => !label.startsWith("pastel02")).map(([, v]) => v);
    console.log(`  ${nb}: attention change (largest mean |Δ|) ${[...rows].map(([l, v]) => `${l} ${v.toFixed(3)}`).join(", ")}`);
    if (!trained) fail(`${nb}: no attention-difference line for the trained network (pastel02)`);
    else if (!(trained[1] >= ATTENTION_VISIBLE))
      fail(`${nb}: the trained network changes attention by at most ${trained[1]} (< ${ATTENTION_VISIBLE})`);
    else if (others.some((v) => v >= trained[1])) fail(`${nb}: the untrained network changes attention as much as the trained one`);
  }
  if (nb.startsWith("03-")) {
    const live = code.filter((c) => (c.metadata.tags ?? []).includes("live")).map(cellText);
    if (live.length === 0 || !live.every((t) => t.includes("validation loss")))
      fail(`${nb}: a live training chart does not draw the validation loss`);
    const lr = /LR range test: (\d+) steps.*suggested learning rate \S+ → learningRate: "([^"]+)"/.exec(all);
    if (!lr) fail(`${nb}: the LR range test printed no suggested schedule`);
    else console.log(`  ${nb}: LR range test ${lr[1]} steps, suggested "${lr[2]}"`);
  }
}

/** One notebook's execution: how many Run Alls, the exit status, run_notebook.py's stderr, seconds. */
interface Executed {
  nb: string;
  runs: number;
  status: number;
  stderr: string;
  secs: string;
}

/** Execute one notebook (`runs` Run Alls in one kernel) into out/notebooks/. */
function execute(nb: string): Promise<Executed> {
  const t0 = Date.now();
  const source = JSON.parse(fs.readFileSync(path.join(root, "notebooks", nb), "utf8")) as { cells: Cell[] };
  const runs = !once && source.cells.some((c) => (c.metadata.tags ?? []).includes("live")) ? 2 : 1;
  const argv = [
    path.join(root, "scripts", "run_notebook.py"),
    path.join(root, "notebooks", nb),
    path.join(outDir, nb),
    "--runs",
    String(runs),
  ];
  return new Promise((resolve) => {
    const child = spawn("/usr/bin/python3", argv, { cwd: root, env, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString("utf8")).slice(-200_000);
    });
    const timer = setTimeout(() => child.kill("SIGTERM"), runs * 45 * 60_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      const secs = ((Date.now() - t0) / 1000).toFixed(1);
      console.log(`  executed ${nb} (${runs} run(s)) in ${secs} s${code === 0 ? "" : `, exit status ${code}`}`);
      resolve({ nb, runs, status: code ?? 1, stderr, secs });
    });
  });
}

/** Execute the notebooks, `jobs` at a time; results in the notebooks' order. */
async function executeAll(): Promise<Executed[]> {
  const results: Executed[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < notebooks.length) {
      const i = next++;
      results[i] = await execute(notebooks[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, notebooks.length) }, worker));
  return results;
}

/**
 * Write an executed notebook to docs/notebooks/ for reading without a kernel: the plotly.js bundle
 * output is dropped (each chart carries a PNG of itself, checked above), and so are nbclient's
 * per-cell timings; paths into the tree copy lose its prefix. Returns the file's size in bytes.
 */
function publish(nb: string): number {
  const doc = JSON.parse(fs.readFileSync(path.join(outDir, nb), "utf8")) as { cells: Array<Cell & { metadata: Record<string, unknown> }> };
  for (const c of doc.cells) {
    delete c.metadata.execution;
    if (c.cell_type === "code") c.outputs = (c.outputs ?? []).filter((o) => !joined(o.data?.["text/html"]).includes(PLOTLY_LOADER));
  }
  fs.mkdirSync(publishDir, { recursive: true });
  const file = path.join(publishDir, nb);
  // Paths the kernels printed are inside the tree copy; show them relative to the repository, as a reader's run prints them.
  const text = JSON.stringify(doc, null, 1)
    .split(`${path.join(outDir, "tree")}${path.sep}`)
    .join("");
  fs.writeFileSync(file, `${text}\n`);
  return fs.statSync(file).size;
}

async function main(): Promise<void> {
  const passed: string[] = [];
  const forHtml: string[] = [];
  for (const r of await executeAll()) {
    const { nb, runs, secs } = r;
    const before = failures.length;
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
      // A saved notebook shows In [n], not In [ ], for every cell that ran.
      if (typeof c.execution_count !== "number" && joined(c.source).trim() !== "")
        fail(`${nb}: code cell ${i + 1} has no execution count (its prompt reads In [ ])`);
      for (const o of outs) {
        if (o.output_type === "error") fail(`${nb}: code cell ${i + 1} raised ${o.ename}: ${o.evalue}`);
        if (o.output_type === "stream" && o.name === "stderr" && /\d+:\d+ - |Error:/.test(joined(o.text)))
          fail(`${nb}: code cell ${i + 1} wrote an error to stderr: ${joined(o.text).slice(0, 400)}`);
      }
      const tags = c.metadata.tags ?? [];
      if (tags.includes("live")) {
        const text = cellText(c);
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
    checkStyleLearned(nb, code);
    checkLessons(nb, code);
    if (failures.length === before) passed.push(nb);
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
    if (res.images === 0 || res.decoded !== res.images)
      fail(`${nb}: preview images did not all decode in Chromium (${JSON.stringify(res)})`);
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

  if (wantPublish) {
    let total = 0;
    for (const nb of passed) {
      const bytes = publish(nb);
      total += bytes;
      console.log(`  published ${path.relative(root, path.join(publishDir, nb))} (${(bytes / 1024).toFixed(0)} KiB)`);
    }
    console.log(`  published ${passed.length} notebook(s), ${(total / 1024 ** 2).toFixed(2)} MiB`);
  }

  if (failures.length) {
    console.log(`\ntest-notebooks: ${failures.length} failure(s)`);
    process.exit(1);
  }
  console.log(`\ntest-notebooks: ${notebooks.length} notebook(s) passed`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
