/**
 * The one PNG writer. Every PNG the project makes — txt2img images, training previews, contact
 * sheets, charts, the demo's grids, preprocessed training images — is encoded here, so there is one
 * place that decides how a PNG is written (and where text chunks such as A1111's "parameters"
 * infotext will be added).
 *
 * Two entry points: raw interleaved 8-bit pixels (`encodePng`), and a sharp pipeline that has
 * already resized, composited or rasterised something (`encodePngFrom`).
 */
import sharp, { type Sharp } from "sharp";

/** Raw 8-bit pixels, interleaved and row-major (`channels` values per pixel: grey, grey+alpha, RGB or RGBA). */
export interface PngPixels {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

/** Check the shape of raw pixels before sharp sees them, so a mistake names the image's size. */
function checkPixels(img: PngPixels, what: string): 1 | 2 | 3 | 4 {
  const { width, height, channels, data } = img;
  if (!Number.isSafeInteger(width) || !Number.isSafeInteger(height) || width < 1 || height < 1) {
    throw new Error(`${what}: width and height must be positive integers, got ${width}×${height}`);
  }
  if (channels !== 1 && channels !== 2 && channels !== 3 && channels !== 4)
    throw new Error(`${what}: channels must be 1, 2, 3 or 4, got ${channels}`);
  if (data.length !== width * height * channels) {
    throw new Error(
      `${what}: ${data.length} bytes do not make a ${width}×${height} image of ${channels} channel(s) (${width * height * channels} bytes)`,
    );
  }
  return channels;
}

/** Encode raw 8-bit pixels (e.g. RGB bytes from a sampler) as PNG bytes. */
export async function encodePng(img: PngPixels): Promise<Buffer> {
  const channels = checkPixels(img, "encodePng");
  const bytes = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength);
  return encodePngFrom(sharp(bytes, { raw: { width: img.width, height: img.height, channels } }));
}

/** Finish a sharp pipeline (resize, composite, rasterised SVG, …) as PNG bytes. */
export function encodePngFrom(pipeline: Sharp): Promise<Buffer> {
  return pipeline.png().toBuffer();
}

/**
 * Image `index` of a batch of NHWC RGB floats in [0, 1] as 8-bit bytes: `round(v · 255)` per
 * value, the rounding txt2img's PNGs and pixels are checked against.
 */
export function unitToBytes(pixels: ArrayLike<number>, index: number, width: number, height: number, channels = 3): Uint8Array {
  const n = width * height * channels;
  const bytes = new Uint8Array(n);
  for (let j = 0; j < n; j++) bytes[j] = Math.round(pixels[index * n + j]! * 255);
  return bytes;
}
