/**
 * `npm run check-size` (part of `npm test`): the house rule that keeps src/ readable — no file
 * over 500 lines and no function over 120 lines, with one named exception, the pickle opcode
 * interpreter (one switch over the opcodes reads best as one function). Prints each offender with
 * its length and exits 1 if there is any.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import ts from "typescript";

const MAX_FILE_LINES = 500;
const MAX_FUNCTION_LINES = 120;
/** `file:function` pairs allowed past the function limit, and why. */
const EXCEPTIONS: Record<string, string> = {
  "src/io/pickle.ts:unpickle": "the pickle opcode interpreter: one case per opcode",
};
const FILE_EXCEPTIONS: Record<string, string> = {
  "src/io/pickle.ts": "the pickle opcode interpreter and its safe globals",
};

const root = path.resolve(__dirname, "..");

function* tsFiles(dir: string): Generator<string> {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* tsFiles(p);
    else if (e.name.endsWith(".ts")) yield p;
  }
}

/** A readable name for a function-like node: its own name, or the variable/property it is assigned to. */
function nameOf(node: ts.Node): string {
  const named = node as ts.Node & { name?: ts.Node };
  if (named.name && ts.isIdentifier(named.name)) return named.name.text;
  const parent = node.parent;
  if (
    parent &&
    (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)) &&
    ts.isIdentifier(parent.name)
  ) {
    return parent.name.text;
  }
  return "(anonymous)";
}

const problems: string[] = [];
for (const file of tsFiles(path.join(root, "src"))) {
  const rel = path.relative(root, file).split(path.sep).join("/");
  const text = fs.readFileSync(file, "utf8");
  const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
  if (lines > MAX_FILE_LINES && !FILE_EXCEPTIONS[rel]) problems.push(`${rel}: ${lines} lines (at most ${MAX_FILE_LINES})`);
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && (node as ts.FunctionLikeDeclaration).body) {
      const start = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const end = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
      const n = end - start + 1;
      const name = nameOf(node);
      if (n > MAX_FUNCTION_LINES && !EXCEPTIONS[`${rel}:${name}`])
        problems.push(`${rel}:${start + 1} function ${name}: ${n} lines (at most ${MAX_FUNCTION_LINES})`);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
}

if (problems.length) {
  console.error(`check-size: ${problems.length} over the limits:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(
  `check-size: every file in src/ is at most ${MAX_FILE_LINES} lines and every function at most ${MAX_FUNCTION_LINES} (pickle interpreter excepted)`,
);
