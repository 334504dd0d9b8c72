/**
 * hypernet-lab: Stable Diffusion hypernetworks on TensorFlow.js, in two layers.
 *
 * `hn.*` holds the notebook verbs, one per step of the workflow. Each does the work and shows the
 * result — inline in a tslab notebook, as files and terminal lines elsewhere — and returns it:
 *
 *     await hn.useBackend();                                        // backend, device, why
 *     const base = await hn.loadBaseModel();                        // the tiny model, or a path to SD 1.x weights
 *     await hn.preprocess("my-images", "train", { width: 512, height: 512 });
 *     const net = hn.createHypernetwork({ name: "watery", layerStructure: [1, 2, 1] });
 *     const result = await hn.train(base, net, { dataDir: "train", maxSteps: 2000 }).done;
 *     await hn.txt2img(base, { prompt: "a boy on water <hypernet:watery:0.8>", hypernetworkDir: "hypernetworks" });
 *     await hn.multiplierSweep(base, net, "a boy on water", [0, 0.5, 1]);
 *     hn.saveHypernetwork(net, "watery.pt");                        // loads in A1111 and ComfyUI
 *
 * One level down sits the library the verbs are made of: `hn.core` (hypernetworks and their files,
 * the UNet, base models, txt2img, training, file formats), `hn.diffusion`, `hn.data`, `hn.text`,
 * `hn.vae`, and the display adapters and chart builders the verbs draw with (`hn.display`,
 * `hn.charts`). Each export is documented where it is defined.
 */

// The notebook verbs.
export { useBackend, type BackendChoice, type BackendReport } from "./backend/backend";
export {
  enablePlotly,
  loadBaseModel,
  preprocess,
  createHypernetwork,
  inspectHypernetwork,
  loadHypernetwork,
  train,
  txt2img,
  multiplierSweep,
  saveHypernetwork,
  type TrainLiveOptions,
  type TrainLiveResult,
  type Txt2ImgShowOptions,
} from "./kernel-helpers/steps";
export { attentionMaps, type AttentionMapOptions, type AttentionMapResult, type LayerAttention } from "./kernel-helpers/attention-maps";
// Training tools a notebook gives and a web UI does not: the LR range test, the checkpoint gallery, loss by timestep, module norms.
export { lrRangeTest, checkpointGallery, timestepLossChart, moduleNormsChart } from "./kernel-helpers/training-tools";
export type { LrRangeOptions, LrRangeResult } from "./train/lr-range";
export type { GalleryOptions, GalleryResult } from "./train/gallery";
export type { ValidationOptions } from "./train/validation";
export type { ValidationEvent, NormsEvent } from "./train/events";
export {
  styleCheck,
  writePastelSet,
  STYLE_RISE_MARGIN,
  type StyleCheckOptions,
  type StyleCheckResult,
  type PastelSetResult,
} from "./kernel-helpers/style-check";
// The types the verbs take and return (their classes and functions are in `core`).
export type { BaseModel } from "./pipeline/base-model";
export type { LoadBaseModelOptions } from "./pipeline/load";
export type { PreprocessOptions, PreprocessSummary } from "./data/preprocess";
export type { CreateOptions, Hypernetwork } from "./hypernet/network";
export type { Txt2ImgResult } from "./pipeline/txt2img";
// Reproducing an A1111 image starts from its infotext, sampler name and noise, so these stay at the top.
export { samplerByName, randn } from "./diffusion/index";
export { a1111Rng, a1111ImageNoise } from "./diffusion/index";
export { parsePromptAttention, promptSchedules, multicondPromptList } from "./text/index";
export { readInfotext, type ReadInfotext } from "./pipeline/infotext-read";

// The library.
export * as core from "./core";
export * as diffusion from "./diffusion/index";
export * as data from "./data/index";
export * as text from "./text/index";
export * as vae from "./vae/index";
export * as display from "./kernel-helpers/display";
export * as charts from "./kernel-helpers/charts";
