/**
 * "Tiny shapes": the procedural captioned dataset the embedded tiny base model is trained on.
 *
 * Every image is a 32×32 RGB scene — one or two flat-coloured shapes on a plain background — and
 * its caption names everything that is in it, e.g. "a large red circle on the left, white
 * background" or "two small blue stars, gray background". Scenes are generated on demand from
 * (seed, index), so the dataset is infinite, needs no files, and any sample can be reproduced.
 *
 * Why 32×32 pixels: the model works directly in pixel space (no VAE) and must train on a 2-core
 * laptop CPU in about an hour; at 32×32 one UNet step on a batch of 16 takes well under a second,
 * and 32 pixels are enough to tell a star from a cross and left from right.
 *
 * Rasterisation is exact area coverage estimated with 4×4 supersampling per pixel, so shape edges
 * are anti-aliased like a real image; the colour of a pixel is the coverage-weighted mix of the
 * shape colour and the background.
 */
import { Rng } from "../../diffusion/random";

/** Image side in pixels. */
export const TINY_SIZE = 32;

export const SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"] as const;
export type ShapeName = (typeof SHAPES)[number];

/** Shape colours, chosen far apart in RGB so "the dominant colour" is unambiguous. */
export const COLORS = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 70, 220],
  yellow: [235, 205, 40],
  magenta: [200, 50, 200],
  cyan: [40, 200, 210],
} as const satisfies Record<string, readonly [number, number, number]>;
export type ColorName = keyof typeof COLORS;
export const COLOR_NAMES = Object.keys(COLORS) as ColorName[];

export const BACKGROUNDS = {
  white: [245, 245, 245],
  black: [15, 15, 15],
  gray: [128, 128, 128],
} as const satisfies Record<string, readonly [number, number, number]>;
export type BackgroundName = keyof typeof BACKGROUNDS;
export const BACKGROUND_NAMES = Object.keys(BACKGROUNDS) as BackgroundName[];

export const SIZES = ["small", "large"] as const;
export type SizeName = (typeof SIZES)[number];
export const POSITIONS = ["left", "right", "top", "bottom", "center"] as const;
export type PositionName = (typeof POSITIONS)[number];

/** Half-size ("radius") of a shape in pixels for each size word. */
export const SIZE_RADIUS: Readonly<Record<SizeName, number>> = { small: 5, large: 10 };

/** Everything a caption says about a scene (and what the rasteriser needs). */
export interface Scene {
  shape: ShapeName;
  color: ColorName;
  background: BackgroundName;
  /** 1 or 2 copies of the shape. Two copies are always small and side by side (or stacked). */
  count: 1 | 2;
  size: SizeName;
  /** Where the single shape sits; `undefined` for two shapes. */
  position?: PositionName;
  /** Shape centres in pixels (x right, y down), one per copy; small random jitter included. */
  centers: Array<[number, number]>;
}

/** A rendered scene. */
export interface ShapeSample {
  scene: Scene;
  caption: string;
  /** RGB bytes, row-major `[32, 32, 3]`. */
  pixels: Uint8Array;
}

const PLURAL: Readonly<Record<ShapeName, string>> = {
  circle: "circles",
  square: "squares",
  triangle: "triangles",
  star: "stars",
  ring: "rings",
  cross: "crosses",
};
const POSITION_PHRASE: Readonly<Record<PositionName, string>> = {
  left: "on the left",
  right: "on the right",
  top: "at the top",
  bottom: "at the bottom",
  center: "in the center",
};

/** The caption of a scene: content words only, in a fixed order. */
export function captionOf(scene: Scene): string {
  const what =
    scene.count === 1
      ? `a ${scene.size} ${scene.color} ${scene.shape} ${POSITION_PHRASE[scene.position!]}`
      : `two ${scene.size} ${scene.color} ${PLURAL[scene.shape]}`;
  return `${what}, ${scene.background} background`;
}

/** Every word a caption can contain (the tiny tokenizer's vocabulary), sorted. */
export function captionVocabulary(): string[] {
  const words = new Set<string>(["a", "two", "background", ","]);
  for (const w of [...SIZES, ...SHAPES, ...Object.values(PLURAL), ...COLOR_NAMES, ...BACKGROUND_NAMES]) words.add(w);
  for (const p of Object.values(POSITION_PHRASE)) for (const w of p.split(" ")) words.add(w);
  return [...words].sort();
}

// ---- geometry --------------------------------------------------------------------------------

/** A regular n-gon-like polygon: vertices at angles starting straight up, radii alternating. */
function polygon(n: number, radii: number[]): Array<[number, number]> {
  const pts: Array<[number, number]> = [];
  for (let i = 0; i < n; i++) {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    const r = radii[i % radii.length]!;
    pts.push([r * Math.cos(a), r * Math.sin(a)]);
  }
  return pts;
}
const TRIANGLE = polygon(3, [1.05]).map(([x, y]): [number, number] => [x, y + 0.2]);
const STAR = polygon(10, [1.05, 0.45]);

/** Even-odd point-in-polygon test. */
function inPolygon(x: number, y: number, pts: ReadonlyArray<[number, number]>): boolean {
  let inside = false;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    const [xi, yi] = pts[i]!;
    const [xj, yj] = pts[j]!;
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/**
 * Whether the point (u, v) — in units of the shape's radius, relative to its centre, y down —
 * lies inside the shape. All shapes fit in the unit box [−1.05, 1.05]².
 */
export function insideShape(shape: ShapeName, u: number, v: number): boolean {
  switch (shape) {
    case "circle":
      return u * u + v * v <= 1;
    case "square":
      return Math.abs(u) <= 0.85 && Math.abs(v) <= 0.85;
    case "triangle":
      return inPolygon(u, v, TRIANGLE);
    case "star":
      return inPolygon(u, v, STAR);
    case "ring": {
      const d2 = u * u + v * v;
      return d2 <= 1 && d2 >= 0.55 * 0.55;
    }
    case "cross":
      return (Math.abs(u) <= 0.33 && Math.abs(v) <= 1) || (Math.abs(v) <= 0.33 && Math.abs(u) <= 1);
  }
}

const SS = 4; // supersamples per pixel side

/**
 * Coverage map `[size·size]` in [0, 1] of a shape of radius `r` centred at (cx, cy) pixels —
 * the fraction of each pixel's area inside the shape. Also used by the eval classifier to render
 * shape templates.
 */
export function shapeCoverage(shape: ShapeName, cx: number, cy: number, r: number, size = TINY_SIZE): Float32Array {
  const cov = new Float32Array(size * size);
  const x0 = Math.max(0, Math.floor(cx - 1.1 * r - 1));
  const x1 = Math.min(size - 1, Math.ceil(cx + 1.1 * r + 1));
  const y0 = Math.max(0, Math.floor(cy - 1.1 * r - 1));
  const y1 = Math.min(size - 1, Math.ceil(cy + 1.1 * r + 1));
  for (let py = y0; py <= y1; py++) {
    for (let px = x0; px <= x1; px++) {
      let hits = 0;
      for (let sy = 0; sy < SS; sy++) {
        for (let sx = 0; sx < SS; sx++) {
          const x = px + (sx + 0.5) / SS;
          const y = py + (sy + 0.5) / SS;
          if (insideShape(shape, (x - cx) / r, (y - cy) / r)) hits++;
        }
      }
      cov[py * size + px] = hits / (SS * SS);
    }
  }
  return cov;
}

/**
 * Draw a scene into RGB bytes `[32, 32, 3]`: its shapes' coverage blended between the scene's
 * background and `fill` (by default the colour the scene names; a style passes its own version).
 */
export function renderScene(scene: Scene, fill: readonly number[] = COLORS[scene.color]): Uint8Array {
  const n = TINY_SIZE * TINY_SIZE;
  const cov = new Float32Array(n);
  const r = SIZE_RADIUS[scene.size];
  for (const [cx, cy] of scene.centers) {
    const c = shapeCoverage(scene.shape, cx, cy, r);
    for (let i = 0; i < n; i++) cov[i] = Math.min(1, cov[i]! + c[i]!);
  }
  const bg = BACKGROUNDS[scene.background];
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = cov[i]!;
    for (let ch = 0; ch < 3; ch++) out[i * 3 + ch] = Math.round(a * fill[ch]! + (1 - a) * bg[ch]!);
  }
  return out;
}

/** Centre of a single shape at a named position (before jitter). */
function positionCenter(pos: PositionName, r: number): [number, number] {
  const mid = TINY_SIZE / 2;
  const off = mid - r - 2; // keep the shape inside the frame with a 1–2 px margin
  switch (pos) {
    case "left":
      return [mid - off, mid];
    case "right":
      return [mid + off, mid];
    case "top":
      return [mid, mid - off];
    case "bottom":
      return [mid, mid + off];
    case "center":
      return [mid, mid];
  }
}

/**
 * Draw a random scene from `rng`: uniform over shapes, colours and backgrounds; one shape in 4 of
 * 5 scenes (size and position uniform), two small shapes side by side or stacked otherwise.
 * Centres get ±1 px of jitter so the model cannot memorise exact pixel positions.
 */
export function randomScene(rng: Rng): Scene {
  const shape = SHAPES[rng.nextInt(0, SHAPES.length)]!;
  const color = COLOR_NAMES[rng.nextInt(0, COLOR_NAMES.length)]!;
  const background = BACKGROUND_NAMES[rng.nextInt(0, BACKGROUND_NAMES.length)]!;
  const jitter = (): number => rng.nextFloat() * 2 - 1;
  if (rng.nextInt(0, 5) === 4) {
    const mid = TINY_SIZE / 2;
    const off = 8;
    const horizontal = rng.nextInt(0, 2) === 0;
    const j = [jitter(), jitter()];
    const centers: Array<[number, number]> = horizontal
      ? [
          [mid - off + j[0]!, mid + j[1]!],
          [mid + off + j[0]!, mid + j[1]!],
        ]
      : [
          [mid + j[0]!, mid - off + j[1]!],
          [mid + j[0]!, mid + off + j[1]!],
        ];
    return { shape, color, background, count: 2, size: "small", centers };
  }
  const size = SIZES[rng.nextInt(0, SIZES.length)]!;
  const position = POSITIONS[rng.nextInt(0, POSITIONS.length)]!;
  const [cx, cy] = positionCenter(position, SIZE_RADIUS[size]);
  return { shape, color, background, count: 1, size, position, centers: [[cx + jitter(), cy + jitter()]] };
}

/**
 * Sample `index` of the dataset with seed `seed`: the same (seed, index) always gives the same
 * scene, independent of which other samples were drawn — so a resumed training run sees exactly
 * the data it would have seen without the interruption.
 */
export function shapeSample(seed: number, index: number): ShapeSample {
  if (!Number.isSafeInteger(index) || index < 0) throw new Error(`shapeSample: index must be a non-negative integer, got ${index}`);
  const rng = new Rng((seed * 1_000_003 + index) % 2 ** 52);
  const scene = randomScene(rng);
  return { scene, caption: captionOf(scene), pixels: renderScene(scene) };
}

/** `count` consecutive samples starting at `start`. */
export function shapeSamples(seed: number, start: number, count: number): ShapeSample[] {
  return Array.from({ length: count }, (_, i) => shapeSample(seed, start + i));
}

/** RGB bytes of several images → one Float32Array NHWC in [−1, 1] (the model's pixel space). */
export function toModelPixels(images: Uint8Array[]): Float32Array {
  const per = TINY_SIZE * TINY_SIZE * 3;
  const out = new Float32Array(images.length * per);
  images.forEach((img, b) => {
    if (img.length !== per) throw new Error(`toModelPixels: image ${b} has ${img.length} bytes, expected ${per} (32×32 RGB)`);
    for (let i = 0; i < per; i++) out[b * per + i] = img[i]! / 127.5 - 1;
  });
  return out;
}

/** Model pixels in [−1, 1] (NHWC, any batch) → RGB bytes per image. */
export function fromModelPixels(data: Float32Array | ArrayLike<number>, batch: number): Uint8Array[] {
  const per = TINY_SIZE * TINY_SIZE * 3;
  if (data.length !== batch * per) throw new Error(`fromModelPixels: got ${data.length} values for ${batch} images of 32×32×3`);
  return Array.from({ length: batch }, (_, b) => {
    const img = new Uint8Array(per);
    for (let i = 0; i < per; i++) img[i] = Math.max(0, Math.min(255, Math.round((data[b * per + i]! + 1) * 127.5)));
    return img;
  });
}
