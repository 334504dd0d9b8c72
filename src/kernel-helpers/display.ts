/**
 * Display adapters: one way for the notebook helpers to show things, wherever they run.
 *
 * - Inside a tslab kernel, output goes to the notebook: HTML and PNG outputs, and *live* displays —
 *   one output (one Jupyter display id) that is replaced in place on every update, so a training
 *   loop shows one chart and one progress line that move, not hundreds of appended outputs.
 * - Anywhere else (REPL, scripts, CI), the same calls write files under an output folder
 *   (`hypernet-output/` by default, `HYPERNET_OUTPUT_DIR` or {@link setOutputDir} to change it)
 *   and print progress and file paths to the terminal.
 *
 * tslab is loaded lazily: `tslab.newDisplay()` only works inside the kernel, and requiring tslab
 * outside it must cost nothing and print nothing. Inside the kernel, the kernel's IOPub sends are
 * queued first (`kernel-sends.ts`: tslab's overlapping sends killed the kernel after large outputs).
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { queueTslabSends } from "./kernel-sends";

/** Where output goes: the notebook (tslab kernel) or files plus terminal lines. */
export type DisplayMode = "notebook" | "files";

/** The part of tslab's `Display` the helpers use (see `tslab/dist/public.d.ts`). */
interface TslabDisplay {
  html(s: string): void;
  png(b: Uint8Array): void;
  text(s: string): void;
  markdown(s: string): void;
}
interface TslabModule {
  newDisplay(): TslabDisplay;
  display: TslabDisplay;
}

const nodeRequire = createRequire(__filename);
let forcedMode: DisplayMode | undefined;
let outputDir: string | undefined;

/**
 * The kernel's tslab module, or undefined outside a kernel. Inside a kernel, tslab hooks
 * `require("tslab")` in cells and in the TypeScript files they import, so this returns the very
 * instance that talks to Jupyter; its internal `jupyter.lastWriteDisplayData` is set only once the
 * kernel has started.
 */
function kernelTslab(): TslabModule | undefined {
  try {
    // The literal "tslab" must reach `require` itself: that is the call tslab intercepts.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require("tslab") as TslabModule;
    const jupyterFile = path.join(path.dirname(nodeRequire.resolve("tslab")), "jupyter.js");
    const jupyter = nodeRequire(jupyterFile) as { lastWriteDisplayData?: unknown; ZmqServer?: Parameters<typeof queueTslabSends>[0] };
    if (!jupyter.lastWriteDisplayData) return undefined;
    // Large outputs and tslab's own status messages must not overlap on the socket (kernel-sends.ts).
    if (jupyter.ZmqServer) queueTslabSends(jupyter.ZmqServer);
    return mod;
  } catch {
    return undefined;
  }
}

/**
 * Which adapter is active. `HYPERNET_DISPLAY=files|notebook` or {@link setDisplayMode} override the
 * detection (tests use this); otherwise "notebook" exactly when running inside a tslab kernel.
 */
export function displayMode(): DisplayMode {
  if (forcedMode) return forcedMode;
  const env = process.env.HYPERNET_DISPLAY;
  if (env === "files" || env === "notebook") return env;
  return kernelTslab() ? "notebook" : "files";
}

/** Force a display mode (`undefined` returns to detection). */
export function setDisplayMode(mode: DisplayMode | undefined): void {
  forcedMode = mode;
}

/** The folder the files adapter writes into (created on first write). */
export function getOutputDir(): string {
  return outputDir ?? process.env.HYPERNET_OUTPUT_DIR ?? path.resolve("hypernet-output");
}

/** Change the folder the files adapter writes into. */
export function setOutputDir(dir: string): void {
  outputDir = path.resolve(dir);
}

/**
 * Something that can be shown: HTML, a PNG image, or plain text. HTML may carry a `png` of the
 * same picture: a notebook output then holds both MIME types, so a viewer that does not run the
 * HTML's scripts (GitHub, an untrusted notebook, nbconvert's PDF) still shows the picture.
 */
export type Content = { html: string; png?: Uint8Array } | { png: Uint8Array } | { text: string };

/**
 * The Jupyter MIME bundle of one output: `text/html` and/or `image/png` (base64) and always a short
 * `text/plain`, so a viewer that renders neither shows one line instead of nothing.
 */
export function mimeBundle(content: Content, name = "output"): Record<string, string> {
  if ("text" in content) return { "text/plain": content.text };
  const data: Record<string, string> = {};
  if ("html" in content) data["text/html"] = content.html;
  if (content.png) data["image/png"] = Buffer.from(content.png).toString("base64");
  data["text/plain"] =
    `[${name}: ${"html" in content ? "HTML" : ""}${"html" in content && content.png ? " + " : ""}${content.png ? `PNG ${content.png.length} bytes` : ""}]`;
  return data;
}

type WriteDisplayData = (
  msg: { data: Record<string, string>; metadata: object; transient: { display_id?: string } },
  update: boolean,
) => void;

/**
 * tslab's writer for the cell running now (`jupyter.lastWriteDisplayData`). tslab's own `Display`
 * sends one MIME type per output; an output with HTML and its PNG fallback needs both in one
 * message, so those go through this writer directly.
 */
function kernelWriter(): WriteDisplayData | undefined {
  try {
    const jupyterFile = path.join(path.dirname(nodeRequire.resolve("tslab")), "jupyter.js");
    const jupyter = nodeRequire(jupyterFile) as { lastWriteDisplayData?: WriteDisplayData | null };
    return jupyter.lastWriteDisplayData ?? undefined;
  } catch {
    return undefined;
  }
}

let displayIds = 0;

/**
 * A display that is replaced in place on each `update`. In a notebook it is one output with one
 * display id; outside, it is one file (`<name>.html`/`.png`) rewritten on each update, or one
 * terminal line (text).
 */
export interface LiveDisplay {
  /** Replace what the display shows. */
  update(content: Content): void;
  /** How many times `update` was called. */
  readonly updates: number;
  /** The file last written (files mode), if any. */
  readonly file: string | undefined;
}

/** Sanitised file stem for a display name. */
function stem(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "") || "output";
}

function writeOut(name: string, content: Content): string | undefined {
  if ("text" in content) return undefined;
  const dir = getOutputDir();
  fs.mkdirSync(dir, { recursive: true });
  // HTML with a PNG fallback is written as the HTML page (the page holds the fallback itself).
  const file = path.join(dir, stem(name) + ("html" in content ? ".html" : ".png"));
  // Write then rename, so a browser or image viewer never reads a half-written file.
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, "html" in content ? wrapHtmlPage(name, content.html) : content.png);
  fs.renameSync(tmp, file);
  return file;
}

function wrapHtmlPage(title: string, body: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${title.replace(/</g, "&lt;")}</title></head><body>\n${body}\n</body></html>\n`;
}

class NotebookLiveDisplay implements LiveDisplay {
  updates = 0;
  readonly file = undefined;
  private readonly id = `hn-${process.pid}-${Date.now().toString(36)}-${++displayIds}`;
  constructor(private readonly fallback: TslabDisplay) {}
  update(content: Content): void {
    // One output under this display's own id: the first write creates it, later ones replace it,
    // each with every MIME type the content has (HTML and its PNG fallback together).
    const write = kernelWriter();
    const first = this.updates++ === 0;
    if (write) write({ data: mimeBundle(content), metadata: {}, transient: { display_id: this.id } }, !first);
    else if ("html" in content) this.fallback.html(content.html);
    else if ("png" in content) this.fallback.png(content.png);
    else this.fallback.text(content.text);
  }
}

class FileLiveDisplay implements LiveDisplay {
  updates = 0;
  file: string | undefined;
  private lastText = "";
  constructor(
    private readonly name: string,
    private readonly stream: NodeJS.WriteStream,
  ) {}
  update(content: Content): void {
    this.updates++;
    if ("text" in content) {
      // On a terminal the line is rewritten in place; in a log each update is its own line.
      if (this.stream.isTTY) this.stream.write(`\r\x1b[2K${content.text}`);
      else this.stream.write(content.text + "\n");
      this.lastText = content.text;
      return;
    }
    const first = this.file === undefined;
    this.file = writeOut(this.name, content);
    if (first && this.file) this.stream.write(`${this.name}: ${this.file}\n`);
  }
  /** End a TTY progress line so later output starts on a fresh line. */
  finish(): void {
    if (this.stream.isTTY && this.lastText) this.stream.write("\n");
  }
}

/**
 * A new display that updates in place. `name` names the file outside a notebook
 * (e.g. "loss" → `hypernet-output/loss.html`).
 */
export function liveDisplay(name: string): LiveDisplay & { finish(): void } {
  const tslab = displayMode() === "notebook" ? kernelTslab() : undefined;
  if (tslab) return Object.assign(new NotebookLiveDisplay(tslab.newDisplay()), { finish: () => undefined });
  return new FileLiveDisplay(name, process.stdout);
}

/**
 * Show something once. In a notebook: an HTML/PNG/text output. Outside: HTML and PNG go to
 * `<outputDir>/<name>.html|.png` (the path is printed and returned), text is printed.
 */
export function show(name: string, content: Content): string | undefined {
  const tslab = displayMode() === "notebook" ? kernelTslab() : undefined;
  if (tslab) {
    const write = "html" in content && content.png ? kernelWriter() : undefined;
    if (write) write({ data: mimeBundle(content, name), metadata: {}, transient: {} }, false);
    else if ("html" in content) tslab.display.html(content.html);
    else if ("png" in content) tslab.display.png(content.png);
    else tslab.display.text(content.text);
    return undefined;
  }
  if ("text" in content) {
    process.stdout.write(content.text + "\n");
    return undefined;
  }
  const file = writeOut(name, content);
  process.stdout.write(`${name}: ${file}\n`);
  return file;
}

/** `<img>` tag for PNG bytes, inline as a data URL (so saved notebooks and HTML need no files). */
export function pngImgTag(png: Uint8Array, opts: { alt?: string; width?: number; pixelated?: boolean } = {}): string {
  const b64 = Buffer.from(png).toString("base64");
  const style = opts.pixelated === false ? "" : ` style="image-rendering:pixelated"`;
  const width = opts.width ? ` width="${opts.width}"` : "";
  return `<img src="data:image/png;base64,${b64}" alt="${(opts.alt ?? "").replace(/"/g, "&quot;")}"${width}${style}>`;
}

/** Escape text for HTML. */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
