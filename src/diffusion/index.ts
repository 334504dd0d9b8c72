/** Diffusion: seeded noise, the SD 1.x schedule, σ spacings, and A1111's samplers by name (`samplerByName`). */
export * from "./random";
export * from "./schedule";
export * from "./samplers";
export * from "./sigmas";
export * from "./k-samplers";
export * from "./brownian";
export * from "./timestep-samplers";
export * from "./unipc";
export * from "./sampler-names";
