/**
 * README's TypeScript blocks work as written. Each ```ts block is turned into a script: its
 * `./src/index` import points at this checkout, the rest runs inside an async function (the README
 * writes top-level `await`, as tslab and the REPL allow). Blocks that need Stable Diffusion
 * weights (a `loadBaseModel("<file>")` call) are illustrative here and are type-checked only; every
 * other block runs with ts-node in a fresh folder, with one change: a training run's step counts
 * are cut (maxSteps 300 → 6, batchSize 8 → 2, saveEvery/previewEvery 100 → 3) so the test stays
 * short. Afterwards the files each block promises must exist.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";

const root = path.resolve(__dirname, "..");
const readme = fs.readFileSync(path.join(root, "README.md"), "utf8");
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
const needsWeights = (b: string): boolean => /loadBaseModel\("[^"]+"/.test(b.replace(/\/\/.*$/gm, ""));

/** A README block as a script: imports first, the rest in an async function that fails the process on error. */
function toScript(block: string, shorten: boolean): string {
  const index = JSON.stringify(path.join(root, "src", "index"));
  const lines = block.split("\n");
  const imports = lines.filter((l) => /^import /.test(l)).map((l) => l.replace(/"\.\/src\/index"/, index));
  if (!imports.some((l) => l.includes("* as hn"))) imports.unshift(`import * as hn from ${index};`);
  let body = lines.filter((l) => !/^import /.test(l)).join("\n");
  if (shorten)
    body = body
      .replace(/maxSteps: 300/g, "maxSteps: 6")
      .replace(/batchSize: 8/g, "batchSize: 2")
      .replace(/(saveEvery|previewEvery): 100/g, "$1: 3");
  return `${imports.join("\n")}\nvoid hn;\n(async () => {\n${body}\n})().catch((e) => { console.error(e); process.exit(1); });\n`;
}

describe("README TypeScript blocks", () => {
  it("has the training, merging and mixing, SD 1.x and notebook blocks", () => {
    expect(blocks.length).toBe(4);
    expect(blocks.filter(needsWeights).length).toBe(1);
  });

  it("every block that needs no SD weights runs as written (training with fewer steps)", () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "hn-readme-"));
    const scripts = path.join(root, "out", "readme-snippets");
    fs.mkdirSync(scripts, { recursive: true });
    try {
      blocks.forEach((block, i) => {
        if (needsWeights(block)) return;
        const file = path.join(scripts, `block-${i + 1}.ts`);
        fs.writeFileSync(file, toScript(block, true));
        const r = spawnSync(
          process.execPath,
          [
            path.join(root, "node_modules", "ts-node", "dist", "bin.js"),
            "--transpile-only",
            "--project",
            path.join(root, "tsconfig.json"),
            file,
          ],
          {
            cwd: work,
            encoding: "utf8",
            timeout: 240_000,
            env: { ...process.env, HYPERNET_DISPLAY: "files", HYPERNET_OUTPUT_DIR: path.join(work, "display") },
          },
        );
        expect(r.status, `README block ${i + 1} failed:\n${r.stdout.slice(-1500)}\n${r.stderr.slice(-3000)}`).toBe(0);
      });
      // What the blocks promise: the training set, a checkpoint and the loss CSV; the saved network.
      expect(fs.readdirSync(path.join(work, "out", "readme", "train")).filter((f) => f.endsWith(".png")).length).toBeGreaterThanOrEqual(12);
      expect(fs.existsSync(path.join(work, "out", "readme", "run", "hypernetwork_loss.csv"))).toBe(true);
      expect(fs.readdirSync(path.join(work, "out", "readme", "run", "hypernetworks")).some((f) => /^stripes-6\.pt$/.test(f))).toBe(true);
      expect(fs.statSync(path.join(work, "out", "hypernetworks", "watery.pt")).size).toBeGreaterThan(1000);
      expect(fs.statSync(path.join(work, "out", "readme", "mix-ab.pt")).size).toBeGreaterThan(1000);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 400_000);

  it("the blocks that need SD weights type-check", () => {
    const dir = path.join(root, "out", "readme-snippets");
    fs.mkdirSync(dir, { recursive: true });
    const files = blocks.flatMap((b, i) => {
      if (!needsWeights(b)) return [];
      const file = path.join(dir, `illustrative-${i + 1}.ts`);
      fs.writeFileSync(file, toScript(b, false));
      return [file];
    });
    const tsconfig = path.join(dir, "tsconfig.json");
    fs.writeFileSync(
      tsconfig,
      JSON.stringify({ extends: path.join(root, "tsconfig.json"), compilerOptions: { noEmit: true, rootDir: root }, include: [], files }),
    );
    const r = spawnSync(process.execPath, [path.join(root, "node_modules", "typescript", "bin", "tsc"), "-p", tsconfig], {
      encoding: "utf8",
      timeout: 300_000,
    });
    // Errors in src/ that other work in progress causes are not the README's: only the blocks' own lines count.
    const own = r.stdout.split("\n").filter((l) => l.includes("illustrative-"));
    expect(own, own.join("\n")).toEqual([]);
    // A configuration error (TS5xxx/TS6xxx) would check nothing: it must not pass as "no errors".
    expect(r.stdout).not.toMatch(/error TS[56]\d{3}/);
    expect(r.error).toBeUndefined();
  }, 400_000);
});
