/**
 * `hn.core`: the library the notebook verbs are made of — hypernetworks and their files, the UNet,
 * base models and txt2img, training, file formats, the backend report. Nothing here displays
 * anything; each function returns its result. Several verbs share a name with the function here
 * that does their work (`hn.loadBaseModel` shows what `hn.core.loadBaseModel` loaded).
 *
 * The other library namespaces sit beside it: `hn.diffusion` (noise, schedule, samplers),
 * `hn.data` (preprocessing and the training dataset), `hn.text` (tokenizers, CLIP), `hn.vae`.
 */

// Hypernetworks: the network, its modules, attaching, files, prompt tags.
export { createHypernetwork, Hypernetwork, DEFAULT_DIMS, type CreateOptions, type HypernetworkInfo } from "./hypernet/network";
export { HypernetworkModule, planLayers, WEIGHT_INITS, ZERO_AT_ZERO, type InitOptions, type WeightInit } from "./hypernet/module";
export { ACTIVATION_NAMES, COMFYUI_ACTIVATIONS, type ActivationName } from "./hypernet/activations";
export {
  attachHypernetworks,
  applyStack,
  stackEntries,
  Attachment,
  type StackEntry,
  type StackItem,
  type ParallelGroup,
  type ParallelGroupInput,
  type ParallelMember,
} from "./hypernet/attach";
export { rampAt, type Strengths, type TimestepRamp } from "./hypernet/strengths";
export {
  mergeHypernetworkFiles,
  mergeHypernetworkData,
  mergeHypernetworks,
  structureMismatch,
  type MergeInput,
  type MergeOptions,
} from "./hypernet/merge";
export {
  loadHypernetwork,
  saveHypernetwork,
  readHypernetworkFile,
  writeHypernetworkFile,
  type HypernetworkFile,
  type SaveOptions,
} from "./hypernet/file";
export { readOptimizerFile, writeOptimizerFile } from "./hypernet/optim-file";
export {
  loadHypernetworkSequence,
  parseHypernetworkSequence,
  sequenceToStack,
  sequenceNetworkNames,
  HnsError,
  type HnsNode,
  type HypernetworkSequence,
} from "./hypernet/hns";
export { planResBlocks, type ResBlockPlan } from "./hypernet/resblock";
export { parsePrompt, listHypernetworks, resolveHypernetwork, type HypernetTag, type ParsedPrompt } from "./hypernet/prompt";
export {
  resolvePromptHypernetworks,
  clearHypernetworkCache,
  type AppliedHypernetwork,
  type PromptHypernetwork,
} from "./hypernet/prompt-networks";

// The UNet: model, configs, weights, the attention-processor hook.
export { UNetModel } from "./unet/unet";
export { SD15_UNET, TINY_LATENT_UNET, fromJson as unetConfigFromJson, type UNetConfig } from "./unet/config";
export { loadUNetWeights } from "./unet/load";
export { inferUNetConfig } from "./unet/infer-config";
export { type AttentionProcessor, defaultProcessor, attend, CrossAttention } from "./unet/attention";

// Base models and text-to-image.
export { BaseModel, type BaseModelParts } from "./pipeline/base-model";
export { loadBaseModel, LoadedBaseModel, type LoadBaseModelOptions, type BaseModelLoadReport } from "./pipeline/load";
export { txt2img, type Txt2ImgOptions, type Txt2ImgResult } from "./pipeline/txt2img";
// A1111 infotexts (the PNG "parameters" text) both ways, and textual-inversion embeddings.
export { formatInfotext, parseGenerationParameters, quoteInfotext, type InfotextParams, type InfotextValue } from "./pipeline/infotext";
export {
  readInfotext,
  settingsFromParameters,
  type InfotextSettings,
  type ReadInfotext,
  type ReadInfotextOptions,
} from "./pipeline/infotext-read";
export {
  loadEmbeddings,
  readEmbeddingFile,
  EmbeddingDatabase,
  type TextualInversionEmbedding,
  type EmbeddingProblem,
} from "./text/embeddings";
export { encodePrompts, type EncodePromptsOptions, type EncodedPrompts } from "./text/encode-prompts";
export { sampleImages, type SampleImagesOptions, type SampledImages } from "./pipeline/sample";
export { loadTinyModel } from "./tiny/model";
export { writeStripedSet, stripedSet, writeSampleFolder } from "./tiny/shapes-data/image-folder";

// Training.
export { train, resumeTraining, type TrainOptions, type TrainResult, type TrainingRun, type StopReason } from "./train/trainer";
export { parseSchedule, Schedule, ScheduleError } from "./train/lr-schedule";
export { LearningRatePlan, cycleOf, type CosineRestarts, type CyclePosition, type SchedulerConfig } from "./train/lr-scheduler";
export { diffusionLoss, minSnrWeights, offsetNoise, type Prediction } from "./train/loss";
export { captionEncoder, type CaptionSyntax } from "./train/captions";
export { AdamW } from "./train/adamw";
export type { OptimizerState } from "./train/optimizer-state";
// Training tools: validation loss on a fixed batch, module norms, loss by timestep, the LR range test, the checkpoint gallery.
export { ValidationBatch, perSampleLoss, type ValidationOptions } from "./train/validation";
export { gradientNormsByModule, outputNormsByModule, parameterModules } from "./train/module-norms";
export { timestepLossBins, timestepLossOverRun, type TimestepBin } from "./train/timestep-loss";
export {
  lrRangeTest,
  suggestLearningRate,
  sweepRates,
  type LrRangeOptions,
  type LrRangePoint,
  type LrRangeResult,
  type LrSuggestion,
} from "./train/lr-range";
export { checkpointGallery, type GalleryColumn, type GalleryOptions, type GalleryResult } from "./train/gallery";
export type { ValidationEvent, ValidationSample, NormsEvent } from "./train/events";

// Files.
export { SafetensorsFile, readSafetensors, writeSafetensors } from "./io/safetensors";
export { openTorchFile, readTorchFile, writeTorchFile, CorruptFileError, UnsafePickleError, UnsupportedFileError } from "./io/torch-file";
export { shortHash } from "./io/hash";
export { addPngText, readPngText } from "./io/png-text";

// The backend report (`hn.useBackend` chooses the backend).
export { formatBackendReport } from "./backend/backend";
export { doctorReport } from "./backend/doctor";
