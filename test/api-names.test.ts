/**
 * Every `hn.<name>` the notebooks and the READMEs use is exported by `src/index.ts` — values and
 * types alike, through the namespaces (`hn.core.attachHypernetworks`, `hn.CreateOptions`). Running
 * the notebooks (`npm run test:notebooks`) catches a renamed export too, but takes minutes; this
 * reads the exports with the TypeScript checker in seconds.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = path.resolve(__dirname, "..");

/** The code a reader copies: notebook code cells and ```ts blocks of the Markdown docs. */
function codeSources(): Array<{ where: string; code: string }> {
  const out: Array<{ where: string; code: string }> = [];
  const nbDir = path.join(root, "notebooks");
  for (const f of fs
    .readdirSync(nbDir)
    .filter((n) => n.endsWith(".ipynb"))
    .sort()) {
    const nb = JSON.parse(fs.readFileSync(path.join(nbDir, f), "utf8")) as {
      cells: Array<{ cell_type: string; source: string[] | string }>;
    };
    nb.cells.forEach((c, i) => {
      if (c.cell_type === "code")
        out.push({ where: `notebooks/${f} cell ${i}`, code: Array.isArray(c.source) ? c.source.join("") : c.source });
    });
  }
  for (const md of ["README.md", "environment/README.md"]) {
    const text = fs.readFileSync(path.join(root, md), "utf8");
    for (const m of text.matchAll(/```(?:ts|typescript)\n([\s\S]*?)```/g)) out.push({ where: md, code: m[1]! });
  }
  return out;
}

/** `hn.a.b.c` chains in `code` (strings and comments included: a doc comment's `hn.x` must exist too). */
function hnChains(code: string): string[][] {
  return [...code.matchAll(/(?<![\w$.])hn\.([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)/g)].map((m) => m[1]!.split("."));
}

describe("hn.* names used by the notebooks and READMEs", () => {
  it("finds the chains in code (a hand-made example)", () => {
    expect(
      hnChains("await hn.useBackend(); const o: hn.CreateOptions = x; hn.core.ACTIVATION_NAMES.join(', '); foo.hn.no(); myhn.x"),
    ).toEqual([["useBackend"], ["CreateOptions"], ["core", "ACTIVATION_NAMES", "join"]]);
  });

  it("are all exported by src/index.ts", () => {
    const program = ts.createProgram({
      rootNames: [path.join(root, "src", "index.ts")],
      options: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, strict: true, esModuleInterop: true, types: ["node"] },
    });
    const checker = program.getTypeChecker();
    const index = checker.getSymbolAtLocation(program.getSourceFile(path.join(root, "src", "index.ts"))!)!;
    const resolve = (s: ts.Symbol): ts.Symbol => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s);
    const isModule = (s: ts.Symbol): boolean =>
      (s.flags & ts.SymbolFlags.ValueModule) !== 0 && s.valueDeclaration !== undefined && ts.isSourceFile(s.valueDeclaration);

    const sources = codeSources();
    expect(sources.filter((s) => s.where.startsWith("notebooks/")).length).toBeGreaterThan(20);
    const missing: string[] = [];
    let checked = 0;
    for (const { where, code } of sources) {
      for (const chain of hnChains(code)) {
        // Walk the namespaces; the first name that is not a module is the export to check, the rest are its members.
        let module = index;
        for (let i = 0; i < chain.length; i++) {
          const found = checker.getExportsOfModule(module).find((e) => e.name === chain[i]);
          if (!found) {
            missing.push(`${where}: hn.${chain.slice(0, i + 1).join(".")}`);
            break;
          }
          checked++;
          const target = resolve(found);
          if (!isModule(target)) break;
          module = target;
        }
      }
    }
    expect(missing).toEqual([]);
    expect(checked).toBeGreaterThan(40);
  }, 60_000);
});
