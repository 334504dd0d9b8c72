/**
 * Preprocessing: a folder of pictures → a training folder of target-sized PNGs with `.txt` captions.
 *
 * This follows A1111's Train ▸ Preprocess images (spec §5.1), per source file in name order:
 *   1. decode, apply EXIF orientation, drop alpha (kept only with `keepAlpha`, for loss weights);
 *   2. read `<stem>.txt` as the existing caption;
 *   3. make images — split oversized, focal crop, auto-sized crop, keep original size — and, when none
 *      of those applied, the default crop-and-resize (cover, centre, Lanczos);
 *   4. save each as `<index:05>-<sub>-<stem>.png`, then its flipped copies (each with the caption).
 * `index` is the file's position in the sorted listing of the source folder (every entry counts, as
 * in A1111), `sub` counts images made from that source.
 *
 * Unlike A1111 it never writes into the source folder, never replaces an existing output unless
 * `overwrite: true`, reports every file it skipped and why, gives flipped copies their captions, can
 * caption without cropping (`captionOnly`), and puts focal-crop debug images in a sub-folder so
 * they do not become training data.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeFileAtomic, FileExistsError } from "../io/atomic";
import { DEFAULT_FOCAL_WEIGHTS, findFocalCrop, focalScaleSize, type FaceDetector, type FocalWeights, type RawImage } from "./autocrop";
import { captionFromFilename, combineCaptions, type ExistingCaptionAction, type FilenameCaptionOptions } from "./captions";
import { autoSizePlan, coverCropPlan, oversizeRatio, splitPlan, type AutoSizeOptions, type Box } from "./crops";
import { MAX_IMAGE_FILE_BYTES, readCaptionFile, readRegularFile, statEntry } from "./entries";
import {
  cropRaw,
  decodeImage,
  DEFAULT_LIMIT_INPUT_PIXELS,
  drawFocalDebug,
  encodePng,
  flipRaw,
  ImageDecodeError,
  resizeRaw,
  type FlipKind,
} from "./images";

/** Options of `preprocess`. Sizes in pixels; every option has A1111's default. */
export interface PreprocessOptions {
  /** Target width (default 512). */
  width?: number;
  /** Target height (default 512). */
  height?: number;
  /** Replace files already in the destination (default false: stop with an error naming the file). */
  overwrite?: boolean;
  /** Keep the alpha channel (RGBA PNGs) for "alpha as loss weight" training (default false). */
  keepAlpha?: boolean;
  /** Split images much longer than the target into overlapping tiles (default off). */
  split?: boolean | { threshold?: number; overlap?: number };
  /** Crop around the auto-detected focal point instead of the centre, for non-square sources (default off). */
  focalCrop?: boolean | { weights?: Partial<FocalWeights>; faceDetector?: FaceDetector; debugImage?: boolean };
  /** Choose the output size per image from a range (spec §5.4; default off). */
  autoSized?: boolean | AutoSizeOptions;
  /** Also save the image at its own size (default false). */
  keepOriginalSize?: boolean;
  /** Only caption: save each image at its own size with its caption, no crop or resize (default false). */
  captionOnly?: boolean;
  /** Mirror copies to add after each image: `true` = horizontal (default none). */
  flips?: boolean | FlipKind[];
  /** What to do with an existing `<stem>.txt` next to the source (default "ignore"). */
  existingCaption?: ExistingCaptionAction;
  /** Caption generator (e.g. a BLIP or tagger model you load); its text is combined per `existingCaption`. */
  captioner?: (image: RawImage, sourceFile: string) => string | Promise<string>;
  /** Caption from the file name when the caption is otherwise empty (default true; A1111's rule). */
  filenameCaption?: boolean | FilenameCaptionOptions;
  /** Sources whose shorter side is below this are skipped as too small (default 16). */
  minSourceSide?: number;
  /**
   * Most pixels (width × height) a source image may claim; larger ones are skipped with reason
   * `too-many-pixels` before they are decoded (default `DEFAULT_LIMIT_INPUT_PIXELS`, 2^27 ≈ 134 M;
   * `false`: no limit). Raise it for very large scans if you have the memory (3 bytes per pixel).
   */
  limitInputPixels?: number | false;
  /** Called after each source file with a one-line message. */
  log?: (message: string) => void;
}

/** How an output image was made. */
export type MadeKind = "split" | "focal" | "auto-sized" | "original" | "crop" | "caption-only";

/** One image written to the destination. */
export interface MadeImage {
  /** file name in the destination folder */
  file: string;
  /** source file name (in the source folder) */
  source: string;
  kind: MadeKind;
  /** `undefined` for the image itself, else which mirror it is */
  flip?: FlipKind;
  width: number;
  height: number;
  /** caption written next to it ("" when none was written) */
  caption: string;
  /** source scaled to this size before cutting (absent when not scaled) */
  resizeTo?: { width: number; height: number };
  /** the box cut, in pixels of the scaled image (or of the source when not scaled first) */
  box?: Box;
}

/** Why a source file produced nothing. */
export type SkipReason =
  | "not-a-file"
  | "too-large"
  | "empty"
  | "not-an-image"
  | "unsupported-format"
  | "corrupt"
  | "too-many-pixels"
  | "too-small"
  | "no-auto-size";

/**
 * A source file that produced no image, with the reason in words. A caption that could not be read
 * (not a regular file, too large) is listed too, under its own name; its image is still made.
 */
export interface SkippedFile {
  source: string;
  reason: SkipReason;
  detail: string;
}

/** What `preprocess` made and skipped. */
export interface PreprocessSummary {
  source: string;
  destination: string;
  width: number;
  height: number;
  made: MadeImage[];
  skipped: SkippedFile[];
  /** number of source images that had a `.txt` caption */
  captionsFound: number;
}

const CAPTION_EXT = ".txt";

/**
 * Longest output file name, in UTF-8 bytes. File systems allow 255; the atomic writer's temporary
 * twin (`.<name>.<pid>.<ms>.tmp`) needs about 30 more, so longer source names are shortened.
 */
export const MAX_OUTPUT_NAME_BYTES = 200;

/** `<prefix><stem>.png`, with the stem cut (never inside a character) so the name fits `MAX_OUTPUT_NAME_BYTES`. */
function outputName(prefix: string, stem: string): string {
  const room = MAX_OUTPUT_NAME_BYTES - Buffer.byteLength(prefix + ".png");
  if (Buffer.byteLength(stem) <= room) return `${prefix}${stem}.png`;
  let cut = "";
  let used = 0;
  for (const ch of stem) {
    const n = Buffer.byteLength(ch);
    if (used + n > room) break;
    cut += ch;
    used += n;
  }
  return `${prefix}${cut.trimEnd()}.png`;
}

/** What a system error code means for a file preprocess writes, and what to do. */
function explainWriteError(code: string): string {
  if (code === "ENAMETOOLONG") return "the path is too long for this file system; choose a destination with a shorter path";
  if (code === "ENOTDIR") return "part of the destination path is a file, not a folder; choose another destination";
  if (code === "EEXIST") return "something that is not a folder is in the way; choose another destination";
  return `the system refused (${code}); check the destination folder`;
}

/**
 * Write one output file atomically; a system error becomes an error naming the output file (not the
 * writer's temporary file) and the source it was made from. Errors that already name the file
 * (disk full, read-only, file exists) pass through unchanged.
 */
function writeOutput(file: string, data: Buffer, overwrite: boolean | undefined, source: string): void {
  try {
    writeFileAtomic(file, [data], { overwrite });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (err instanceof FileExistsError || typeof code !== "string") throw err;
    throw new Error(`preprocess: cannot write ${file} (made from ${source}): ${explainWriteError(code)}`, { cause: err });
  }
}

/** The options of one run with A1111's defaults filled in, resolved once before any file is read. */
interface RunSettings {
  W: number;
  H: number;
  split?: { threshold: number; overlap: number };
  focal?: Exclude<PreprocessOptions["focalCrop"], boolean | undefined>;
  focalWeights: FocalWeights;
  autoSized?: AutoSizeOptions;
  flips: FlipKind[];
  action: ExistingCaptionAction;
  nameCaption?: FilenameCaptionOptions;
  minSide: number;
  pixelLimit: number | false;
}

/** Check the target size and fill in defaults, so the per-image steps read plain values. */
function resolveSettings(opts: PreprocessOptions): RunSettings {
  const W = opts.width ?? 512;
  const H = opts.height ?? 512;
  if (!Number.isInteger(W) || !Number.isInteger(H) || W < 1 || H < 1)
    throw new Error(`preprocess: width and height must be positive integers, got ${W}×${H}`);
  const split = opts.split ? { threshold: 0.5, overlap: 0.2, ...(typeof opts.split === "object" ? opts.split : {}) } : undefined;
  if (split) split.threshold = Math.max(0, Math.min(1, split.threshold));
  const focal = opts.focalCrop ? (typeof opts.focalCrop === "object" ? opts.focalCrop : {}) : undefined;
  return {
    W,
    H,
    split,
    focal,
    focalWeights: { ...DEFAULT_FOCAL_WEIGHTS, ...(focal?.weights ?? {}) },
    autoSized: opts.autoSized ? (typeof opts.autoSized === "object" ? opts.autoSized : {}) : undefined,
    flips: opts.flips === true ? ["horizontal"] : Array.isArray(opts.flips) ? opts.flips : [],
    action: opts.existingCaption ?? "ignore",
    nameCaption: opts.filenameCaption === false ? undefined : typeof opts.filenameCaption === "object" ? opts.filenameCaption : {},
    minSide: opts.minSourceSide ?? 16,
    pixelLimit: opts.limitInputPixels ?? DEFAULT_LIMIT_INPUT_PIXELS,
  };
}

/** Resolve both folders and refuse a destination inside the source, so the originals are never touched. */
function checkFolders(src: string, dst: string): { srcAbs: string; dstAbs: string } {
  const srcAbs = path.resolve(src);
  const dstAbs = path.resolve(dst);
  if (!fs.existsSync(srcAbs) || !fs.statSync(srcAbs).isDirectory())
    throw new Error(`preprocess: source folder ${srcAbs} does not exist or is not a folder`);
  const srcReal = fs.realpathSync(srcAbs);
  let dstReal: string;
  try {
    dstReal = fs.existsSync(dstAbs) ? fs.realpathSync(dstAbs) : dstAbs;
  } catch (err) {
    throw new Error(`preprocess: destination ${dstAbs} cannot be used: ${explainWriteError((err as NodeJS.ErrnoException).code ?? "?")}`, {
      cause: err,
    });
  }
  if (dstReal === srcReal || dstReal.startsWith(srcReal + path.sep)) {
    throw new Error(
      `preprocess: destination ${dstAbs} is the source folder or inside it; choose a separate folder so the originals stay untouched`,
    );
  }
  return { srcAbs, dstAbs };
}

/** Records a skipped file (in the summary and the log) under the name the user will recognise. */
type Reporter = (source: string, reason: SkipReason, detail: string) => void;

/** Report a `.txt` with no image of its name; a caption that has one is read at its image's turn. */
function reportLoneCaption(full: string, skip: (reason: SkipReason, detail: string) => void): void {
  const entry = statEntry(full);
  if ("problem" in entry) skip("not-a-file", entry.problem);
  else
    skip(
      entry.stat.isFile() ? "not-an-image" : "not-a-file",
      entry.stat.isFile() ? "a text file with no image of the same name" : "not a regular file, and no image of the same name",
    );
}

/** Read and decode one source image, or report why it is skipped (undefined); other errors propagate. */
async function loadSource(
  name: string,
  full: string,
  s: RunSettings,
  keepAlpha: boolean,
  skip: (reason: SkipReason, detail: string) => void,
): Promise<RawImage | undefined> {
  const source = readRegularFile(full, MAX_IMAGE_FILE_BYTES, "image");
  if (!("bytes" in source)) {
    skip(source.kind === "too-large" ? "too-large" : "not-a-file", source.problem);
    return undefined;
  }
  let img: RawImage;
  try {
    img = await decodeImage(name, source.bytes, keepAlpha, s.pixelLimit);
  } catch (err) {
    if (err instanceof ImageDecodeError) {
      skip(err.problem, err.message.slice(name.length + 2));
      return undefined;
    }
    throw err;
  }
  if (Math.min(img.width, img.height) < s.minSide) {
    skip("too-small", `too small (${img.width}×${img.height}; the shorter side must be at least ${s.minSide} px)`);
    return undefined;
  }
  return img;
}

/** The image's `<stem>.txt`, if there is a readable one; an unreadable one is reported and the image made without it. */
function readExistingCaption(
  srcAbs: string,
  stem: string,
  name: string,
  report: Reporter,
  log?: (message: string) => void,
): string | undefined {
  const captionFile = path.join(srcAbs, stem + CAPTION_EXT);
  if (!fs.lstatSync(captionFile, { throwIfNoEntry: false })) return undefined;
  const read = readCaptionFile(captionFile);
  if ("problem" in read) {
    report(
      stem + CAPTION_EXT,
      read.kind === "too-large" ? "too-large" : "not-a-file",
      `${read.problem}; ${name} is made without this caption`,
    );
    return undefined;
  }
  if (read.note) log?.(read.note);
  return read.text;
}

/** One image cut from a source, with how it was cut (for the summary). */
type Piece = { img: RawImage; kind: MadeKind; resizeTo?: { width: number; height: number }; box?: Box };

/** A focal-crop debug image to write next to the outputs. */
type DebugImage = { file: string; png: Buffer };

/** Step 3: the images one source yields, in A1111's order (split, focal, auto-sized, original, else cover crop). */
async function cutPieces(
  img: RawImage,
  index: number,
  stem: string,
  s: RunSettings,
  opts: PreprocessOptions,
  skip: (reason: SkipReason, detail: string) => void,
): Promise<{ pieces: Piece[]; debugImages: DebugImage[] }> {
  const { W, H, split, focal, autoSized } = s;
  const pieces: Piece[] = [];
  const debugImages: DebugImage[] = [];
  if (opts.captionOnly) {
    pieces.push({ img, kind: "caption-only" });
    return { pieces, debugImages };
  }
  let defaultResize = true;
  const { ratio } = oversizeRatio(img.width, img.height, W, H);
  if (split && ratio < 1 && ratio <= split.threshold) {
    for (const plan of splitPlan(img.width, img.height, W, H, split.overlap)) {
      // A1111 scales with PIL's default filter here (bicubic), not Lanczos.
      const scaled = await resizeRaw(img, plan.resizeTo.width, plan.resizeTo.height, "cubic");
      pieces.push({ img: await cropRaw(scaled, plan.box), kind: "split", resizeTo: plan.resizeTo, box: plan.box });
    }
    defaultResize = false;
  }
  if (focal && img.width !== img.height) {
    const size = focalScaleSize(img.width, img.height, W, H);
    const scaled = await resizeRaw(img, size.width, size.height, "cubic");
    const found = await findFocalCrop(scaled, W, H, s.focalWeights, focal.faceDetector);
    pieces.push({ img: await cropRaw(scaled, found.box), kind: "focal", resizeTo: size, box: found.box });
    if (focal.debugImage) {
      const pts = [
        ...found.edges.map((p) => ({ ...p, color: "#00f" })),
        ...found.entropy.map((p) => ({ ...p, color: "#ff0" })),
        ...found.faces.map((p) => ({ ...p, color: "#f00" })),
        { ...found.focus, color: "#0f0" },
      ];
      debugImages.push({
        file: path.join("focal-debug", outputName(`${String(index).padStart(5, "0")}-`, stem)),
        png: await drawFocalDebug(scaled, found.box, pts),
      });
    }
    defaultResize = false;
  }
  if (autoSized) {
    const plan = autoSizePlan(img.width, img.height, autoSized);
    if (plan) {
      const cut = await cropRaw(img, plan.box);
      pieces.push({ img: await resizeRaw(cut, plan.width, plan.height, "lanczos"), kind: "auto-sized", box: plan.box });
    } else if (pieces.length === 0 && !opts.keepOriginalSize) {
      skip(
        "no-auto-size",
        `no auto-sized crop fits (${img.width}×${img.height}: no size within the dimension/area bounds has aspect error ≤ ${autoSized.threshold ?? 0.1})`,
      );
    }
    defaultResize = false;
  }
  if (opts.keepOriginalSize) {
    pieces.push({ img, kind: "original" });
    defaultResize = false;
  }
  if (defaultResize) {
    const plan = coverCropPlan(img.width, img.height, W, H);
    const scaled = await resizeRaw(img, plan.resizeTo.width, plan.resizeTo.height, "lanczos");
    pieces.push({ img: await cropRaw(scaled, plan.box), kind: "crop", resizeTo: plan.resizeTo, box: plan.box });
  }
  return { pieces, debugImages };
}

/** One encoded output image with its caption and summary entry, ready to write. */
type Output = { file: string; png: Buffer; caption: string; made: MadeImage };

/** Step 4a: caption each piece, add its mirror copies and encode them all, before anything is written. */
async function encodeOutputs(
  pieces: Piece[],
  name: string,
  stem: string,
  index: number,
  existing: string | undefined,
  s: RunSettings,
  captioner: PreprocessOptions["captioner"],
): Promise<Output[]> {
  const outputs: Output[] = [];
  let sub = 0;
  for (const piece of pieces) {
    const generated = captioner ? await captioner(piece.img, name) : "";
    let caption = combineCaptions(generated, existing, s.action);
    if (!caption && s.nameCaption) caption = captionFromFilename(stem, s.nameCaption).trim();
    const variants: [RawImage, FlipKind | undefined][] = [[piece.img, undefined]];
    for (const f of s.flips) variants.push([await flipRaw(piece.img, f), f]);
    for (const [im, flip] of variants) {
      const file = outputName(`${String(index).padStart(5, "0")}-${sub++}-`, stem);
      const made: MadeImage = { file, source: name, kind: piece.kind, width: im.width, height: im.height, caption };
      if (flip) made.flip = flip;
      if (piece.resizeTo) made.resizeTo = piece.resizeTo;
      if (piece.box) made.box = piece.box;
      outputs.push({ file, png: await encodePng(im), caption, made });
    }
  }
  return outputs;
}

/** Step 4b: refuse (unless `overwrite`) if any output of this source exists, then write them all and record them. */
function writeSourceOutputs(
  dstAbs: string,
  outputs: Output[],
  debugImages: DebugImage[],
  name: string,
  summary: PreprocessSummary,
  overwrite: boolean | undefined,
): void {
  if (!overwrite) {
    for (const o of outputs) {
      for (const f of [o.file, o.caption ? o.file.replace(/\.png$/, CAPTION_EXT) : undefined]) {
        if (f && fs.existsSync(path.join(dstAbs, f))) throw new FileExistsError(path.join(dstAbs, f));
      }
    }
  }
  for (const o of outputs) {
    writeOutput(path.join(dstAbs, o.file), o.png, overwrite, name);
    if (o.caption) writeOutput(path.join(dstAbs, o.file.replace(/\.png$/, CAPTION_EXT)), Buffer.from(o.caption, "utf8"), overwrite, name);
    summary.made.push(o.made);
  }
  for (const d of debugImages) writeOutput(path.join(dstAbs, d.file), d.png, overwrite, name);
}

/**
 * Preprocess every image in `src` (non-recursive) into `dst`. See the module comment for the steps.
 * Throws before writing anything if `dst` is `src` or inside it, and `FileExistsError` if an output
 * exists and `overwrite` is not set.
 */
export async function preprocess(src: string, dst: string, opts: PreprocessOptions = {}): Promise<PreprocessSummary> {
  const s = resolveSettings(opts);
  const { srcAbs, dstAbs } = checkFolders(src, dst);
  const entries = fs.readdirSync(srcAbs).sort();
  const stems = new Set(entries.filter((e) => path.extname(e).toLowerCase() !== CAPTION_EXT).map((e) => path.parse(e).name));
  const summary: PreprocessSummary = {
    source: srcAbs,
    destination: dstAbs,
    width: s.W,
    height: s.H,
    made: [],
    skipped: [],
    captionsFound: 0,
  };
  try {
    fs.mkdirSync(dstAbs, { recursive: true });
  } catch (err) {
    throw new Error(
      `preprocess: cannot create the destination folder ${dstAbs}: ${explainWriteError((err as NodeJS.ErrnoException).code ?? "?")}`,
      { cause: err },
    );
  }
  const report: Reporter = (source, reason, detail) => {
    summary.skipped.push({ source, reason, detail });
    opts.log?.(`skipped ${source}: ${detail}`);
  };

  for (let index = 0; index < entries.length; index++) {
    const name = entries[index]!;
    const full = path.join(srcAbs, name);
    const stem = path.parse(name).name;
    const skip = (reason: SkipReason, detail: string): void => report(name, reason, detail);
    if (path.extname(name).toLowerCase() === CAPTION_EXT) {
      if (!stems.has(stem)) reportLoneCaption(full, skip);
      continue;
    }
    const img = await loadSource(name, full, s, opts.keepAlpha ?? false, skip);
    if (!img) continue;
    const existing = readExistingCaption(srcAbs, stem, name, report, opts.log);
    if (existing !== undefined) summary.captionsFound++;
    const { pieces, debugImages } = await cutPieces(img, index, stem, s, opts, skip);
    const outputs = await encodeOutputs(pieces, name, stem, index, existing, s, opts.captioner);
    writeSourceOutputs(dstAbs, outputs, debugImages, name, summary, opts.overwrite);
    if (outputs.length) opts.log?.(`${name}: ${outputs.length} image(s)`);
  }
  return summary;
}
