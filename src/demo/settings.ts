/**
 * What the demo does, as data: its settings (the shipped ones and `--quick`'s toy size) and the
 * fixed prompt set it samples and scores.
 */
import type { WeightInit } from "../hypernet/module";
import type { ExpectedContent } from "../tiny/shapes-data/classify";
import type { TrainOptions } from "../train/options";
import { COLOR_NAMES, POSITIONS, SHAPES, captionOf, type Scene } from "../tiny/shapes-data/shapes";

/** Everything the demo does that one might tune. */
export interface DemoSettings {
  /** Images in the pastel style set, and the seed that draws them. */
  styleImages: number;
  styleSeed: number;
  /** Prompt template for training (stock name or lines). */
  template: string | readonly string[];
  /**
   * Context widths that get a module pair (A1111's "Modules"): "all" = every attention width of the
   * UNet, or a list. On the tiny UNet 32, 64 and 96 are self-attention and 80 is cross-attention (the
   * text), like 320/640/1280 and 768 on SD 1.x.
   */
  dims: "all" | number[];
  /** Hypernetwork structure, as in A1111's "Create hypernetwork". */
  layerStructure: number[];
  activation: string;
  layerNorm: boolean;
  weightInit: WeightInit;
  /**
   * Start with the last Linear of every module at zero (`createHypernetwork`'s `zeroLastLayer`): the
   * untrained network is then exactly the identity, so the "before" images at every multiplier are
   * the base model's and are sampled once, at ×0.
   */
  zeroLastLayer: boolean;
  /** A1111 learning-rate schedule string, and Max steps. */
  learningRate: string;
  maxSteps: number;
  batchSize: number;
  gradientAccumulation: number;
  /** Timesteps the training loss is drawn from, `[min, max)` (the trainer's `timesteps`). */
  timesteps: [number, number];
  trainSeed: number;
  /** Prompts of the fixed set (see `demoPrompts`) to sample and score. */
  prompts: number;
  /** Multipliers the previews and scores are made at. */
  multipliers: number[];
  /**
   * Apply the network only in sampler steps at timesteps `[min, max)` (a timestep gate, see
   * `StackEntry.timesteps`); null (the default) = in every step, as A1111 and ComfyUI apply a
   * hypernetwork. When set, the trained network is also sampled ungated, for comparison
   * (`afterEveryStep` in the summary). `[0, 250]` (the last 4 of 16 Euler a steps) keeps more of
   * the shapes on the tiny model; see docs/demo-trials.md.
   */
  applyTimesteps: [number, number] | null;
  /** Sampler steps (Euler a), CFG scale and the seed of the sampling noise. */
  sampleSteps: number;
  cfg: number;
  sampleSeed: number;
}

/**
 * The demo's settings, chosen by the trials recorded in `docs/demo-trials.md` for: style at ×1 at
 * least 0.15 above ×0 and rising through ×0.5, colour and shape accuracy within 10 points of the
 * base model, with the network applied in every sampling step as A1111 does
 * (`applyTimesteps: null`), and the whole run within 3 minutes on 2 CPU cores. Modules only on width
 * 32 — the self-attention of the finest level (16×16) — keep the shapes: with modules on every
 * width (the text's cross-attention and the coarse levels too) the network rounds the shapes off
 * (100 → 54 % shape at ×1 on the step-12,820 model). Starting from the
 * identity (`zeroLastLayer`) the untrained network need not be sampled, and 75 steps at three times
 * the earlier learning rate learn as much style as 150 did.
 */
export const DEMO_SETTINGS: Readonly<DemoSettings> = Object.freeze({
  styleImages: 240,
  styleSeed: 31337,
  // The tiny tokenizer knows only caption words and keeps 16 tokens: a template's extra words
  // ("a painting of …, art by pastel") become <unk> and push long captions past the limit, so the
  // training prompt is the caption itself — the content — and the style is what is left to learn.
  template: Object.freeze(["[filewords]"]),
  dims: [32],
  layerStructure: [1, 2, 1],
  activation: "relu",
  layerNorm: false,
  weightInit: "Normal" as WeightInit,
  zeroLastLayer: true,
  learningRate: "9e-3:25, 4.5e-3:50, 1.8e-3:75",
  maxSteps: 75,
  batchSize: 8,
  gradientAccumulation: 1,
  timesteps: [0, 1000] as [number, number],
  trainSeed: 1,
  prompts: 24,
  multipliers: [0, 0.5, 1],
  applyTimesteps: null,
  sampleSteps: 16,
  cfg: 4,
  sampleSeed: 1234,
});

/** `--quick`: the same pipeline at toy size (a few steps, 2 prompts), for tests and a smoke check. */
export const QUICK_SETTINGS: Readonly<DemoSettings> = Object.freeze({
  ...DEMO_SETTINGS,
  styleImages: 4,
  maxSteps: 3,
  batchSize: 2,
  learningRate: "9e-3:2, 4.5e-3:3",
  prompts: 2,
  sampleSteps: 3,
});

/**
 * The demo's fixed prompt set: large single shapes on black, every shape with every colour in turn
 * (prompt i: shape i mod 6, colour (i + ⌊i/6⌋) mod 6 — 36 distinct pairs before repeating), at the
 * five positions in turn. Captions use the tiny model's own vocabulary (`captionOf`).
 */
export function demoPrompts(n: number): Array<{ prompt: string; expected: ExpectedContent }> {
  if (!Number.isInteger(n) || n < 1) throw new Error(`demoPrompts: n must be a positive integer, got ${n}`);
  return Array.from({ length: n }, (_, i) => {
    const scene: Scene = {
      shape: SHAPES[i % SHAPES.length]!,
      color: COLOR_NAMES[(i + Math.floor(i / SHAPES.length)) % COLOR_NAMES.length]!,
      background: "black",
      count: 1,
      size: "large",
      position: POSITIONS[i % POSITIONS.length]!,
      centers: [],
    };
    return {
      prompt: captionOf(scene),
      expected: { color: scene.color, shape: scene.shape, background: scene.background, count: scene.count },
    };
  });
}

/**
 * The trainer options of a demo run with settings `st`: its training set and run folder, the
 * settings' training fields, and no checkpoints along the way (the caller adds where the final
 * network goes, progress and callbacks). One place, so trials train exactly as the demo does.
 */
export function demoTrainOptions(st: DemoSettings, dataDir: string, logDir: string): TrainOptions {
  return {
    dataDir,
    template: st.template,
    logDir,
    maxSteps: st.maxSteps,
    learningRate: st.learningRate,
    batchSize: st.batchSize,
    gradientAccumulation: st.gradientAccumulation,
    timesteps: st.timesteps,
    seed: st.trainSeed,
    saveEvery: 0,
    saveOptimizer: false,
  };
}
