/**
 * src/ has no runtime import cycles. Node tolerates most of them, but the tslab kernel's module
 * loader recurses on one until "Maximum call stack size exceeded", so a cycle breaks every
 * notebook at `import * as hn`. Type-only imports are erased and do not count.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = path.resolve(__dirname, "..", "src");

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** True when an import/export statement is erased by TypeScript (`import type`, or every name `type`). */
function typeOnly(st: ts.ImportDeclaration | ts.ExportDeclaration): boolean {
  if (ts.isExportDeclaration(st)) return st.isTypeOnly;
  const clause = st.importClause;
  if (!clause) return false;
  if (clause.isTypeOnly) return true;
  const named = clause.namedBindings;
  return !clause.name && !!named && ts.isNamedImports(named) && named.elements.length > 0 && named.elements.every((e) => e.isTypeOnly);
}

/** The project files each file imports at run time. */
function runtimeGraph(files: string[]): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const f of files) {
    const sf = ts.createSourceFile(f, fs.readFileSync(f, "utf8"), ts.ScriptTarget.Latest, true);
    const deps: string[] = [];
    for (const st of sf.statements) {
      if (!(ts.isImportDeclaration(st) || ts.isExportDeclaration(st)) || !st.moduleSpecifier || !ts.isStringLiteral(st.moduleSpecifier))
        continue;
      if (typeOnly(st) || !st.moduleSpecifier.text.startsWith(".")) continue;
      const base = path.resolve(path.dirname(f), st.moduleSpecifier.text);
      const target = [`${base}.ts`, path.join(base, "index.ts")].find((p) => fs.existsSync(p));
      if (target) deps.push(target);
    }
    graph.set(f, deps);
  }
  return graph;
}

/** Every cycle found by a depth-first walk, as "a.ts -> b.ts -> a.ts". */
function findCycles(graph: Map<string, string[]>): string[] {
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const cycles: string[] = [];
  const visit = (n: string): void => {
    state.set(n, "open");
    stack.push(n);
    for (const m of graph.get(n) ?? []) {
      if (state.get(m) === "open") cycles.push([...stack.slice(stack.indexOf(m)), m].map((x) => path.relative(root, x)).join(" -> "));
      else if (!state.has(m)) visit(m);
    }
    stack.pop();
    state.set(n, "done");
  };
  for (const f of graph.keys()) if (!state.has(f)) visit(f);
  return cycles;
}

describe("import graph", () => {
  it("finds a cycle when there is one (the checker can fail)", () => {
    const g = new Map([
      [path.join(root, "a.ts"), [path.join(root, "b.ts")]],
      [path.join(root, "b.ts"), [path.join(root, "a.ts")]],
    ]);
    expect(findCycles(g)).toEqual(["a.ts -> b.ts -> a.ts"]);
  });

  it("src/ has no runtime import cycle", () => {
    expect(findCycles(runtimeGraph(sourceFiles(root)))).toEqual([]);
  });
});
