/**
 * Image files in and out, on sharp (libvips): decode upright 8-bit RGB(A), resize, cut, mirror, encode.
 *
 * Everything in between works on `RawImage` (interleaved bytes) so the geometry in `crops.ts` and the
 * focal-point search in `autocrop.ts` stay independent of the image library.
 */
import sharp, { type Sharp } from "sharp";
import { encodePngFrom } from "../io/png";
import type { RawImage } from "./autocrop";
import type { Box } from "./crops";

export type { RawImage } from "./autocrop";

/** Why a file could not be used as an image. */
export type ImageProblem = "empty" | "not-an-image" | "unsupported-format" | "corrupt" | "too-many-pixels";

/**
 * Default most pixels (width × height) an image may claim before it is decoded: 2^27 = 134,217,728,
 * e.g. 11,585 × 11,585 or 16,384 × 8,192 — more than any camera's photo, and about 400 MB once
 * decoded to 8-bit RGB. A file claiming more is refused before decoding, so a small crafted file
 * cannot make the decoder take gigabytes. sharp's own default (16,383² ≈ 268 M) would let a
 * 15,000 × 15,000 PNG decode to over 800 MB. Raise it with the `limitInputPixels` option of
 * `preprocess`, of `TrainingDataset.load` and of `train` (`false` removes the limit).
 */
export const DEFAULT_LIMIT_INPUT_PIXELS = 2 ** 27;

/** Error carrying the reason a file is not a usable image. */
export class ImageDecodeError extends Error {
  constructor(
    readonly file: string,
    readonly problem: ImageProblem,
    detail: string,
  ) {
    super(`${file}: ${detail}`);
    this.name = "ImageDecodeError";
  }
}

/** Container formats recognised by their first bytes, and whether this sharp build decodes them. */
export function sniffFormat(bytes: Uint8Array): { format: string; decodable: boolean } | undefined {
  const b = bytes;
  const ascii = (from: number, to: number): string => String.fromCharCode(...b.subarray(from, to));
  if (b.length >= 8 && b[0] === 0x89 && ascii(1, 4) === "PNG") return { format: "png", decodable: true };
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return { format: "jpeg", decodable: true };
  if (b.length >= 6 && ascii(0, 4) === "GIF8") return { format: "gif", decodable: true };
  if (b.length >= 12 && ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return { format: "webp", decodable: true };
  if (b.length >= 4 && (ascii(0, 4) === "II*\0" || ascii(0, 4) === "MM\0*")) return { format: "tiff", decodable: true };
  if (b.length >= 12 && ascii(4, 8) === "ftyp") {
    const brand = ascii(8, 12);
    return { format: brand.startsWith("avi") ? "avif" : "heif", decodable: brand.startsWith("avi") };
  }
  if (b.length >= 2 && ascii(0, 2) === "BM") return { format: "bmp", decodable: false };
  if (b.length >= 4 && ascii(0, 4) === "8BPS") return { format: "psd", decodable: false };
  if (b.length >= 4 && b[0] === 0 && b[1] === 0 && b[2] === 1 && b[3] === 0) return { format: "ico", decodable: false };
  if (b.length >= 12 && (ascii(0, 12) === "\0\0\0\x0cJXL \r\n\x87\n" || (b[0] === 0xff && b[1] === 0x0a)))
    return { format: "jxl", decodable: false };
  const head = ascii(0, Math.min(b.length, 256)).trimStart().toLowerCase();
  if (head.startsWith("<svg") || (head.startsWith("<?xml") && head.includes("<svg"))) return { format: "svg", decodable: false };
  return undefined;
}

/**
 * Decode an image file's bytes to upright 8-bit sRGB: EXIF orientation applied, grey and CMYK
 * converted, alpha kept only if `keepAlpha` (then always 4 channels; a missing alpha becomes opaque).
 * An image claiming more than `limitInputPixels` pixels (default `DEFAULT_LIMIT_INPUT_PIXELS`;
 * `false`: no limit) is refused before it is decoded, with a message saying how to raise the limit.
 * Throws `ImageDecodeError` naming the file and the problem.
 */
export async function decodeImage(
  file: string,
  bytes: Uint8Array,
  keepAlpha = false,
  limitInputPixels: number | false = DEFAULT_LIMIT_INPUT_PIXELS,
): Promise<RawImage> {
  if (limitInputPixels !== false && !(Number.isInteger(limitInputPixels) && limitInputPixels >= 1)) {
    throw new Error(`limitInputPixels must be a positive integer (or false for no limit), got ${limitInputPixels}`);
  }
  if (bytes.length === 0) throw new ImageDecodeError(file, "empty", "empty file (0 bytes); nothing to read");
  const kind = sniffFormat(bytes);
  if (!kind) throw new ImageDecodeError(file, "not-an-image", "not an image (contents are not PNG, JPEG, WebP, GIF, TIFF or AVIF)");
  if (!kind.decodable) {
    const hint = kind.format === "svg" ? "rasterise it to PNG first" : "convert it to PNG or JPEG first";
    throw new ImageDecodeError(file, "unsupported-format", `unsupported format (${kind.format.toUpperCase()}); ${hint}`);
  }
  try {
    let pipe = sharp(bytes, { failOn: "warning", limitInputPixels }).autoOrient().toColourspace("srgb");
    pipe = keepAlpha ? pipe.ensureAlpha() : pipe.removeAlpha();
    const { data, info } = await pipe.raw({ depth: "uchar" }).toBuffer({ resolveWithObject: true });
    return {
      data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      width: info.width,
      height: info.height,
      channels: info.channels,
    };
  } catch (err) {
    const message = (err as Error).message.split("\n")[0] ?? "";
    if (limitInputPixels !== false && /pixel limit/i.test(message))
      throw await tooManyPixels(file, bytes, kind.format, limitInputPixels, keepAlpha);
    throw new ImageDecodeError(file, "corrupt", `corrupt ${kind.format.toUpperCase()} file (${message}); re-export or remove it`);
  }
}

/** The "too many pixels" error, with the image's claimed size and the option value that would admit it. */
async function tooManyPixels(
  file: string,
  bytes: Uint8Array,
  format: string,
  limit: number,
  keepAlpha: boolean,
): Promise<ImageDecodeError> {
  let size = "";
  let need: number | undefined;
  try {
    const meta = await sharp(bytes, { limitInputPixels: false }).metadata();
    if (meta.width && meta.height) {
      need = meta.width * meta.height;
      const bytes = need * (keepAlpha ? 4 : 3);
      const decoded = bytes < 2 ** 20 ? `${Math.ceil(bytes / 1024)} KiB` : `${Math.ceil(bytes / 2 ** 20).toLocaleString("en-US")} MiB`;
      size = ` (${meta.width} × ${meta.height} = ${need.toLocaleString("en-US")} pixels, about ${decoded} decoded)`;
    }
  } catch {
    /* the header could not be read again; say what we know */
  }
  const raise = need !== undefined ? `limitInputPixels: ${need}` : "a larger limitInputPixels";
  return new ImageDecodeError(
    file,
    "too-many-pixels",
    `${format.toUpperCase()} image too large${size}: over the limit of ${limit.toLocaleString("en-US")} pixels. Downscale it, or if you have the memory, raise the limit with the option ${raise} (preprocess, TrainingDataset.load or train; false removes the limit)`,
  );
}

function pipeOf(img: RawImage): Sharp {
  return sharp(img.data, { raw: { width: img.width, height: img.height, channels: img.channels as 1 | 2 | 3 | 4 } });
}

async function toRaw(pipe: Sharp): Promise<RawImage> {
  const { data, info } = await pipe.raw().toBuffer({ resolveWithObject: true });
  return {
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    width: info.width,
    height: info.height,
    channels: info.channels,
  };
}

/**
 * Resize to exactly width × height (a stretch; callers choose sizes that keep the aspect).
 * `lanczos` is Lanczos-3 (A1111's `resize_image`); `cubic` matches PIL's default `resize`.
 */
export function resizeRaw(img: RawImage, width: number, height: number, kernel: "lanczos" | "cubic" = "lanczos"): Promise<RawImage> {
  if (img.width === width && img.height === height) return Promise.resolve(img);
  return toRaw(pipeOf(img).resize(width, height, { fit: "fill", kernel: kernel === "lanczos" ? "lanczos3" : "cubic" }));
}

/** Cut `box` out of the image; the box must lie inside it. */
export function cropRaw(img: RawImage, box: Box): Promise<RawImage> {
  if (box.left < 0 || box.top < 0 || box.left + box.width > img.width || box.top + box.height > img.height) {
    throw new Error(`crop box ${JSON.stringify(box)} lies outside the ${img.width}×${img.height} image`);
  }
  if (box.left === 0 && box.top === 0 && box.width === img.width && box.height === img.height) return Promise.resolve(img);
  return toRaw(pipeOf(img).extract(box));
}

/** Which mirror copies to make: left-right, top-bottom, or both (a 180° turn). */
export type FlipKind = "horizontal" | "vertical" | "both";

/** Mirror an image. */
export function flipRaw(img: RawImage, kind: FlipKind): Promise<RawImage> {
  let p = pipeOf(img);
  if (kind === "horizontal" || kind === "both") p = p.flop();
  if (kind === "vertical" || kind === "both") p = p.flip();
  return toRaw(p);
}

/** Encode as PNG (RGB, or RGBA when the image has alpha). */
export async function encodePng(img: RawImage): Promise<Buffer> {
  return encodePngFrom(pipeOf(img));
}

/** Draw the focal crop's debug overlay (crop rectangle in green, points as dots) onto a copy. */
export async function drawFocalDebug(img: RawImage, box: Box, points: { x: number; y: number; color: string }[]): Promise<Buffer> {
  const dots = points.map((p) => `<circle cx="${p.x}" cy="${p.y}" r="2" fill="${p.color}"/>`).join("");
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${img.width}" height="${img.height}"><rect x="${box.left + 0.5}" y="${box.top + 0.5}" width="${box.width - 1}" height="${box.height - 1}" fill="none" stroke="#0f0"/>${dots}</svg>`;
  return encodePngFrom(pipeOf(img).composite([{ input: Buffer.from(svg), top: 0, left: 0 }]));
}
