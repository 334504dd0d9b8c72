/**
 * Auto focal-point crop (spec §5.3): find where the interesting part of a non-square image is, and
 * cut the target-sized window centred on it.
 *
 * Three kinds of "points of interest" vote, each with a user weight (A1111 UI defaults: faces 0.9,
 * entropy 0.15, edges 0.5):
 *  - edges/corners: Shi–Tomasi corners ("good features to track") of the grayscale image with its
 *    bottom 10 % painted grey so watermarks do not attract the crop;
 *  - entropy: the crop-sized window (sliding in 4-px steps along the long axis) whose grey-level
 *    histogram carries the most information; its centre;
 *  - faces: A1111 downloads OpenCV's YuNet model for this. We ship no face detector; pass your own
 *    `faceDetector` (any function returning face boxes) to enable the category. Without one, faces
 *    find no points and — exactly as in A1111 when a detector finds nothing — drop out of the vote.
 * Each category that found points contributes its centroid with weight `w_c / Σ w_(categories found)`;
 * the focal point is the weighted mean, rounded half-to-even like Python's `round`.
 *
 * Differences from A1111, all deliberate: entropy is Shannon entropy −Σ p·log₂p of the 8-bit grey
 * histogram (A1111 sums −log₂p over a dithered 1-bit image, which rewards windows holding a few stray
 * pixels), and the last window that ends exactly at the image edge is also tried (A1111's loop stops
 * one step early).
 */
import type { Box } from "./crops";

/** A point in image pixel coordinates. */
export interface Point {
  x: number;
  y: number;
}

/** A face found by a user-supplied detector, in pixels of the image it was given. */
export interface FaceBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** A raw 8-bit interleaved image (RGB or RGBA), row-major. */
export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

/** Optional face detector: returns face boxes for an image (the scaled image the crop is cut from). */
export type FaceDetector = (image: RawImage) => FaceBox[] | Promise<FaceBox[]>;

/** Weights of the three categories (A1111 UI defaults). A weight of 0 disables its detector. */
export interface FocalWeights {
  face: number;
  entropy: number;
  edges: number;
}

export const DEFAULT_FOCAL_WEIGHTS: Readonly<FocalWeights> = { face: 0.9, entropy: 0.15, edges: 0.5 };

/**
 * Size the image is scaled to before the focal crop: just covering the crop.
 *
 * A1111 scales a landscape source by `cropH/h`, a portrait one by `cropW/w` (a square one by the
 * crop's orientation) and truncates with `int`. When the crop is more elongated than the source this
 * leaves the image smaller than the crop and PIL pads the cut with black; here the larger of the two
 * scales is used instead, which equals A1111's whenever A1111's result covers the crop.
 */
export function focalScaleSize(srcW: number, srcH: number, cropW: number, cropH: number): { width: number; height: number } {
  let scale: number;
  if (srcW > srcH) scale = cropH / srcH;
  else if (srcH > srcW) scale = cropW / srcW;
  else scale = cropH > cropW ? cropH / srcH : cropW / srcW;
  if (Math.floor(srcW * scale + 1e-9) < cropW || Math.floor(srcH * scale + 1e-9) < cropH) scale = Math.max(cropW / srcW, cropH / srcH);
  // The 1e-9 keeps 0.8 × 80 = 63.99999… from truncating to 63.
  return { width: Math.max(cropW, Math.floor(srcW * scale + 1e-9)), height: Math.max(cropH, Math.floor(srcH * scale + 1e-9)) };
}

/** Grey level as PIL's `convert("L")`: (299 R + 587 G + 114 B) / 1000. */
export function toGray(img: RawImage): Float32Array {
  const n = img.width * img.height;
  const out = new Float32Array(n);
  const c = img.channels;
  for (let i = 0; i < n; i++) {
    const r = img.data[i * c]!;
    const g = c >= 3 ? img.data[i * c + 1]! : r;
    const b = c >= 3 ? img.data[i * c + 2]! : r;
    out[i] = (r * 299 + g * 587 + b * 114) / 1000;
  }
  return out;
}

/**
 * Shi–Tomasi corners: pixels where the smaller eigenvalue λ_min of the gradient covariance
 * M = Σ_(3×3) [gx², gx·gy; gx·gy, gy²] (Sobel gradients) is a local maximum and at least
 * `quality · max λ_min`; strongest first, each at least `minDistance` from every stronger one kept.
 * Defaults as A1111: 100 corners, quality 0.04, distance 6 % of the short side.
 */
export function cornerPoints(
  gray: Float32Array,
  width: number,
  height: number,
  opts: { maxCorners?: number; quality?: number; minDistance?: number } = {},
): Point[] {
  const maxCorners = opts.maxCorners ?? 100;
  const quality = opts.quality ?? 0.04;
  const minDistance = opts.minDistance ?? Math.min(width, height) * 0.06;
  // Border handling "reflect 101" (…c b | a b c…), OpenCV's default.
  const rx = (x: number): number => (x < 0 ? -x : x >= width ? 2 * width - 2 - x : x);
  const ry = (y: number): number => (y < 0 ? -y : y >= height ? 2 * height - 2 - y : y);
  const at = (x: number, y: number): number => gray[ry(y) * width + rx(x)]!;
  const n = width * height;
  const gxx = new Float32Array(n);
  const gxy = new Float32Array(n);
  const gyy = new Float32Array(n);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const gx = at(x + 1, y - 1) + 2 * at(x + 1, y) + at(x + 1, y + 1) - at(x - 1, y - 1) - 2 * at(x - 1, y) - at(x - 1, y + 1);
      const gy = at(x - 1, y + 1) + 2 * at(x, y + 1) + at(x + 1, y + 1) - at(x - 1, y - 1) - 2 * at(x, y - 1) - at(x + 1, y - 1);
      const i = y * width + x;
      gxx[i] = gx * gx;
      gxy[i] = gx * gy;
      gyy[i] = gy * gy;
    }
  }
  const lam = new Float32Array(n);
  let maxLam = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let a = 0;
      let b = 0;
      let c = 0;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const j = ry(y + dy) * width + rx(x + dx);
          a += gxx[j]!;
          b += gxy[j]!;
          c += gyy[j]!;
        }
      }
      // λ_min of [[a, b], [b, c]] = (a + c)/2 − sqrt(((a − c)/2)² + b²)
      const v = (a + c) / 2 - Math.sqrt(((a - c) / 2) ** 2 + b * b);
      lam[y * width + x] = v;
      if (v > maxLam) maxLam = v;
    }
  }
  if (maxLam <= 0) return [];
  const thresh = quality * maxLam;
  const cands: { x: number; y: number; v: number }[] = [];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = lam[y * width + x]!;
      if (v <= thresh) continue;
      let isMax = true;
      for (let dy = -1; dy <= 1 && isMax; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx;
          const yy = y + dy;
          if (xx < 0 || yy < 0 || xx >= width || yy >= height) continue;
          if (lam[yy * width + xx]! > v) {
            isMax = false;
            break;
          }
        }
      }
      if (isMax) cands.push({ x, y, v });
    }
  }
  cands.sort((p, q) => q.v - p.v || p.y - q.y || p.x - q.x);
  const kept: Point[] = [];
  const d2 = minDistance * minDistance;
  for (const c of cands) {
    if (kept.length >= maxCorners) break;
    if (kept.every((k) => (k.x - c.x) ** 2 + (k.y - c.y) ** 2 >= d2)) kept.push({ x: c.x, y: c.y });
  }
  return kept;
}

/** Corner points as A1111 takes them: the bottom 10 % of the grey image painted #999 first. */
export function edgePoints(gray: Float32Array, width: number, height: number): Point[] {
  const g = Float32Array.from(gray);
  for (let y = Math.ceil(height * 0.9); y < height; y++) g.fill(0x99, y * width, (y + 1) * width);
  return cornerPoints(g, width, height);
}

/** Shannon entropy (bits) of the 256-bin histogram of a window of the grey image. */
function windowEntropy(gray: Float32Array, width: number, left: number, top: number, w: number, h: number): number {
  const hist = new Float64Array(256);
  for (let y = top; y < top + h; y++) {
    for (let x = left; x < left + w; x++) hist[Math.min(255, Math.max(0, Math.round(gray[y * width + x]!)))]! += 1;
  }
  const total = w * h;
  let e = 0;
  for (const c of hist) if (c > 0) e -= (c / total) * Math.log2(c / total);
  return e;
}

/**
 * Centre of the most informative crop-sized window, sliding by 4 px along the long axis (the first
 * window wins ties); `undefined` for a square image (there is nowhere to slide).
 */
export function entropyPoint(gray: Float32Array, width: number, height: number, cropW: number, cropH: number): Point | undefined {
  if (width === height) return undefined;
  const alongX = width > height;
  const room = alongX ? width - cropW : height - cropH;
  let best = 0;
  let bestE = -1;
  for (let off = 0; off <= room; off += 4) {
    const e = alongX
      ? windowEntropy(gray, width, off, 0, cropW, Math.min(cropH, height))
      : windowEntropy(gray, width, 0, off, Math.min(cropW, width), cropH);
    if (e > bestE) {
      bestE = e;
      best = off;
    }
  }
  const x0 = alongX ? best : 0;
  const y0 = alongX ? 0 : best;
  return { x: Math.trunc(x0 + cropW / 2), y: Math.trunc(y0 + cropH / 2) };
}

/** Python's `round`: halves go to the even neighbour. */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** One category's vote: its points and its user weight. */
export interface FocalVote {
  points: Point[];
  weight: number;
}

/**
 * Combine the categories' votes: each category with points contributes its centroid with weight
 * `weight / Σ weights of categories that found points`; the result is the weighted mean, rounded
 * half-to-even. With no points anywhere the result is (0, 0), as in A1111.
 */
export function combineFocalPoints(votes: FocalVote[]): Point {
  const found = votes.filter((v) => v.points.length > 0 && v.weight > 0);
  const total = found.reduce((s, v) => s + v.weight, 0);
  let wsum = 0;
  let x = 0;
  let y = 0;
  for (const v of found) {
    const cx = v.points.reduce((s, p) => s + p.x, 0) / v.points.length;
    const cy = v.points.reduce((s, p) => s + p.y, 0) / v.points.length;
    const w = v.weight / total;
    wsum += w;
    x += cx * w;
    y += cy * w;
  }
  return wsum > 0 ? { x: roundHalfEven(x / wsum), y: roundHalfEven(y / wsum) } : { x: 0, y: 0 };
}

/** The crop window centred on the focus, moved back inside the image where it sticks out. */
export function focalCropBox(focus: Point, imgW: number, imgH: number, cropW: number, cropH: number): Box {
  let left = focus.x - Math.trunc(cropW / 2);
  if (left < 0) left = 0;
  else if (left + cropW > imgW) left = imgW - cropW;
  let top = focus.y - Math.trunc(cropH / 2);
  if (top < 0) top = 0;
  else if (top + cropH > imgH) top = imgH - cropH;
  return { left, top, width: cropW, height: cropH };
}

/** Everything the focal crop decided, for the summary and the debug image. */
export interface FocalResult {
  focus: Point;
  box: Box;
  edges: Point[];
  entropy: Point[];
  faces: Point[];
}

/**
 * Find the focal point of an image already scaled by `focalScaleSize`, and the crop box around it.
 * Face focus is at the box's horizontal centre and a third of the way down (eyes, not chin).
 */
export async function findFocalCrop(
  img: RawImage,
  cropW: number,
  cropH: number,
  weights: FocalWeights = DEFAULT_FOCAL_WEIGHTS,
  faceDetector?: FaceDetector,
): Promise<FocalResult> {
  const gray = toGray(img);
  const edges = weights.edges > 0 ? edgePoints(gray, img.width, img.height) : [];
  const ep = weights.entropy > 0 ? entropyPoint(gray, img.width, img.height, cropW, cropH) : undefined;
  const entropy = ep ? [ep] : [];
  const faces: Point[] = [];
  if (weights.face > 0 && faceDetector) {
    for (const f of await faceDetector(img)) faces.push({ x: Math.trunc(f.x + f.width * 0.5), y: Math.trunc(f.y + f.height * 0.33) });
  }
  const focus = combineFocalPoints([
    { points: edges, weight: weights.edges },
    { points: entropy, weight: weights.entropy },
    { points: faces, weight: weights.face },
  ]);
  return { focus, box: focalCropBox(focus, img.width, img.height, cropW, cropH), edges, entropy, faces };
}
