/**
 * A style the tiny base model has never seen — "neon sign": every shape is a tube of light along
 * its outline (a white-hot core in a lightened version of its colour, with a faint glow) around a
 * dim pane of tinted glass (the shape's colour at 60 %), on black. The base model only ever drew
 * flat, evenly lit shapes, so a hypernetwork trained on these images has to change *how* things are
 * drawn — light moved from the inside of each shape to its rim — while the captions, which name
 * only the content, stay the same kind of sentence the base model already understands. Each shape
 * keeps its silhouette, hole and hue, so the content classifier reads neon images as well as flat
 * ones (tested), and "did the content survive the style" is a fair question.
 *
 * `styleScore` measures the style with one pixel statistic, "rim contrast": how far the drawn
 * shapes' rims (within 2 px of their edge) stand out from the background, over how far their
 * insides do, in luminance. Evenly lit shapes score a little under 1 (their anti-aliased edge is
 * part background) on any background (0.88–0.93 on black, gray, white); neon signs about 2.1. Measuring against the background
 * rather than in absolute brightness matters: a model that only turned gray backgrounds black
 * would otherwise look as if it had changed how shapes are lit.
 */
import { Rng } from "../diffusion/random";
import { foregroundMask, measureBackground } from "./classify";
import { COLORS, TINY_SIZE, captionOf, randomScene, shapeCoverage, SIZE_RADIUS, type Scene, type ShapeSample } from "./shapes";

const N = TINY_SIZE * TINY_SIZE;

/** Brightness of the glass inside a neon shape, as a fraction of the shape's colour. */
const GLASS = 0.6;
/** Strength of the glow around the tube (the blurred outline's weight). */
const GLOW = 0.6;

/** Draw a scene in the neon style (its `background` is ignored: neon is always on black). */
export function renderNeon(scene: Scene): Uint8Array {
  const r = SIZE_RADIUS[scene.size];
  // Coverage of all copies of the shape.
  const cov = new Float32Array(N);
  for (const [cx, cy] of scene.centers) {
    const c = shapeCoverage(scene.shape, cx, cy, r);
    for (let i = 0; i < N; i++) cov[i] = Math.min(1, cov[i]! + c[i]!);
  }
  const { line, alpha } = neonOutline(cov);
  const base = COLORS[scene.color];
  const bright = base.map((v) => Math.min(255, v * 0.6 + 110)); // the colour, lightened
  const out = new Uint8Array(N * 3);
  for (let i = 0; i < N; i++) {
    for (let c = 0; c < 3; c++) {
      const glass = 8 + GLASS * cov[i]! * (base[c]! - 8); // black, or dim tinted glass inside the shape
      const v = glass + alpha[i]! * (bright[c]! - glass) + line[i]! * 0.35 * (255 - bright[c]!); // then the tube's light and its white-hot core
      out[i * 3 + c] = Math.round(Math.min(255, v));
    }
  }
  return out;
}

/**
 * The tube of light of a coverage map (32×32, values 0–1): `line` = 1 on the inner edge of the
 * shape boundary (covered pixels with an uncovered 8-neighbour), `alpha` = how strongly each pixel
 * is lit by the tube (the line, or its 5×5 Gaussian blur (σ ≈ 1) at `GLOW` strength, whichever is
 * larger).
 */
function neonOutline(cov: Float32Array): { line: Float32Array; alpha: Float32Array } {
  const s = TINY_SIZE;
  const line = new Float32Array(N);
  for (let y = 0; y < s; y++) {
    for (let x = 0; x < s; x++) {
      const i = y * s + x;
      if (cov[i]! < 0.3) continue;
      let edge = false;
      for (let dy = -1; dy <= 1 && !edge; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx;
          const ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= s || ny >= s || cov[ny * s + nx]! < 0.3) {
            edge = true;
            break;
          }
        }
      }
      if (edge) line[i] = 1;
    }
  }
  const w = [0.06, 0.24, 0.4, 0.24, 0.06];
  const tmp = new Float32Array(N);
  const glow = new Float32Array(N);
  for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) for (let k = -2; k <= 2; k++) if (x + k >= 0 && x + k < s) tmp[y * s + x]! += w[k + 2]! * line[y * s + x + k]!;
  for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) for (let k = -2; k <= 2; k++) if (y + k >= 0 && y + k < s) glow[y * s + x]! += w[k + 2]! * tmp[(y + k) * s + x]!;
  const alpha = new Float32Array(N);
  for (let i = 0; i < N; i++) alpha[i] = Math.min(1, Math.max(line[i]!, GLOW * glow[i]!));
  return { line, alpha };
}

/**
 * The neon style set: `count` scenes from the tiny-shapes distribution (seeded; background forced
 * to black), drawn in the neon style and captioned with their content as the base data is
 * ("a large red circle on the left, black background").
 */
export function neonStyleSet(count = 40, seed = 31337): ShapeSample[] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => {
    const scene: Scene = { ...randomScene(rng), background: "black" };
    return { scene, caption: captionOf(scene), pixels: renderNeon(scene) };
  });
}

/** Luminance (Rec. 601) of pixel `i` of an RGB byte image. */
function luma(p: Uint8Array, i: number): number {
  return 0.299 * p[i * 3]! + 0.587 * p[i * 3 + 1]! + 0.114 * p[i * 3 + 2]!;
}

/** Pixels within this many steps (4-connected) of a shape's edge count as its rim. */
const RIM = 2;
/** An image needs this many inside pixels (beyond the rim) to have a rim contrast at all. */
const MIN_INSIDE = 4;
/** …and its inside must differ from the background by at least this much luminance (of 255). */
const MIN_INSIDE_CONTRAST = 8;

/**
 * Rim contrast of one 32×32 RGB image: with the drawn pixels found as the content classifier finds
 * them (`foregroundMask`: nearer to a shape colour than to the border's colour), each drawn pixel's
 * 4-connected distance d to the nearest undrawn pixel or the image edge (d = 1 on the edge),
 * rim = drawn pixels with d ≤ 2, inside = those with d ≥ 3, L = luminance and L_bg that of the
 * border's median colour, the contrast is mean |L(rim) − L_bg| / mean |L(inside) − L_bg|. `null`
 * when fewer than 4 pixels are inside (nothing drawn, or only small or thin things) or the inside
 * is hardly different from the background (mean |L − L_bg| < 8).
 */
export function rimContrast(pixels: Uint8Array): number | null {
  if (pixels.length !== N * 3) throw new Error(`rimContrast: expected ${N * 3} bytes (32×32 RGB), got ${pixels.length}`);
  const s = TINY_SIZE;
  const bg = measureBackground(pixels);
  const drawn = foregroundMask(pixels, bg);
  const lBg = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2];
  const d = new Int32Array(N);
  const queue: number[] = [];
  for (let i = 0; i < N; i++) {
    if (drawn[i]! < 0) continue;
    const x = i % s;
    const y = (i - x) / s;
    if (x === 0 || y === 0 || x === s - 1 || y === s - 1 || drawn[i - 1]! < 0 || drawn[i + 1]! < 0 || drawn[i - s]! < 0 || drawn[i + s]! < 0) {
      d[i] = 1;
      queue.push(i);
    }
  }
  // Breadth-first from the edge pixels: every drawn pixel gets its distance to the edge.
  for (let h = 0; h < queue.length; h++) {
    const i = queue[h]!;
    const x = i % s;
    for (const j of [x > 0 ? i - 1 : -1, x < s - 1 ? i + 1 : -1, i - s, i + s]) {
      if (j < 0 || j >= N || drawn[j]! < 0 || d[j] !== 0) continue;
      d[j] = d[i]! + 1;
      queue.push(j);
    }
  }
  let rimSum = 0;
  let rimN = 0;
  let inSum = 0;
  let inN = 0;
  for (let i = 0; i < N; i++) {
    if (drawn[i]! < 0) continue;
    const contrast = Math.abs(luma(pixels, i) - lBg);
    if (d[i]! <= RIM) {
      rimSum += contrast;
      rimN++;
    } else {
      inSum += contrast;
      inN++;
    }
  }
  if (inN < MIN_INSIDE || inSum / inN < MIN_INSIDE_CONTRAST) return null;
  return rimSum / rimN / (inSum / inN);
}

/**
 * How strongly a set of images shows the neon style: the mean `rimContrast` of the images that have
 * one (0 when none has). On ground truth, flat shapes score about 0.9 and the neon set about 2.1;
 * a hypernetwork that learned the style moves the tiny model's samples from the first
 * towards the second.
 */
export function styleScore(images: Uint8Array[]): number {
  if (images.length === 0) throw new Error("styleScore: no images");
  const v = images.map(rimContrast).filter((x): x is number => x !== null);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : 0;
}
