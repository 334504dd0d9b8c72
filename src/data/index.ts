/** Data: preprocessing image folders, captions and prompt templates, the training dataset, and views. */
export * from "./crops";
export * from "./autocrop";
export * from "./captions";
export * from "./images";
export * from "./preprocess";
export * from "./view";
export * from "./templates";
export * from "./dataset";
