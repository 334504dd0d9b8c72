/**
 * hypernet-lab: Stable Diffusion hypernetworks on TensorFlow.js.
 *
 * The notebook-facing API. Each export is documented where it is defined.
 */
export { useBackend, formatBackendReport, type BackendChoice, type BackendReport } from "./kernel-helpers/backend";
export { doctorReport } from "./kernel-helpers/doctor";

export { createHypernetwork, Hypernetwork, DEFAULT_DIMS, type CreateOptions, type HypernetworkInfo } from "./hypernet/network";
export { HypernetworkModule, planLayers, WEIGHT_INITS, type WeightInit } from "./hypernet/module";
export { ACTIVATION_NAMES, COMFYUI_ACTIVATIONS, type ActivationName } from "./hypernet/activations";
export { attachHypernetworks, Attachment, type StackEntry } from "./hypernet/attach";
export { loadHypernetwork, saveHypernetwork, readHypernetworkFile, writeHypernetworkFile, type HypernetworkFile } from "./hypernet/file";
export { readOptimizerFile, writeOptimizerFile, shortHash, type OptimizerState } from "./hypernet/optim-file";
export { parsePrompt, listHypernetworks, resolveHypernetwork, type HypernetTag, type ParsedPrompt } from "./hypernet/prompt";

export { UNetModel } from "./unet/unet";
export { loadUNetWeights } from "./unet/load";
export { type AttentionProcessor, defaultProcessor, attend, CrossAttention } from "./unet/attention";
export { BaseModel, type BaseModelParts } from "./pipeline/base-model";

export * from "./diffusion/index";
export * as data from "./data/index";
export * as text from "./text/index";
export * as vae from "./vae/index";

export { SafetensorsFile, readSafetensors, writeSafetensors } from "./io/safetensors";
export { openTorchFile, readTorchFile, writeTorchFile, CorruptFileError, UnsafePickleError, UnsupportedFileError } from "./io/torch-file";
