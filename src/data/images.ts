/**
 * Image files in and out, on sharp (libvips): decode upright 8-bit RGB(A), resize, cut, mirror, encode.
 *
 * Everything in between works on `RawImage` (interleaved bytes) so the geometry in `crops.ts` and the
 * focal-point search in `autocrop.ts` stay independent of the image library.
 */
import sharp, { type Sharp } from "sharp";
import type { RawImage } from "./autocrop";
import type { Box } from "./crops";

export type { RawImage } from "./autocrop";

/** Why a file could not be used as an image. */
export type ImageProblem = "empty" | "not-an-image" | "unsupported-format" | "corrupt";

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
  if (b.length >= 12 && (ascii(0, 12) === "\0\0\0\x0cJXL \r\n\x87\n" || (b[0] === 0xff && b[1] === 0x0a))) return { format: "jxl", decodable: false };
  const head = ascii(0, Math.min(b.length, 256)).trimStart().toLowerCase();
  if (head.startsWith("<svg") || (head.startsWith("<?xml") && head.includes("<svg"))) return { format: "svg", decodable: false };
  return undefined;
}

/**
 * Decode an image file's bytes to upright 8-bit sRGB: EXIF orientation applied, grey and CMYK
 * converted, alpha kept only if `keepAlpha` (then always 4 channels; a missing alpha becomes opaque).
 * Throws `ImageDecodeError` naming the file and the problem.
 */
export async function decodeImage(file: string, bytes: Uint8Array, keepAlpha = false): Promise<RawImage> {
  if (bytes.length === 0) throw new ImageDecodeError(file, "empty", "empty file (0 bytes); nothing to read");
  const kind = sniffFormat(bytes);
  if (!kind) throw new ImageDecodeError(file, "not-an-image", "not an image (contents are not PNG, JPEG, WebP, GIF, TIFF or AVIF)");
  if (!kind.decodable) {
    const hint = kind.format === "svg" ? "rasterise it to PNG first" : "convert it to PNG or JPEG first";
    throw new ImageDecodeError(file, "unsupported-format", `unsupported format (${kind.format.toUpperCase()}); ${hint}`);
  }
  try {
    let pipe = sharp(bytes, { failOn: "warning" }).autoOrient().toColourspace("srgb");
    pipe = keepAlpha ? pipe.ensureAlpha() : pipe.removeAlpha();
    const { data, info } = await pipe.raw({ depth: "uchar" }).toBuffer({ resolveWithObject: true });
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height, channels: info.channels };
  } catch (err) {
    throw new ImageDecodeError(file, "corrupt", `corrupt ${kind.format.toUpperCase()} file (${(err as Error).message.split("\n")[0]}); re-export or remove it`);
  }
}

function pipeOf(img: RawImage): Sharp {
  return sharp(img.data, { raw: { width: img.width, height: img.height, channels: img.channels as 1 | 2 | 3 | 4 } });
}

async function toRaw(pipe: Sharp): Promise<RawImage> {
  const { data, info } = await pipe.raw().toBuffer({ resolveWithObject: true });
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height, channels: info.channels };
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
  return pipeOf(img).png().toBuffer();
}

/** Draw the focal crop's debug overlay (crop rectangle in green, points as dots) onto a copy. */
export async function drawFocalDebug(img: RawImage, box: Box, points: { x: number; y: number; color: string }[]): Promise<Buffer> {
  const dots = points.map((p) => `<circle cx="${p.x}" cy="${p.y}" r="2" fill="${p.color}"/>`).join("");
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${img.width}" height="${img.height}"><rect x="${box.left + 0.5}" y="${box.top + 0.5}" width="${box.width - 1}" height="${box.height - 1}" fill="none" stroke="#0f0"/>${dots}</svg>`;
  return pipeOf(img).composite([{ input: Buffer.from(svg), top: 0, left: 0 }]).png().toBuffer();
}
