/**
 * Notebook cells are compiled by tslab's bundled TypeScript (5.0.4), not by the project's 5.9, and
 * the cells import `src/` through `src/index.ts`. A type error that only 5.0 reports (e.g. narrowing
 * that 5.0 cannot do) would otherwise surface only when a notebook runs; this runs that compiler over
 * `environment/tsconfig.tslab.json` (the kernel's module settings) and expects no diagnostics.
 */
import * as path from "node:path";
import { createRequire } from "node:module";
import { describe, expect, it } from "vitest";

/** The part of the TypeScript compiler API used here (typed locally: the 5.0 package has its own d.ts). */
interface TsApi {
  version: string;
  sys: { readFile(p: string): string | undefined };
  readConfigFile(file: string, read: (p: string) => string | undefined): { config?: unknown; error?: TsDiagnostic };
  parseJsonConfigFileContent(
    json: unknown,
    host: unknown,
    basePath: string,
    existing?: unknown,
    configFileName?: string,
  ): { fileNames: string[]; options: unknown; errors: TsDiagnostic[] };
  createProgram(o: { rootNames: string[]; options: unknown }): { getSourceFiles(): Array<{ fileName: string }> };
  getPreEmitDiagnostics(program: unknown): TsDiagnostic[];
  formatDiagnostics(
    d: readonly TsDiagnostic[],
    host: { getCurrentDirectory(): string; getCanonicalFileName(f: string): string; getNewLine(): string },
  ): string;
}
type TsDiagnostic = object;

const root = path.resolve(__dirname, "..");
const ts = createRequire(path.join(root, "package.json"))("@tslab/typescript-for-tslab") as TsApi;
const formatHost = { getCurrentDirectory: () => root, getCanonicalFileName: (f: string) => f, getNewLine: () => "\n" };

describe("tslab's TypeScript 5.0 compiles src/", () => {
  it("is the compiler tslab bundles (5.0.x)", () => {
    expect(ts.version).toMatch(/^5\.0\./);
  });

  it("reports zero diagnostics for environment/tsconfig.tslab.json (src/index.ts and all it imports)", () => {
    const configFile = path.join(root, "environment", "tsconfig.tslab.json");
    const read = ts.readConfigFile(configFile, ts.sys.readFile);
    expect(read.error, read.error && ts.formatDiagnostics([read.error], formatHost)).toBeUndefined();
    const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, path.dirname(configFile), undefined, configFile);
    expect(ts.formatDiagnostics(parsed.errors, formatHost)).toBe("");
    expect(parsed.fileNames).toEqual([path.join(root, "src", "index.ts")]);
    const program = ts.createProgram({ rootNames: parsed.fileNames, options: parsed.options });
    // The program really covers the notebook-facing code, not just the index file.
    const files = program.getSourceFiles().map((f) => path.relative(root, f.fileName));
    for (const f of [
      "src/kernel-helpers/steps.ts",
      "src/kernel-helpers/attention-maps.ts",
      "src/train/trainer.ts",
      "src/tiny/shapes-data/shapes.ts",
      "src/hypernet/file.ts",
    ])
      expect(files).toContain(f);
    expect(ts.formatDiagnostics(ts.getPreEmitDiagnostics(program), formatHost)).toBe("");
  }, 60_000);
});
