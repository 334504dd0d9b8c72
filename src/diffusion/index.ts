/** Diffusion: seeded noise, the SD 1.x schedule, and the samplers (DDIM, Euler a, Euler). */
export * from "./random";
export * from "./schedule";
export * from "./samplers";
