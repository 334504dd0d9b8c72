/**
 * hypernet-lab: Stable Diffusion hypernetworks on TensorFlow.js.
 *
 * The notebook-facing API. Each export is documented where it is defined.
 */
export { useBackend, formatBackendReport, type BackendChoice, type BackendReport } from "./backend/backend";
export { doctorReport } from "./backend/doctor";

export { createHypernetwork, Hypernetwork, DEFAULT_DIMS, type CreateOptions, type HypernetworkInfo } from "./hypernet/network";
export { HypernetworkModule, planLayers, WEIGHT_INITS, type WeightInit } from "./hypernet/module";
export { ACTIVATION_NAMES, COMFYUI_ACTIVATIONS, type ActivationName } from "./hypernet/activations";
export { attachHypernetworks, Attachment, type StackEntry } from "./hypernet/attach";
export { loadHypernetwork, saveHypernetwork, readHypernetworkFile, writeHypernetworkFile, type HypernetworkFile } from "./hypernet/file";
export { readOptimizerFile, writeOptimizerFile } from "./hypernet/optim-file";
export { shortHash } from "./io/hash";
export type { OptimizerState } from "./train/optimizer-state";
export { parsePrompt, listHypernetworks, resolveHypernetwork, type HypernetTag, type ParsedPrompt } from "./hypernet/prompt";

export { UNetModel } from "./unet/unet";
export { loadUNetWeights } from "./unet/load";
export { type AttentionProcessor, defaultProcessor, attend, CrossAttention } from "./unet/attention";
export { BaseModel, type BaseModelParts } from "./pipeline/base-model";
export { loadBaseModel, LoadedBaseModel, type LoadBaseModelOptions, type BaseModelLoadReport } from "./pipeline/load";
export { txt2img, type Txt2ImgOptions, type Txt2ImgResult } from "./pipeline/txt2img";
export { clearHypernetworkCache, resolvePromptHypernetworks } from "./hypernet/prompt-networks";

export * from "./diffusion/index";
export * as data from "./data/index";
export * as text from "./text/index";
export * as vae from "./vae/index";

export { SafetensorsFile, readSafetensors, writeSafetensors } from "./io/safetensors";
export { openTorchFile, readTorchFile, writeTorchFile, CorruptFileError, UnsafePickleError, UnsupportedFileError } from "./io/torch-file";

// Notebook steps, display adapters and charts (src/kernel-helpers).
export {
  enablePlotly,
  loadBase,
  preprocessAndShow,
  describeHypernetwork,
  inspectHypernetwork,
  createAndInspect,
  trainLive,
  preview,
  sample,
  saveAndReport,
  loadAndReport,
  multiplierSweep,
  type ModuleRow,
  type TrainLiveOptions,
  type TrainLiveResult,
  type PreviewCallOptions,
} from "./kernel-helpers/steps";
export { displayMode, setDisplayMode, getOutputDir, setOutputDir, liveDisplay, show, pngImgTag, type DisplayMode, type Content, type LiveDisplay } from "./kernel-helpers/display";
export { lossFigure, normsFigure, smoothEma, figureHtml, plotlyLoaderHtml, type Figure, type LossPoint, type LossFigureOptions } from "./kernel-helpers/charts";
export { attentionMaps, attentionCaptureProcessor, tokenLabels, type AttentionMapOptions, type AttentionMapResult, type LayerAttention } from "./kernel-helpers/attention-maps";

export { train, resumeTraining, type TrainOptions, type TrainResult, type TrainingRun, type StopReason } from "./train/trainer";
export { parseSchedule, Schedule, ScheduleError } from "./train/lr-schedule";
export { AdamW } from "./train/adamw";
export { loadTinyModel } from "./tiny/model";
export { PASTEL, pastelStyleSet, renderPastel, styleScore, whiteness } from "./tiny/style";
export { sampleTiny } from "./tiny/sample";
