/**
 * A pixel-statistics classifier for tiny-shapes images: which background, which colour, which
 * shape, how many. It is what `npm run eval-base` uses to check that the tiny model draws what a
 * prompt names, and the test suite checks it against the dataset's own captions (where it must be
 * right essentially always). No learning is involved:
 *
 * 1. Background: the per-channel median of the 124 border pixels (shapes never touch the border).
 * 2. Foreground mask: a pixel is foreground when it is nearer (in RGB) to one of the six shape
 *    colours than to that measured background — about "more than half covered" on anti-aliased edges.
 * 3. Colour: a vote by hue over the foreground pixels, each weighted by its chroma, for the palette
 *    colour of nearest hue. Hue is what survives restyling: mixing a colour with any neutral
 *    (a white, gray or black background on anti-aliased edges, the demo style's pastel tint, a
 *    highlight) moves it along a line towards the gray axis and leaves its hue unchanged,
 *    whereas the nearest palette colour in RGB does not (lightened blue lands nearest cyan).
 * 4. Shape: the largest 4-connected foreground component is compared with every shape template.
 *    A template is rendered (with the dataset's own rasteriser) at the radius and centre that make
 *    its bounding box match the component's, for a few radius factors around that fit; the shape
 *    whose template overlaps the component best (intersection over union) wins.
 * 5. Count: components at least half the size of the largest.
 */
import {
  BACKGROUNDS,
  BACKGROUND_NAMES,
  COLORS,
  COLOR_NAMES,
  SHAPES,
  TINY_SIZE,
  shapeCoverage,
  type BackgroundName,
  type ColorName,
  type Scene,
  type ShapeName,
} from "./shapes";

/** What the classifier sees in one image. */
export interface ImageClass {
  /** Nearest named background to the measured one. */
  background: BackgroundName;
  /** Dominant shape colour, or null when there are fewer than `MIN_PIXELS` foreground pixels. */
  color: ColorName | null;
  /** Best-matching shape of the largest object, or null when there is no object. */
  shape: ShapeName | null;
  /** Intersection over union of that best template (1 = perfect match). */
  shapeIoU: number;
  /** Objects found (components at least half as large as the largest). */
  count: number;
  /** Foreground pixels / all pixels. */
  foreground: number;
}

/** Fewer foreground pixels than this means "nothing drawn". */
export const MIN_PIXELS = 6;

const N = TINY_SIZE * TINY_SIZE;

function dist2(p: ArrayLike<number>, i: number, c: readonly number[]): number {
  const dr = p[i]! - c[0]!;
  const dg = p[i + 1]! - c[1]!;
  const db = p[i + 2]! - c[2]!;
  return dr * dr + dg * dg + db * db;
}

/** Hue angle in degrees [0, 360) and chroma (max − min channel, 0–255) of one RGB pixel. */
export function hueChroma(r: number, g: number, b: number): { hue: number; chroma: number } {
  const max = Math.max(r, g, b);
  const min = Math.min(r, g, b);
  const chroma = max - min;
  if (chroma === 0) return { hue: 0, chroma: 0 };
  // The hexagonal hue of HSV: which channel is largest picks the 120° sector, the other two place it.
  let h: number;
  if (max === r) h = ((g - b) / chroma) % 6;
  else if (max === g) h = (b - r) / chroma + 2;
  else h = (r - g) / chroma + 4;
  return { hue: (h * 60 + 360) % 360, chroma };
}

const PALETTE_HUES: readonly number[] = COLOR_NAMES.map((n) => {
  const [r, g, b] = COLORS[n];
  return hueChroma(r, g, b).hue;
});

/** Pixels with less chroma than this (out of 255) carry no usable hue and do not vote. */
const MIN_CHROMA = 24;

/** Index of the palette colour whose hue is nearest (on the circle) to `hue`. */
function nearestHue(hue: number): number {
  let best = 0;
  let bestD = Infinity;
  PALETTE_HUES.forEach((h, k) => {
    const d = Math.min(Math.abs(hue - h), 360 - Math.abs(hue - h));
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  });
  return best;
}

/**
 * Dominant palette colour of the masked pixels (mask ≥ 0): chroma-weighted hue vote, falling back
 * to the nearest-RGB labels of the mask when no pixel has enough chroma to carry a hue.
 */
export function dominantColor(pixels: Uint8Array, mask: Int8Array): ColorName {
  const hueVotes = new Array<number>(COLOR_NAMES.length).fill(0);
  const rgbVotes = new Array<number>(COLOR_NAMES.length).fill(0);
  let hueWeight = 0;
  for (let i = 0; i < N; i++) {
    if (mask[i]! < 0) continue;
    rgbVotes[mask[i]!]!++;
    const { hue, chroma } = hueChroma(pixels[i * 3]!, pixels[i * 3 + 1]!, pixels[i * 3 + 2]!);
    if (chroma < MIN_CHROMA) continue;
    hueVotes[nearestHue(hue)]! += chroma;
    hueWeight += chroma;
  }
  const votes = hueWeight > 0 ? hueVotes : rgbVotes;
  return COLOR_NAMES[votes.indexOf(Math.max(...votes))]!;
}

/** Per-channel median of the border pixels. */
export function measureBackground(pixels: Uint8Array): [number, number, number] {
  const s = TINY_SIZE;
  const ch: number[][] = [[], [], []];
  for (let y = 0; y < s; y++) {
    for (let x = 0; x < s; x++) {
      if (x !== 0 && y !== 0 && x !== s - 1 && y !== s - 1) continue;
      for (let c = 0; c < 3; c++) ch[c]!.push(pixels[(y * s + x) * 3 + c]!);
    }
  }
  return ch.map((v) => v.sort((a, b) => a - b)[v.length >> 1]!) as [number, number, number];
}

/**
 * Foreground mask and per-pixel nearest palette colour index (−1 for background), given the
 * measured background colour.
 */
export function foregroundMask(pixels: Uint8Array, bg: readonly number[] = measureBackground(pixels)): Int8Array {
  const out = new Int8Array(N).fill(-1);
  const palette = COLOR_NAMES.map((n) => COLORS[n] as readonly number[]);
  for (let i = 0; i < N; i++) {
    let best = dist2(pixels, i * 3, bg);
    for (let k = 0; k < palette.length; k++) {
      const d = dist2(pixels, i * 3, palette[k]!);
      if (d < best) {
        best = d;
        out[i] = k;
      }
    }
  }
  return out;
}

/** 4-connected components of a boolean mask, largest first, as pixel index lists. */
export function components(mask: ArrayLike<boolean | number>): number[][] {
  const s = TINY_SIZE;
  const seen = new Uint8Array(N);
  const out: number[][] = [];
  for (let start = 0; start < N; start++) {
    if (!mask[start] || seen[start]) continue;
    const comp: number[] = [];
    const stack = [start];
    seen[start] = 1;
    while (stack.length) {
      const i = stack.pop()!;
      comp.push(i);
      const x = i % s;
      const y = (i - x) / s;
      for (const [nx, ny] of [
        [x - 1, y],
        [x + 1, y],
        [x, y - 1],
        [x, y + 1],
      ] as const) {
        if (nx < 0 || ny < 0 || nx >= s || ny >= s) continue;
        const j = ny * s + nx;
        if (mask[j] && !seen[j]) {
          seen[j] = 1;
          stack.push(j);
        }
      }
    }
    out.push(comp);
  }
  return out.sort((a, b) => b.length - a.length);
}

/** Bounding box of each shape's >50%-covered pixels, in radius units, measured once at a large radius. */
const UNIT_BOX: ReadonlyMap<ShapeName, { minU: number; maxU: number; minV: number; maxV: number }> = (() => {
  const big = 256;
  const r = 100;
  const m = new Map<ShapeName, { minU: number; maxU: number; minV: number; maxV: number }>();
  for (const shape of SHAPES) {
    const cov = shapeCoverage(shape, big / 2, big / 2, r, big);
    let minX = big;
    let maxX = -1;
    let minY = big;
    let maxY = -1;
    for (let i = 0; i < cov.length; i++) {
      if (cov[i]! <= 0.5) continue;
      const x = i % big;
      const y = (i - x) / big;
      minX = Math.min(minX, x);
      maxX = Math.max(maxX, x + 1);
      minY = Math.min(minY, y);
      maxY = Math.max(maxY, y + 1);
    }
    m.set(shape, { minU: (minX - big / 2) / r, maxU: (maxX - big / 2) / r, minV: (minY - big / 2) / r, maxV: (maxY - big / 2) / r });
  }
  return m;
})();

/** Radius factors and centre nudges (pixels) tried around the bounding-box fit. */
const FITS: ReadonlyArray<[number, number, number]> = [0.88, 1, 1.12].flatMap(
  (f) =>
    [
      [f, 0, 0],
      [f, 0.5, 0],
      [f, -0.5, 0],
      [f, 0, 0.5],
      [f, 0, -0.5],
    ] as Array<[number, number, number]>,
);

/** Best template match for one component: shape name and IoU. */
export function matchShape(comp: readonly number[]): { shape: ShapeName; iou: number } {
  const s = TINY_SIZE;
  const inComp = new Uint8Array(N);
  let x0 = s;
  let x1 = -1;
  let y0 = s;
  let y1 = -1;
  for (const i of comp) {
    inComp[i] = 1;
    const x = i % s;
    const y = (i - x) / s;
    x0 = Math.min(x0, x);
    x1 = Math.max(x1, x + 1);
    y0 = Math.min(y0, y);
    y1 = Math.max(y1, y + 1);
  }
  let best: { shape: ShapeName; iou: number } = { shape: SHAPES[0], iou: -1 };
  for (const shape of SHAPES) {
    const box = UNIT_BOX.get(shape)!;
    // Radius that makes the template's box as large as the component's (mean of both axes).
    const r0 = ((x1 - x0) / (box.maxU - box.minU) + (y1 - y0) / (box.maxV - box.minV)) / 2;
    for (const [f, dx, dy] of FITS) {
      const r = r0 * f;
      // Centre so that the template's box is centred on the component's box (then nudged).
      const cx = (x0 + x1) / 2 - ((box.minU + box.maxU) / 2) * r + dx;
      const cy = (y0 + y1) / 2 - ((box.minV + box.maxV) / 2) * r + dy;
      const cov = shapeCoverage(shape, cx, cy, r);
      let inter = 0;
      let union = 0;
      for (let i = 0; i < N; i++) {
        const t = cov[i]! > 0.5 ? 1 : 0;
        const c = inComp[i]!;
        inter += t & c;
        union += t | c;
      }
      const iou = union > 0 ? inter / union : 0;
      if (iou > best.iou) best = { shape, iou };
    }
  }
  return best;
}

/** Classify one 32×32 RGB image (bytes `[32, 32, 3]`); see the module comment for the method. */
export function classifyImage(pixels: Uint8Array): ImageClass {
  if (pixels.length !== N * 3) throw new Error(`classifyImage: expected ${N * 3} bytes (32×32 RGB), got ${pixels.length}`);
  const bgMeasured = measureBackground(pixels);
  let background: BackgroundName = BACKGROUND_NAMES[0]!;
  let bestBg = Infinity;
  for (const name of BACKGROUND_NAMES) {
    const d = dist2(bgMeasured, 0, BACKGROUNDS[name]);
    if (d < bestBg) {
      bestBg = d;
      background = name;
    }
  }
  const mask = foregroundMask(pixels, bgMeasured);
  let fg = 0;
  for (let i = 0; i < N; i++) if (mask[i]! >= 0) fg++;
  if (fg < MIN_PIXELS) return { background, color: null, shape: null, shapeIoU: 0, count: 0, foreground: fg / N };
  const color = dominantColor(pixels, mask);
  const comps = components(Array.from(mask, (k) => k >= 0));
  const { shape, iou } = matchShape(comps[0]!);
  const count = comps.filter((c) => c.length >= comps[0]!.length / 2).length;
  return { background, color, shape, shapeIoU: iou, count, foreground: fg / N };
}

/** What a prompt asked for: the parts of a scene that `contentAccuracy` checks. */
export type ExpectedContent = Pick<Scene, "color" | "shape" | "background" | "count">;

/** One generated image checked against its prompt. */
export interface ContentCheck extends ImageClass {
  colorOk: boolean;
  shapeOk: boolean;
  backgroundOk: boolean;
  countOk: boolean;
}

/** Fractions (0–1) of images whose colour, shape, background and count match their prompts. */
export interface ContentAccuracy {
  colorAccuracy: number;
  shapeAccuracy: number;
  backgroundAccuracy: number;
  countAccuracy: number;
  perImage: ContentCheck[];
}

/**
 * Does each image show what its prompt named? `classifyImage` on every image, compared with the
 * prompt's scene: right for colour when the dominant shape colour is the named one, right for shape
 * when the largest object best matches the named shape's template (likewise background and count).
 * This is the score `npm run eval-base` reports and the demo tracks across hypernetwork multipliers.
 */
export function contentAccuracy(expected: readonly ExpectedContent[], images: readonly Uint8Array[]): ContentAccuracy {
  if (expected.length !== images.length) throw new Error(`contentAccuracy: ${expected.length} prompts but ${images.length} images`);
  if (images.length === 0) throw new Error("contentAccuracy: no images");
  const perImage = images.map((img, i): ContentCheck => {
    const want = expected[i]!;
    const got = classifyImage(img);
    return {
      ...got,
      colorOk: got.color === want.color,
      shapeOk: got.shape === want.shape,
      backgroundOk: got.background === want.background,
      countOk: got.count === want.count,
    };
  });
  const frac = (f: (c: ContentCheck) => boolean): number => perImage.filter(f).length / perImage.length;
  return {
    colorAccuracy: frac((c) => c.colorOk),
    shapeAccuracy: frac((c) => c.shapeOk),
    backgroundAccuracy: frac((c) => c.backgroundOk),
    countAccuracy: frac((c) => c.countOk),
    perImage,
  };
}
