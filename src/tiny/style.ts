/**
 * A style the tiny base model has never seen — "neon": every shape drawn only as a thin glowing
 * outline (a white-hot core line in a lightened version of its colour, with a soft halo) on black.
 * The base model only ever drew filled shapes (the ring is its one shape with a hole), so a
 * hypernetwork trained on these images has to change *how* things are drawn while the captions,
 * which name only the content, stay the same kind of sentence the base model already understands.
 *
 * `styleScore` measures the style with one pixel statistic, "hollowness": of the area that the
 * drawn objects enclose, the fraction that is empty. Filled shapes score 0 (rings ≈ 0.3); neon
 * outlines score high.
 */
import { Rng } from "../diffusion/random";
import { COLORS, TINY_SIZE, captionOf, randomScene, shapeCoverage, SIZE_RADIUS, type Scene, type ShapeSample } from "./shapes";

const N = TINY_SIZE * TINY_SIZE;

/** Draw a scene in the neon style (its `background` is ignored: neon is always on black). */
export function renderNeon(scene: Scene): Uint8Array {
  const s = TINY_SIZE;
  const r = SIZE_RADIUS[scene.size];
  // Coverage of all copies of the shape.
  const cov = new Float32Array(N);
  for (const [cx, cy] of scene.centers) {
    const c = shapeCoverage(scene.shape, cx, cy, r);
    for (let i = 0; i < N; i++) cov[i] = Math.min(1, cov[i]! + c[i]!);
  }
  // Outline: covered pixels with an uncovered 8-neighbour (inner edge of the shape boundary).
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
  // Halo: the outline blurred with a 5×5 Gaussian (σ ≈ 1), half as bright as the line.
  const w = [0.06, 0.24, 0.4, 0.24, 0.06];
  const tmp = new Float32Array(N);
  const glow = new Float32Array(N);
  for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) for (let k = -2; k <= 2; k++) if (x + k >= 0 && x + k < s) tmp[y * s + x]! += w[k + 2]! * line[y * s + x + k]!;
  for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) for (let k = -2; k <= 2; k++) if (y + k >= 0 && y + k < s) glow[y * s + x]! += w[k + 2]! * tmp[(y + k) * s + x]!;
  const base = COLORS[scene.color];
  const bright = base.map((v) => Math.min(255, v * 0.6 + 110)); // the colour, lightened
  const out = new Uint8Array(N * 3);
  for (let i = 0; i < N; i++) {
    const a = Math.min(1, Math.max(line[i]!, 1.3 * glow[i]!));
    for (let c = 0; c < 3; c++) {
      const v = 8 + a * (bright[c]! - 8) + line[i]! * 0.35 * (255 - bright[c]!); // black, tinted glow, white-hot core
      out[i * 3 + c] = Math.round(Math.min(255, v));
    }
  }
  return out;
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

/**
 * Hollowness of one 32×32 RGB image, in [0, 1]: with "drawn" = pixels that differ clearly from the
 * border's median colour (by at least half the largest difference in the image), and "holes" = undrawn pixels that cannot be reached from the border
 * without crossing drawn ones, hollowness = holes / (drawn + holes). 0 for an empty image.
 */
export function hollowness(pixels: Uint8Array): number {
  if (pixels.length !== N * 3) throw new Error(`hollowness: expected ${N * 3} bytes (32×32 RGB), got ${pixels.length}`);
  const s = TINY_SIZE;
  const border: number[][] = [[], [], []];
  for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) if (x === 0 || y === 0 || x === s - 1 || y === s - 1) for (let c = 0; c < 3; c++) border[c]!.push(pixels[(y * s + x) * 3 + c]!);
  const bg = border.map((v) => v.sort((a, b) => a - b)[v.length >> 1]!);
  const dist = new Float32Array(N);
  for (let i = 0; i < N; i++) dist[i] = Math.hypot(pixels[i * 3]! - bg[0]!, pixels[i * 3 + 1]! - bg[1]!, pixels[i * 3 + 2]! - bg[2]!);
  // Drawn: at least half as far from the background as the most distinct pixel (so a faint halo
  // or anti-aliasing fringe does not count), and clearly different at all (> 60 of 441).
  const threshold = Math.max(60, 0.5 * Math.max(...dist));
  const drawn = new Uint8Array(N);
  let nDrawn = 0;
  for (let i = 0; i < N; i++) {
    if (dist[i]! > threshold) {
      drawn[i] = 1;
      nDrawn++;
    }
  }
  if (nDrawn === 0) return 0;
  // Flood the undrawn pixels from the border (4-connected); what stays unreached is a hole.
  const reached = new Uint8Array(N);
  const stack: number[] = [];
  for (let i = 0; i < N; i++) {
    const x = i % s;
    const y = (i - x) / s;
    if ((x === 0 || y === 0 || x === s - 1 || y === s - 1) && !drawn[i]) {
      reached[i] = 1;
      stack.push(i);
    }
  }
  while (stack.length) {
    const i = stack.pop()!;
    const x = i % s;
    const y = (i - x) / s;
    for (const [nx, ny] of [[x - 1, y], [x + 1, y], [x, y - 1], [x, y + 1]] as const) {
      if (nx < 0 || ny < 0 || nx >= s || ny >= s) continue;
      const j = ny * s + nx;
      if (!drawn[j] && !reached[j]) {
        reached[j] = 1;
        stack.push(j);
      }
    }
  }
  let holes = 0;
  for (let i = 0; i < N; i++) if (!drawn[i] && !reached[i]) holes++;
  return holes / (nDrawn + holes);
}

/**
 * How strongly a set of images shows the neon style: the mean `hollowness`. On ground truth the
 * base dataset scores about 0.05 (only rings have holes) and the neon set about 0.5; a hypernetwork
 * that learned the style moves the tiny model's samples from the first towards the second.
 */
export function styleScore(images: Uint8Array[]): number {
  if (images.length === 0) throw new Error("styleScore: no images");
  return images.reduce((a, img) => a + hollowness(img), 0) / images.length;
}
