/** Training a hypernetwork: the loop with A1111's options, AdamW, schedules, checkpoints and resume. */
export * from "./lr-schedule";
export * from "./adamw";
export * from "./grad-norm";
export * from "./trainer";
export { ValidationBatch, perSampleLoss, stratifiedTimesteps, type ValidationOptions } from "./validation";
export * from "./module-norms";
export * from "./timestep-loss";
export * from "./lr-range";
export * from "./gallery";
export { formatDuration, progressLine, progressPrinter, type ProgressPrinter } from "./progress";
