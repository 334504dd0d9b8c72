/**
 * Crop geometry for preprocessing, as plain arithmetic on sizes.
 *
 * Every function here answers "which pixels end up in the training image?" without touching pixels,
 * so the numbers can be checked by hand against AUTOMATIC1111's preprocessing (spec §5.1, §5.4,
 * `resize_image` mode 1). The pixel work (sharp) lives in `preprocess.ts` and follows these plans.
 */

/** An axis-aligned box in pixel units: `left`/`top` of the first pixel, and its size. */
export interface Box {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** "Resize the source to `resizeTo`, then cut `box` out of the resized image." */
export interface ResizeCropPlan {
  resizeTo: { width: number; height: number };
  box: Box;
}

/**
 * Default "Crop and resize" (A1111 `resize_image` mode 1): scale so the image covers W×H with its
 * aspect kept, then take the centre W×H.
 *
 * A1111 computes the covering size with integer division and pastes the resized image at
 * `(W//2 − w'//2, H//2 − h'//2)`; pasting at a negative offset is the same as cropping at
 * `(w'//2 − W//2, h'//2 − H//2)`, which is what this returns.
 */
export function coverCropPlan(srcW: number, srcH: number, W: number, H: number): ResizeCropPlan {
  const ratio = W / H;
  const srcRatio = srcW / srcH;
  const w = ratio > srcRatio ? W : Math.floor((srcW * H) / srcH);
  const h = ratio <= srcRatio ? H : Math.floor((srcH * W) / srcW);
  return {
    resizeTo: { width: w, height: h },
    box: { left: Math.floor(w / 2) - Math.floor(W / 2), top: Math.floor(h / 2) - Math.floor(H / 2), width: W, height: H },
  };
}

/** The aspect test that decides whether an image is "oversized" (spec §5.1 step 3). */
export interface OversizeRatio {
  /** short-side/long-side ratio relative to the target's; < 1 means longer than the target. */
  ratio: number;
  /** true when the long axis is x (landscape or square sources), as A1111's `inverse_xy`. */
  alongX: boolean;
}

/**
 * A1111's oversize ratio: for a portrait source `(w·H)/(h·W)` (split along y), otherwise
 * `(h·W)/(w·H)` (split along x). A square source counts as "along x".
 */
export function oversizeRatio(srcW: number, srcH: number, W: number, H: number): OversizeRatio {
  if (srcH > srcW) return { ratio: (srcW * H) / (srcH * W), alongX: false };
  return { ratio: (srcH * W) / (srcW * H), alongX: true };
}

/**
 * Split an oversized image into overlapping target-sized tiles (A1111 `split_pic`).
 *
 * Along the long axis: scale the short side to the target's short side, giving a long side
 * `L = from_long · to_short // from_short`; the tile count is `n = ceil((L − T·o) / (T·(1 − o)))`
 * for tile length T and overlap o, the tiles start at `int(i · (L − T)/(n − 1))`.
 * A1111 divides by zero when `n = 1` (possible only through the floor in L); here that gives one tile at 0.
 */
export function splitPlan(srcW: number, srcH: number, W: number, H: number, overlap: number): ResizeCropPlan[] {
  const o = Math.max(0, Math.min(0.9, overlap));
  const { alongX } = oversizeRatio(srcW, srcH, W, H);
  // In the "along x" case A1111 swaps the roles of the axes and reuses the portrait arithmetic.
  const fromShort = alongX ? srcH : srcW;
  const fromLong = alongX ? srcW : srcH;
  const toShort = alongX ? H : W;
  const tile = alongX ? W : H;
  const long = Math.floor((fromLong * toShort) / fromShort);
  const count = Math.max(1, Math.ceil((long - tile * o) / (tile * (1 - o))));
  const step = count > 1 ? (long - tile) / (count - 1) : 0;
  const resizeTo = alongX ? { width: long, height: toShort } : { width: toShort, height: long };
  const plans: ResizeCropPlan[] = [];
  for (let i = 0; i < count; i++) {
    const at = Math.trunc(step * i);
    const box: Box = alongX ? { left: at, top: 0, width: tile, height: toShort } : { left: 0, top: at, width: toShort, height: tile };
    plans.push({ resizeTo, box });
  }
  return plans;
}

/** Options of the auto-sized crop (A1111 "Auto-sized crop", spec §5.4). */
export interface AutoSizeOptions {
  /** Smallest output side, px (default 384). Candidate sides step by 64 from here. */
  minDim?: number;
  /** Largest output side, px (default 768). */
  maxDim?: number;
  /** Smallest output area, px² (default 64²). */
  minArea?: number;
  /** Largest output area, px² (default 640²). */
  maxArea?: number;
  /** `maximize-area` (default): largest area, ties by lower error; `minimize-error`: the reverse. */
  objective?: "maximize-area" | "minimize-error";
  /** Largest accepted aspect error `1 − min(r, 1/r)` (default 0.1). */
  threshold?: number;
}

/** The chosen output size and the source box it is resized from. */
export interface AutoSizePlan {
  width: number;
  height: number;
  /** aspect error of the chosen size against the source */
  error: number;
  /** the largest centred box of the output's aspect, in source pixels (rounded to whole pixels) */
  box: Box;
  /** the same box as A1111 computes it, with fractional edges */
  exactBox: { left: number; top: number; right: number; bottom: number };
}

/**
 * Pick the auto-sized crop's output size, or `undefined` when no candidate fits.
 *
 * Candidates are all (w, h) with both sides in `minDim, minDim+64, … ≤ maxDim`, area within bounds
 * and aspect error `1 − min(r, 1/r) ≤ threshold`, r = (srcW/srcH)/(w/h). Ranking is by
 * (area, −error) or (−error, area); the first candidate in w-then-h order wins exact ties, as with
 * Python's `max`.
 */
export function autoSizePlan(srcW: number, srcH: number, opts: AutoSizeOptions = {}): AutoSizePlan | undefined {
  const minDim = opts.minDim ?? 384;
  const maxDim = opts.maxDim ?? 768;
  const minArea = opts.minArea ?? 64 * 64;
  const maxArea = opts.maxArea ?? 640 * 640;
  const threshold = opts.threshold ?? 0.1;
  const byArea = (opts.objective ?? "maximize-area") === "maximize-area";
  const err = (w: number, h: number): number => {
    const r = srcW / srcH / (w / h);
    return 1 - (r < 1 ? r : 1 / r);
  };
  let best: { w: number; h: number; e: number } | undefined;
  const better = (a: { w: number; h: number; e: number }, b: { w: number; h: number; e: number }): boolean => {
    const keyA = byArea ? [a.w * a.h, -a.e] : [-a.e, a.w * a.h];
    const keyB = byArea ? [b.w * b.h, -b.e] : [-b.e, b.w * b.h];
    return keyA[0]! > keyB[0]! || (keyA[0] === keyB[0] && keyA[1]! > keyB[1]!);
  };
  for (let w = minDim; w <= maxDim; w += 64) {
    for (let h = minDim; h <= maxDim; h += 64) {
      const e = err(w, h);
      if (w * h < minArea || w * h > maxArea || e > threshold) continue;
      const cand = { w, h, e };
      if (!best || better(cand, best)) best = cand;
    }
  }
  if (!best) return undefined;
  const { w, h } = best;
  // A1111 `center_crop`: the largest box of aspect w:h centred in the source.
  let exactBox: AutoSizePlan["exactBox"];
  if (srcH / h < srcW / w) {
    const sw = (w * srcH) / h;
    exactBox = { left: (srcW - sw) / 2, top: 0, right: srcW - (srcW - sw) / 2, bottom: srcH };
  } else {
    const sh = (h * srcW) / w;
    exactBox = { left: 0, top: (srcH - sh) / 2, right: srcW, bottom: srcH - (srcH - sh) / 2 };
  }
  const left = Math.round(exactBox.left);
  const top = Math.round(exactBox.top);
  const box: Box = {
    left,
    top,
    width: Math.min(srcW - left, Math.round(exactBox.right - exactBox.left)),
    height: Math.min(srcH - top, Math.round(exactBox.bottom - exactBox.top)),
  };
  return { width: w, height: h, error: best.e, box, exactBox };
}
