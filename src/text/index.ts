/** Text side of SD: tokenizers and the CLIP text encoder. */
export * from "./tokenizer";
export * from "./clip";
export * from "./load";
export * from "./embeddings";
export * from "./encode-prompts";
// AUTOMATIC1111's prompt syntax: emphasis, prompt editing and alternation, AND, 75-token chunks.
export { parsePromptAttention, isBreak, type WeightedText } from "./prompt-attention";
export {
  promptSchedules,
  scheduleIndexAt,
  multicondPromptList,
  type ScheduleEntry,
  type ScheduleOptions,
  type MulticondPrompts,
} from "./prompt-schedule";
export {
  tokenizeLine,
  chunkBatch,
  emptyChunk,
  applyEmphasis,
  applyEmphasisTensor,
  type EmphasisMode,
  type ChunkOptions,
  type PromptChunk,
  type EmbeddingMatch,
} from "./prompt-chunks";
