/**
 * Looking at a training folder from a notebook: a contact sheet of images with their captions as one
 * PNG, and the preprocessing summary as an HTML table. The notebook display layer shows these; nothing
 * here depends on a notebook.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import sharp, { type OverlayOptions } from "sharp";
import { encodePngFrom } from "../io/png";
import type { PreprocessSummary } from "./preprocess";

/** One cell of the grid: an image (file path or encoded bytes) and the text under it. */
export interface GridItem {
  image: string | Buffer;
  caption?: string;
}

/** Layout of the grid. */
export interface GridOptions {
  /** Cell width and image height in px (default 128). */
  cell?: number;
  /** Cells per row (default 4; fewer when there are fewer images). */
  columns?: number;
  /** Lines of caption under each image (default 3; longer captions end with "…"). */
  captionLines?: number;
  /** At most this many images (default 64), the first ones in name order. */
  max?: number;
}

const IMAGE_EXT = new Set([".png", ".jpg", ".jpeg", ".webp", ".gif", ".tif", ".tiff", ".avif"]);

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

/** Greedy word wrap to `width` characters, at most `lines` lines, the last ending in "…" if cut. */
function wrap(text: string, width: number, lines: number): string[] {
  const out: string[] = [];
  let line = "";
  const words = text.replace(/\s+/g, " ").trim().split(" ");
  for (let i = 0; i < words.length; i++) {
    let w = words[i]!;
    while (w.length > width) {
      if (line) {
        out.push(line);
        line = "";
      }
      out.push(w.slice(0, width));
      w = w.slice(width);
    }
    if (!line) line = w;
    else if (line.length + 1 + w.length <= width) line += " " + w;
    else {
      out.push(line);
      line = w;
    }
  }
  if (line) out.push(line);
  if (out.length > lines) {
    const kept = out.slice(0, lines);
    kept[lines - 1] = kept[lines - 1]!.slice(0, Math.max(0, width - 1)) + "…";
    return kept;
  }
  return out;
}

/** The images of a training folder in name order, with the caption from each `<stem>.txt`. */
export function folderItems(dir: string): GridItem[] {
  return fs
    .readdirSync(dir)
    .sort()
    .filter((f) => IMAGE_EXT.has(path.extname(f).toLowerCase()) && fs.statSync(path.join(dir, f)).isFile())
    .map((f) => {
      const txt = path.join(dir, path.parse(f).name + ".txt");
      return { image: path.join(dir, f), caption: fs.existsSync(txt) ? fs.readFileSync(txt, "utf8") : "" };
    });
}

/**
 * Render images with their captions as one PNG contact sheet. `items` is a folder (its images and
 * `.txt` captions) or a list. Each image is fitted inside a `cell`² square; the caption sits under it.
 */
export async function renderGrid(items: string | GridItem[], opts: GridOptions = {}): Promise<Buffer> {
  const cell = opts.cell ?? 128;
  const lines = opts.captionLines ?? 3;
  const list = (typeof items === "string" ? folderItems(items) : items).slice(0, opts.max ?? 64);
  if (list.length === 0) throw new Error(`renderGrid: no images to show${typeof items === "string" ? ` in ${items}` : ""}`);
  const columns = Math.max(1, Math.min(opts.columns ?? 4, list.length));
  const rows = Math.ceil(list.length / columns);
  const fontSize = Math.max(8, Math.round(cell / 12));
  const lineH = Math.round(fontSize * 1.25);
  const cellH = cell + lines * lineH + 4;
  const charsPerLine = Math.max(4, Math.floor(cell / (fontSize * 0.55)));
  const layers: OverlayOptions[] = [];
  let svgText = "";
  for (const [i, item] of list.entries()) {
    const x0 = (i % columns) * cell;
    const y0 = Math.floor(i / columns) * cellH;
    const thumb = await encodePngFrom(sharp(item.image).autoOrient().resize(cell, cell, { fit: "contain", background: "#202020" }));
    layers.push({ input: thumb, left: x0, top: y0 });
    wrap(item.caption ?? "", charsPerLine, lines).forEach((t, j) => {
      svgText += `<text x="${x0 + 3}" y="${y0 + cell + 2 + (j + 1) * lineH - 3}">${escapeXml(t)}</text>`;
    });
  }
  const W = columns * cell;
  const H = rows * cellH;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}"><style>text{font-family:sans-serif;font-size:${fontSize}px;fill:#e8e8e8}</style>${svgText}</svg>`;
  layers.push({ input: Buffer.from(svg), left: 0, top: 0 });
  return encodePngFrom(sharp({ create: { width: W, height: H, channels: 3, background: "#101010" } }).composite(layers));
}

/** The preprocessing summary as an HTML fragment: counts, then the made (the first `maxRows`) and the skipped files. */
export function summaryTable(s: PreprocessSummary, maxRows = Infinity): string {
  const e = escapeXml;
  const made =
    s.made
      .slice(0, maxRows)
      .map((m) => {
        const how = m.flip ? `${m.kind}, ${m.flip} flip` : m.kind;
        const box = m.box ? `${m.box.left},${m.box.top} ${m.box.width}×${m.box.height}` : "";
        return `<tr><td>${e(m.file)}</td><td>${e(m.source)}</td><td>${e(how)}</td><td>${m.width}×${m.height}</td><td>${e(box)}</td><td>${e(m.caption)}</td></tr>`;
      })
      .join("") + (s.made.length > maxRows ? `<tr><td colspan="6">… and ${s.made.length - maxRows} more</td></tr>` : "");
  const skipped = s.skipped.map((k) => `<tr><td>${e(k.source)}</td><td>${e(k.reason)}</td><td>${e(k.detail)}</td></tr>`).join("");
  return (
    `<div class="hn-preprocess"><p>${s.made.length} image(s) made from ${e(s.source)} into ${e(s.destination)} at ${s.width}×${s.height}; ` +
    `${s.skipped.length} file(s) skipped; ${s.captionsFound} existing caption(s) read.</p>` +
    `<table><thead><tr><th>output</th><th>source</th><th>how</th><th>size</th><th>box</th><th>caption</th></tr></thead><tbody>${made}</tbody></table>` +
    (s.skipped.length
      ? `<table><thead><tr><th>skipped</th><th>reason</th><th>detail</th></tr></thead><tbody>${skipped}</tbody></table>`
      : "") +
    `</div>`
  );
}
