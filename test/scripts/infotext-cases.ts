/**
 * The infotexts the A1111 parity fixtures are made from (test/fixtures/a1111-infotext.json, by
 * make-infotext-fixtures.ts), shared with test/infotext.test.ts.
 *
 * `CORPUS`: texts as A1111 and older versions wrote them, and awkward ones (quoted values with
 * commas, multi-line prompts, hires fields, missing and empty fields, Unicode digits, CRLF).
 * `ROUND_TRIP`: what this project's writer is given; the test checks that A1111's parser reads the
 * writer's text back to the same txt2img settings (`settings`, written out by hand).
 */
import type { InfotextParams } from "../../src/pipeline/infotext";
import type { InfotextSettings } from "../../src/pipeline/infotext-read";

export const CORPUS: string[] = [
  // The example: a pre-1.9 sampler name with its schedule, no Size.
  "masterpiece, (best quality:1.2) <hypernet:watery:0.8>\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234",
  // A1111 1.10 as it writes today.
  "a lighthouse at dusk, watercolor\nNegative prompt: blurry, lowres\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1",
  // Quoted values holding commas and colons.
  'portrait, easynegative\nNegative prompt: badhandv4\nSteps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5, TI hashes: "easynegative: c74b4e810b03, badhandv4: 5e40d722fe19", Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.0',
  // Multi-line prompt and negative prompt.
  "line one,\nline two <hypernet:a:1>\n\nline four\nNegative prompt: bad,\n  worse  \nSteps: 30, Sampler: Heun, CFG scale: 5, Seed: 7, Size: 768x512",
  // Hires fix as 1.10 writes it.
  "castle\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 9, Size: 512x512, Denoising strength: 0.7, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Version: v1.10.1",
  // Old hires fix (first pass chosen automatically, then an explicit one).
  "castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 9, Size: 1024x768, First pass size: 0x0, Denoising strength: 0.7",
  "castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 9, Size: 1024x1024, First pass size: 512x512, Denoising strength: 0.6",
  // Only a prompt; and a parameters line with fewer than three fields, which A1111 reads as prompt.
  "a cat on a mat",
  "a cat\nSteps: 20, Seed: 5",
  // An empty value drops its key.
  "a cat\nSteps: 20, Sampler: Euler a, Model: , Seed: 1, CFG scale: 7",
  // A1111 before extra networks: the hypernetwork as fields, which the parser turns into a tag.
  "a boy on water\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 512x512, Hypernet: watery, Hypernet strength: 0.8",
  // Old versions: prompt editing in the prompt, DDIM, and the tsnr boundary.
  "a [cat:dog:0.5] on a mat\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 11, Size: 512x512, Version: v1.5.1",
  "a cat\nSteps: 20, Sampler: PLMS, CFG scale: 7, Seed: 11, Size: 512x512, Version: v1.6.0-2-g4afaaf8a",
  "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 11, Size: 512x512, Version: v1.7.0-225-g1234567",
  "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 11, Size: 512x512, Version: v1.7.0-224-g1234567, Refiner: sdxl_refiner [7440042bbd]",
  // Variation seeds, resize, ENSD, RNG, clip skip, eta.
  "a fox\nSteps: 12, Sampler: Euler a, Schedule type: Automatic, CFG scale: 8, Seed: 100, Size: 512x512, Variation seed: 200, Variation seed strength: 0.3, Seed resize from: 768x768, Clip skip: 2, ENSD: 31337, RNG: CPU, Eta: 0.67",
  // Quoted values with escapes; an invalid JSON quote is kept as typed.
  'a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: "my:model \\"v2\\"", Foo: "bad \\x", Hires prompt: "a\\nb, c"',
  // Unicode: a Japanese prompt and full-width digits in the size (Python\'s \\d matches them).
  "猫の絵、水彩\nNegative prompt: ぼやけ\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: ５１２x５１２",
  // Windows line ends.
  "a cat\r\nNegative prompt: a dog\r\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2\r\n",
  // An empty negative prompt line, spaces around everything.
  "   a cat   \nNegative prompt:    \n  Steps: 1, Sampler: Euler, CFG scale: 1  ",
  // Settings this project does not reproduce.
  "a cat\nSteps: 20, Sampler: Restart, Schedule type: SGM Uniform, CFG scale: 7, Seed: 1, Size: 512x512, Face restoration: CodeFormer, Tiling: True, Emphasis: No norm, NGMS: 1, Pad conds: True, FP8 weight: Enable for SDXL, Schedule rho: 7",
  // A1111's old 8-digit model hash, batch fields of old versions, an unknown sampler.
  "a cat\nSteps: 20, Sampler: k_euler_ancestral, CFG scale: 7.5, Seed: 4294967295, Size: 512x512, Model hash: 45dee52b, Batch size: 2, Batch pos: 1",
];

export interface RoundTripCase {
  params: InfotextParams;
  /** What readInfotext must give back (cannotHonour and notes aside). */
  settings: InfotextSettings;
}

export const ROUND_TRIP: RoundTripCase[] = [
  {
    params: {
      prompt: "a lighthouse at dusk <hypernet:watery:0.8> <hypernet:sunset-glow:0.5>",
      negativePrompt: "blurry",
      steps: 20,
      sampler: "DPM++ 2M",
      scheduleType: "Karras",
      cfgScale: 7,
      seed: 1234,
      width: 512,
      height: 512,
      modelHash: "6ce0161689",
      model: "v1-5-pruned-emaonly",
      rng: "NV",
    },
    settings: {
      prompt: "a lighthouse at dusk <hypernet:watery:0.8> <hypernet:sunset-glow:0.5>",
      negativePrompt: "blurry",
      steps: 20,
      sampler: "DPM++ 2M Karras",
      cfgScale: 7,
      seed: 1234,
      width: 512,
      height: 512,
      noiseSource: "NV",
    },
  },
  {
    params: {
      prompt: "a fox in snow",
      steps: 12,
      sampler: "Euler a",
      scheduleType: "Automatic",
      cfgScale: 8.5,
      seed: 4294967295,
      width: 32,
      height: 32,
      model: "tiny-shapes",
      subseed: 200,
      subseedStrength: 0.25,
      seedResizeFrom: { width: 64, height: 48 },
      clipSkip: 2,
      etaNoiseSeedDelta: 31337,
      rng: "CPU",
    },
    settings: {
      prompt: "a fox in snow",
      negativePrompt: "",
      steps: 12,
      sampler: "Euler a",
      cfgScale: 8.5,
      seed: 4294967295,
      width: 32,
      height: 32,
      subseed: 200,
      subseedStrength: 0.25,
      seedResizeFrom: { width: 64, height: 48 },
      clipSkip: 2,
      etaNoiseSeedDelta: 31337,
      noiseSource: "CPU",
    },
  },
  {
    params: {
      prompt: "first line: a cat, (red:1.2)\nsecond line, easynegative",
      negativePrompt: "bad: hands,\nworse",
      steps: 7,
      sampler: "DDIM",
      scheduleType: "Automatic",
      cfgScale: 1,
      seed: 0,
      width: 64,
      height: 32,
      modelHash: "0123456789",
      model: "my, model: v2",
      subseed: 5,
      subseedStrength: 0.00001,
      rng: "NV",
      extra: [
        ["TI hashes", "easynegative: c74b4e810b03"],
        ["Emphasis", "No norm"],
        ["Hypernet timesteps", "0-250"],
      ],
    },
    settings: {
      prompt: "first line: a cat, (red:1.2)\nsecond line, easynegative",
      negativePrompt: "bad: hands,\nworse",
      steps: 7,
      sampler: "DDIM",
      cfgScale: 1,
      seed: 0,
      width: 64,
      height: 32,
      noiseSource: "NV",
      subseed: 5,
      subseedStrength: 0.00001,
      emphasis: "No norm",
      hypernetworkTimesteps: [0, 250],
    },
  },
  {
    params: {
      prompt: "猫の水彩画 <hypernet:ねこ:1>",
      negativePrompt: "ぼやけ",
      steps: 3,
      sampler: "DPM++ 2M SDE",
      scheduleType: "Exponential",
      cfgScale: 7,
      seed: 99,
      width: 32,
      height: 32,
      rng: "GPU",
    },
    settings: {
      prompt: "猫の水彩画 <hypernet:ねこ:1>",
      negativePrompt: "ぼやけ",
      steps: 3,
      sampler: "DPM++ 2M SDE Exponential",
      cfgScale: 7,
      seed: 99,
      width: 32,
      height: 32,
      noiseSource: "NV",
    },
  },
];
