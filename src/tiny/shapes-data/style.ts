/**
 * A style the tiny base model has never seen — "pastel chalk": every shape in its colour mixed
 * halfway to white, on black. The base model only ever drew the six saturated palette colours, so
 * a hypernetwork trained on these images has to change *how* colours are rendered, while the
 * captions, which name only the content ("a large red circle on the left, black background"), stay
 * the same kind of sentence the base model already understands. Hue and silhouette are kept, so
 * the content classifier reads pastel images as well as flat ones (tested), and "did the content
 * survive the style" is a fair question.
 *
 * Why a palette style and not line work: a hypernetwork only rewrites the keys and values of the
 * attention layers, which the tiny UNet has at 16×16 and coarser only, so what it can change is
 * what those coarse features decide — colour, brightness, size — not one-pixel detail (the styles
 * tried are in `docs/demo-trials.md`).
 *
 * `styleScore` measures the style with one pixel statistic, "whiteness": over the drawn pixels
 * away from the edges, the mean of min(R, G, B) / max(R, G, B) — 0 for a pure hue, 1 for any gray,
 * white or black. The palette colours score 0.17–0.25, their pastel versions 0.60–0.69.
 */
import { Rng } from "../../diffusion/random";
import { foregroundMask, measureBackground } from "./classify";
import { COLORS, TINY_SIZE, captionOf, randomScene, renderScene, type Scene, type ShapeSample } from "./shapes";

const N = TINY_SIZE * TINY_SIZE;

/** How far each colour is mixed towards white (0 = the palette colour, 1 = white). */
export const PASTEL = 0.5;

/** A palette colour mixed `PASTEL` of the way to white. */
function pastelOf(color: readonly number[]): number[] {
  return color.map((v) => v + (255 - v) * PASTEL);
}

/** Draw a scene in the pastel style (its `background` is ignored: the style is on black). */
export function renderPastel(scene: Scene): Uint8Array {
  return renderScene({ ...scene, background: "black" }, pastelOf(COLORS[scene.color]));
}

/**
 * The pastel style set: `count` scenes from the tiny-shapes distribution (seeded; background forced
 * to black), drawn in the pastel style and captioned with their content as the base data is
 * ("a large red circle on the left, black background").
 */
export function pastelStyleSet(count = 40, seed = 31337): ShapeSample[] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => {
    const scene: Scene = { ...randomScene(rng), background: "black" };
    return { scene, caption: captionOf(scene), pixels: renderPastel(scene) };
  });
}

/** An image needs this many drawn pixels away from the edges to have a whiteness at all. */
const MIN_INSIDE = 4;

/**
 * Whiteness of one 32×32 RGB image: with the drawn pixels found as the content classifier finds
 * them (`foregroundMask`: nearer to a shape colour than to the border's colour), and only those
 * whose four neighbours are drawn too (an anti-aliased edge pixel is part background, and a white
 * or gray background would make it look pale), the mean of min(R, G, B) / max(R, G, B). `null`
 * when fewer than 4 such pixels exist (nothing drawn, or only thin things).
 */
export function whiteness(pixels: Uint8Array): number | null {
  if (pixels.length !== N * 3) throw new Error(`whiteness: expected ${N * 3} bytes (32×32 RGB), got ${pixels.length}`);
  const s = TINY_SIZE;
  const drawn = foregroundMask(pixels, measureBackground(pixels));
  let sum = 0;
  let n = 0;
  for (let y = 1; y < s - 1; y++) {
    for (let x = 1; x < s - 1; x++) {
      const i = y * s + x;
      if (drawn[i]! < 0 || drawn[i - 1]! < 0 || drawn[i + 1]! < 0 || drawn[i - s]! < 0 || drawn[i + s]! < 0) continue;
      const r = pixels[i * 3]!;
      const g = pixels[i * 3 + 1]!;
      const b = pixels[i * 3 + 2]!;
      const max = Math.max(r, g, b);
      sum += max === 0 ? 1 : Math.min(r, g, b) / max;
      n++;
    }
  }
  return n < MIN_INSIDE ? null : sum / n;
}

/**
 * How strongly a set of images shows the pastel style: the mean `whiteness` of the images that have
 * one (0 when none has). On ground truth, flat shapes score about 0.2 and the pastel set about 0.63;
 * a hypernetwork that learned the style moves the tiny model's samples from the first towards the
 * second.
 */
export function styleScore(images: Uint8Array[]): number {
  if (images.length === 0) throw new Error("styleScore: no images");
  const v = images.map(whiteness).filter((x): x is number => x !== null);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : 0;
}
