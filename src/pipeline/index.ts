/** The base model and what runs on it: loading SD 1.x checkpoints, text-to-image. */
export * from "./base-model";
export * from "./load";
export * from "./txt2img";
export * from "./sample";
