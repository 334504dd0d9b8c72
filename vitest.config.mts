import { defineConfig } from "vitest/config";

// Tests run in forked processes: tfjs keeps global backend state, and the wasm backend
// must be initialised once per process.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
