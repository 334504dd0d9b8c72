/**
 * Backend selection: the one place that decides where tfjs runs.
 *
 * `auto` tries, in order, tfjs-node-gpu (CUDA) → tfjs-node (libtensorflow on the CPU) → WebGPU
 * (Dawn via the `webgpu` package, on a hardware adapter) → wasm (SIMD) → the pure-JS cpu backend,
 * initialises the first that works, and reports the device plus the real reason each earlier one
 * was skipped. All model code is backend-agnostic; nothing else in the project picks a backend.
 *
 * Optional packages are loaded with guarded, dynamic `require`s: any of them may be absent.
 */
import * as tf from "@tensorflow/tfjs";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { inspect } from "node:util";
import { registerWasmKernelOverrides } from "./wasm-kernels";
import { installWebgpuLaunchPatches } from "./webgpu-launch";

/** A concrete backend this module can select. */
export type BackendName = "tensorflow-gpu" | "tensorflow" | "webgpu" | "wasm" | "cpu";
/** What a caller may ask for: a concrete backend, or `auto` (the first that works, fastest first). */
export type BackendChoice = "auto" | BackendName;

/** The order `auto` tries backends in. */
export const AUTO_ORDER: readonly BackendName[] = ["tensorflow-gpu", "tensorflow", "webgpu", "wasm", "cpu"];
const CHOICES: readonly BackendChoice[] = ["auto", ...AUTO_ORDER];

/** Options for {@link useBackend}. */
export interface UseBackendOptions {
  /** Do not print the summary (default false). */
  quiet?: boolean;
  /**
   * Threads for the wasm backend. Only tfjs's threaded wasm build can use more than one, and tfjs
   * never selects that build in Node, so this is recorded and reported rather than obeyed there.
   */
  threads?: number;
}

/** A backend that was not used, and why. */
export interface SkippedBackend {
  backend: BackendName;
  reason: string;
}

/** What {@link useBackend} selected, on what device, and why the others were passed over. */
export interface BackendReport {
  /** The backend now active. */
  backend: BackendName;
  /** tfjs's own name for it (`tf.getBackend()`): tensorflow, webgpu, wasm or cpu. */
  tfjsBackend: string;
  /** Human-readable device, e.g. "CPU (wasm SIMD, 1 thread)" or the WebGPU adapter description. */
  device: string;
  /** What was asked for. */
  requested: BackendChoice;
  /** Where the request came from: the function argument or the HYPERNET_BACKEND variable. */
  requestedBy: "argument" | "HYPERNET_BACKEND";
  /** Backends tried before the chosen one (auto mode), each with the real reason it was skipped. */
  skipped: SkippedBackend[];
  /** Extra facts worth knowing (kernel overrides installed, thread limits, speed caveats). */
  notes: string[];
}

const nodeRequire = createRequire(__filename);

/** Outcome of trying one backend: ready (with its device) or skipped (with the reason). */
type Attempt = { ok: true; device: string; notes: string[] } | { ok: false; reason: string };

const firstLine = (e: unknown): string =>
  String(e instanceof Error ? e.message : e)
    .split("\n")[0]!
    .trim();

function isInstalled(pkg: string): boolean {
  try {
    nodeRequire.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

/**
 * `tf.setBackend` without its console noise: tfjs logs a failed initialisation with console.warn
 * and returns false; we capture that text to use as the skip reason.
 */
async function setBackendCapturing(name: string): Promise<{ ok: boolean; message: string }> {
  const captured: string[] = [];
  const { warn, error } = console;
  const capture = (...args: unknown[]): void => {
    captured.push(args.map((a) => (a instanceof Error ? a.message : String(a))).join(" "));
  };
  console.warn = capture;
  console.error = capture;
  // tfjs reports why an initialisation failed only through its logger, which prod mode silences:
  // let it speak while we capture, so the skip reason is the real error.
  const prod = tf.env().getBool("PROD");
  tf.env().set("PROD", false);
  try {
    const ok = await tf.setBackend(name);
    // Keep each logged error's first line (its message), not tfjs's preamble or the stack.
    const lines = captured.map((c) => c.split("\n")[0]!.trim()).filter((c) => c && !/^Initialization of backend \S+ failed$/.test(c));
    return { ok, message: lines.join(" / ").replace(/\s+/g, " ").trim() };
  } catch (e) {
    return { ok: false, message: firstLine(e) };
  } finally {
    tf.env().set("PROD", prod);
    console.warn = warn;
    console.error = error;
  }
}

// ---------------------------------------------------------------- tfjs-node(-gpu)

async function tryTfjsNode(gpu: boolean): Promise<Attempt> {
  const pkg = gpu ? "@tensorflow/tfjs-node-gpu" : "@tensorflow/tfjs-node";
  if (!isInstalled(pkg)) {
    return {
      ok: false,
      reason: gpu
        ? `${pkg}: not installed (optional dependency; needs CUDA 11.2 + cuDNN 8.1, and its install script downloads libtensorflow; see environment/README.md)`
        : `${pkg}: not installed (not a project dependency; its install script downloads libtensorflow; see environment/README.md)`,
    };
  }
  try {
    nodeRequire(pkg);
  } catch (e) {
    return { ok: false, reason: `${pkg}: installed but failed to load: ${firstLine(e)}` };
  }
  if (tf.findBackendFactory("tensorflow") == null) {
    return {
      ok: false,
      reason: `${pkg}: loaded, but it registered its backend with a different copy of @tensorflow/tfjs-core than ours (${tf.version_core}); install the same tfjs version for both`,
    };
  }
  const r = await setBackendCapturing("tensorflow");
  if (!r.ok) return { ok: false, reason: `${pkg}: initialisation failed: ${r.message || "no message"}` };
  const backend = tf.backend() as unknown as { isUsingGpuDevice?: boolean };
  if (gpu && backend.isUsingGpuDevice === true) return { ok: true, device: "CUDA GPU (libtensorflow via tfjs-node-gpu)", notes: [] };
  if (gpu) return { ok: true, device: "CPU (libtensorflow; tfjs-node-gpu found no usable CUDA device)", notes: [] };
  return { ok: true, device: "CPU (libtensorflow via tfjs-node)", notes: [] };
}

// ---------------------------------------------------------------- WebGPU (Dawn)

interface AdapterFacts {
  vendor?: string;
  architecture?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}

interface WebGpuProbe {
  adapter: AdapterFacts | null;
  /** Dawn's / the Vulkan loader's own diagnostics, when there is no adapter. */
  diagnostics: string;
}

/**
 * Ask Dawn for an adapter in a child Node process. Dawn prints why it rejected a driver
 * (missing libvulkan, a Vulkan feature lavapipe 22 lacks, …) on the native stderr, which this
 * process cannot capture; the child's stderr carries it back. It also keeps a crashing driver out
 * of this process. Cached: the answer does not change within a process.
 */
let webgpuProbe: WebGpuProbe | undefined;
function probeWebGpu(webgpuEntry: string): WebGpuProbe {
  if (webgpuProbe) return webgpuProbe;
  const script = `
    import(${JSON.stringify(pathToFileURL(webgpuEntry).href)}).then(async (w) => {
      const a = await w.create([]).requestAdapter({ powerPreference: "high-performance" });
      const i = a ? (a.info || {}) : null;
      process.stdout.write("\\n@@" + JSON.stringify(a ? { vendor: i.vendor, architecture: i.architecture,
        description: i.description || i.device, isFallbackAdapter: Boolean(a.isFallbackAdapter || i.isFallbackAdapter) } : null));
      process.exit(0);
    }).catch((e) => { process.stderr.write(String(e && e.message || e)); process.exit(1); });`;
  const r = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 60_000 });
  const marker = (r.stdout ?? "").lastIndexOf("\n@@");
  const diagnostics = [r.error ? firstLine(r.error) : "", r.stderr ?? ""]
    .join("\n")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("at ") && !/artificially reduced|XDG_RUNTIME_DIR/.test(l))
    .map((l) => l.replace(/^Warning:\s*/, ""))
    .join("; ");
  let adapter: AdapterFacts | null = null;
  if (marker >= 0) {
    try {
      adapter = JSON.parse(r.stdout.slice(marker + 3)) as AdapterFacts | null;
    } catch {
      adapter = null;
    }
  }
  webgpuProbe = { adapter, diagnostics: diagnostics || (r.status !== 0 ? `probe exited with status ${r.status}` : "") };
  return webgpuProbe;
}

const isSoftwareAdapter = (a: AdapterFacts): boolean =>
  a.architecture === "software" ||
  a.isFallbackAdapter === true ||
  /llvmpipe|lavapipe|swiftshader|software/i.test(`${a.description ?? ""} ${a.vendor ?? ""}`);

const adapterName = (a: AdapterFacts): string => a.description || [a.vendor, a.architecture].filter(Boolean).join(" ") || "unnamed adapter";

interface WebGpuModule {
  create(options: string[]): unknown;
  globals: Record<string, unknown>;
}

/** Load the ESM-only `webgpu` package: require(esm) on Node ≥ 20.19, a real dynamic import before that. */
async function loadWebGpuModule(entry: string): Promise<WebGpuModule> {
  try {
    return nodeRequire(entry) as WebGpuModule;
  } catch (e) {
    if ((e as { code?: string }).code !== "ERR_REQUIRE_ESM") throw e;
    // `new Function` keeps TypeScript's CommonJS output from turning import() into require().
    const importEsm = new Function("u", "return import(u)") as (u: string) => Promise<WebGpuModule>;
    return importEsm(pathToFileURL(entry).href);
  }
}

let navigatorGpuExposed = false;
/**
 * Make `navigator.gpu` exist (plus the WebGPU enum globals) before tfjs-backend-webgpu is loaded:
 * that module registers its backend only if `navigator.gpu` is present at import time.
 */
async function exposeNavigatorGpu(entry: string): Promise<void> {
  if (navigatorGpuExposed) return;
  const { create, globals } = await loadWebGpuModule(entry);
  Object.assign(globalThis, globals);
  const gpu = create([]);
  const g = globalThis as { navigator?: object };
  if (g.navigator && typeof g.navigator === "object") {
    Object.defineProperty(g.navigator, "gpu", { value: gpu, configurable: true, writable: true });
  } else {
    g.navigator = { gpu };
  }
  navigatorGpuExposed = true;
}

const WEBGPU_HELP =
  "WebGPU in Node needs a Vulkan driver: install libvulkan1 and mesa-vulkan-drivers (or your GPU vendor's Vulkan driver; NVIDIA's also needs libglvnd0, and VK_DRIVER_FILES set to its nvidia_icd.json if the loader does not find it); on CPU-only Debian 12, lavapipe 22.3 is rejected by Dawn — run environment/setup-webgpu-cpu.sh for Mesa 25 lavapipe from bookworm-backports (see environment/README.md)";

/** Where environment/setup-webgpu-cpu.sh leaves its Vulkan driver manifest, relative to a checkout. */
const PRIVATE_LAVAPIPE_ICD = path.join(".cache", "lavapipe", "lvp_icd.x86_64.json");

/**
 * The private Mesa 25 lavapipe manifest written by environment/setup-webgpu-cpu.sh, if this
 * checkout (or the working directory) has one whose driver library is present; null otherwise.
 */
export function findPrivateLavapipe(): string | null {
  const roots = [path.resolve(__dirname, "..", ".."), process.cwd()];
  for (const root of roots) {
    const icd = path.join(root, PRIVATE_LAVAPIPE_ICD);
    try {
      const manifest = JSON.parse(fs.readFileSync(icd, "utf8")) as { ICD?: { library_path?: string } };
      const lib = manifest.ICD?.library_path;
      // The Vulkan loader resolves a relative library_path against the manifest's folder.
      if (lib && fs.existsSync(path.resolve(path.dirname(icd), lib))) return icd;
    } catch {
      // absent or unreadable: try the next root
    }
  }
  return null;
}

/**
 * Point the Vulkan loader at the private lavapipe when the user has not chosen drivers. The loader
 * reads VK_ICD_FILENAMES (VK_DRIVER_FILES in newer loaders) when Dawn creates its Vulkan instance,
 * so setting it in this process before the first adapter request is enough; the probe child
 * inherits it. The manifest names the driver by path, so LD_LIBRARY_PATH (which a running
 * process cannot change for itself) is not needed: lavapipe's libdrm imports all exist in
 * bookworm's libdrm. Returns a note for the report, or null when nothing was changed.
 */
function usePrivateLavapipe(): string | null {
  if (process.env.VK_ICD_FILENAMES || process.env.VK_DRIVER_FILES) return null;
  const icd = findPrivateLavapipe();
  if (!icd) return null;
  process.env.VK_ICD_FILENAMES = icd;
  return `Vulkan driver: the private Mesa lavapipe from environment/setup-webgpu-cpu.sh (VK_ICD_FILENAMES=${icd})`;
}

let privateDriverNote: string | null = null;

const SYNC_READ_NOTE =
  "WebGPU in Node cannot read GPU tensors synchronously: dataSync()/arraySync() (and moving a tensor to another backend) fail; use `await tensor.data()`";

/**
 * tfjs-backend-webgpu reads a GPU buffer synchronously by drawing it onto an `OffscreenCanvas`,
 * which Node does not have, so `dataSync()` dies with "OffscreenCanvas is not defined". Wrap the
 * backend's readSync so that failure says what happened and what to use instead. Returns whether
 * the wrapper is in place (only where OffscreenCanvas is missing).
 */
function explainSyncReadback(): boolean {
  if (typeof (globalThis as { OffscreenCanvas?: unknown }).OffscreenCanvas !== "undefined") return false;
  const backend = tf.findBackend("webgpu") as unknown as { readSync(dataId: object): unknown; __syncReadExplained?: boolean } | null;
  if (!backend) return false;
  if (backend.__syncReadExplained) return true;
  const readSync = backend.readSync.bind(backend);
  backend.readSync = (dataId: object): unknown => {
    try {
      return readSync(dataId);
    } catch (e) {
      if (!/OffscreenCanvas/.test(firstLine(e))) throw e;
      throw new Error(
        "tensor.dataSync()/arraySync() is not available on the WebGPU backend in Node: tfjs-backend-webgpu reads GPU memory synchronously through OffscreenCanvas, which Node lacks. Read with `await tensor.data()` / `await tensor.array()` instead (moving a tensor to another backend needs a synchronous read too).",
      );
    }
  };
  backend.__syncReadExplained = true;
  return true;
}

async function tryWebGpu(auto: boolean): Promise<Attempt> {
  let entry: string;
  try {
    entry = nodeRequire.resolve("webgpu");
  } catch {
    return { ok: false, reason: "webgpu: package not installed (optional dependency, 132 MB; `npm install webgpu`)" };
  }
  if (!isInstalled("@tensorflow/tfjs-backend-webgpu")) return { ok: false, reason: "@tensorflow/tfjs-backend-webgpu: not installed" };
  // Before the probe: Dawn and the Vulkan loader read VK_ICD_FILENAMES only when first asked.
  const driverNote = webgpuProbe ? null : usePrivateLavapipe();
  if (driverNote) privateDriverNote = driverNote;
  const probe = probeWebGpu(entry);
  if (!probe.adapter) {
    return { ok: false, reason: `no WebGPU adapter (Dawn: ${probe.diagnostics || "no Vulkan adapter found"}). ${WEBGPU_HELP}` };
  }
  const software = isSoftwareAdapter(probe.adapter);
  if (auto && software) {
    return {
      ok: false,
      reason: `only a software Vulkan adapter (${adapterName(probe.adapter)}), measured 7–10× slower than wasm on this kind of CPU; choose it explicitly with useBackend("webgpu")`,
    };
  }
  try {
    await exposeNavigatorGpu(entry);
    nodeRequire("@tensorflow/tfjs-backend-webgpu");
  } catch (e) {
    return { ok: false, reason: `webgpu: failed to load: ${firstLine(e)}` };
  }
  if (tf.findBackendFactory("webgpu") == null) {
    return {
      ok: false,
      reason:
        "@tensorflow/tfjs-backend-webgpu was imported before navigator.gpu existed, so it did not register; call useBackend() before importing it",
    };
  }
  const r = await setBackendCapturing("webgpu");
  if (!r.ok) return { ok: false, reason: `webgpu: initialisation failed: ${r.message || "no message"}. ${WEBGPU_HELP}` };
  const notes = software ? ["software WebGPU adapter: correct, but expect it to be 7–10× slower than wasm"] : [];
  if (privateDriverNote) notes.push(privateDriverNote);
  if (explainSyncReadback()) notes.push(SYNC_READ_NOTE);
  const launch = installWebgpuLaunchPatches(); // cheaper launches: src/backend/webgpu-launch.ts
  notes.push(
    launch.installed
      ? `WebGPU launch patches: ${launch.patches!.applied.join(", ")}`
      : `WebGPU launch patches not applied: ${launch.reason}`,
  );
  return { ok: true, device: `${adapterName(probe.adapter)} (WebGPU via Dawn)`, notes };
}

// ---------------------------------------------------------------- wasm and cpu

interface WasmModule {
  setThreadsCount(n: number): void;
  getThreadsCount(): number;
}

async function tryWasm(threads: number | undefined): Promise<Attempt> {
  let wasm: WasmModule;
  try {
    wasm = nodeRequire("@tensorflow/tfjs-backend-wasm") as WasmModule;
  } catch (e) {
    return { ok: false, reason: `@tensorflow/tfjs-backend-wasm: failed to load: ${firstLine(e)}` };
  }
  if (threads != null) wasm.setThreadsCount(threads);
  const r = await setBackendCapturing("wasm");
  if (!r.ok) return { ok: false, reason: `wasm: initialisation failed: ${r.message || "no message"}` };
  const notes: string[] = [];
  const installed = registerWasmKernelOverrides();
  notes.push(
    `wasm kernel overrides active (${installed.length ? "installed now" : "already installed"}): Conv2DBackpropFilter, Conv2DBackpropInput, BatchMatMul`,
  );
  const simd = (await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT")) === true;
  const n = wasm.getThreadsCount();
  if (threads != null && threads > n) {
    notes.push(`asked for ${threads} wasm threads, running ${n}: tfjs turns WASM_HAS_MULTITHREAD_SUPPORT off in Node`);
  }
  return { ok: true, device: `CPU (wasm ${simd ? "SIMD" : "without SIMD"}, ${n} thread${n === 1 ? "" : "s"})`, notes };
}

async function tryCpu(): Promise<Attempt> {
  const r = await setBackendCapturing("cpu");
  if (!r.ok) return { ok: false, reason: `cpu: initialisation failed: ${r.message || "no message"}` };
  return {
    ok: true,
    device: "CPU (pure JavaScript)",
    notes: ["the pure-JS cpu backend is 25–100× slower than wasm; use it for reference checks"],
  };
}

function attempt(name: BackendName, auto: boolean, opts: UseBackendOptions): Promise<Attempt> {
  switch (name) {
    case "tensorflow-gpu":
      return tryTfjsNode(true);
    case "tensorflow":
      return tryTfjsNode(false);
    case "webgpu":
      return tryWebGpu(auto);
    case "wasm":
      return tryWasm(opts.threads);
    case "cpu":
      return tryCpu();
  }
}

/** Parse a backend choice, naming where it came from when it is not one we know. */
function parseChoice(value: string, source: string): BackendChoice {
  const v = value.trim().toLowerCase();
  if ((CHOICES as readonly string[]).includes(v)) return v as BackendChoice;
  throw new Error(`Unknown backend "${value}" (from ${source}). Choose one of: ${CHOICES.join(", ")}.`);
}

/** One-paragraph text form of a report, as printed by {@link useBackend}. */
export function formatBackendReport(r: BackendReport): string {
  const lines = [
    `tfjs backend: ${r.backend} — ${r.device}${r.requestedBy === "HYPERNET_BACKEND" ? ` (HYPERNET_BACKEND=${r.requested})` : ""}`,
  ];
  for (const s of r.skipped) lines.push(`  skipped ${s.backend}: ${s.reason}`);
  for (const n of r.notes) lines.push(`  note: ${n}`);
  return lines.join("\n");
}

let lastReport: BackendReport | undefined;
/** The report of the most recent successful {@link useBackend} call, if any. */
export function currentBackendReport(): BackendReport | undefined {
  return lastReport;
}

async function selectBackend(choiceArg: BackendChoice, opts: UseBackendOptions): Promise<BackendReport> {
  const env = process.env.HYPERNET_BACKEND?.trim();
  const requestedBy = env ? "HYPERNET_BACKEND" : "argument";
  const requested = env ? parseChoice(env, "the HYPERNET_BACKEND environment variable") : parseChoice(String(choiceArg), "useBackend()");
  tf.enableProdMode();
  const auto = requested === "auto";
  const skipped: SkippedBackend[] = [];
  for (const name of auto ? AUTO_ORDER : [requested as BackendName]) {
    const a = await attempt(name, auto, opts);
    if (a.ok) {
      await tf.ready();
      const report: BackendReport = {
        backend: name,
        tfjsBackend: tf.getBackend(),
        device: a.device,
        requested,
        requestedBy,
        skipped,
        notes: a.notes,
      };
      // The summary is printed above; a notebook or REPL echoing the returned value shows one line.
      Object.defineProperty(report, inspect.custom, { value: () => `BackendReport { ${name}: ${a.device} }`, enumerable: false });
      lastReport = report;
      if (!opts.quiet) console.log(formatBackendReport(report));
      return report;
    }
    const { reason } = a as Extract<Attempt, { ok: false }>; // TS 5.0 (tslab) does not narrow here
    if (!auto)
      throw new Error(
        `Backend "${name}" (requested via ${requestedBy === "argument" ? "useBackend()" : "HYPERNET_BACKEND"}) is not usable: ${reason}`,
      );
    skipped.push({ backend: name, reason });
  }
  // Unreachable in practice: the cpu backend ships inside @tensorflow/tfjs.
  throw new Error(`No tfjs backend could be initialised:\n${skipped.map((s) => `  ${s.backend}: ${s.reason}`).join("\n")}`);
}

let queue: Promise<unknown> = Promise.resolve();

/**
 * Select and initialise the tfjs backend, print which one and why (unless `quiet`), and return the
 * report. The `HYPERNET_BACKEND` environment variable, when set, overrides `choice`. An explicit
 * choice that cannot be used throws with the reason; `auto` falls through to the next backend.
 * Safe to call repeatedly (calls are serialised; probes and registrations happen once).
 * `useBackend({ quiet: true })` is auto with options.
 */
export function useBackend(choice?: BackendChoice | UseBackendOptions, opts: UseBackendOptions = {}): Promise<BackendReport> {
  // `useBackend({ quiet: true })` means auto with options.
  const c: BackendChoice = typeof choice === "string" ? choice : "auto";
  const o: UseBackendOptions = typeof choice === "object" ? { ...choice, ...opts } : opts;
  const run = queue.then(() => selectBackend(c, o));
  queue = run.catch(() => undefined);
  return run;
}
