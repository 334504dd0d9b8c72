/** Text side of SD: tokenizers and the CLIP text encoder. */
export * from "./tokenizer";
export * from "./clip";
export * from "./load";
export * from "./embeddings";
export * from "./encode-prompts";
