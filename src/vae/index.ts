/** SD's autoencoder (AutoencoderKL): blocks, model, loading. */
export * from "./blocks";
export * from "./autoencoder";
export * from "./load";
