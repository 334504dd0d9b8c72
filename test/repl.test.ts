/**
 * `npm run repl` in a pseudo-terminal (util-linux `script`), as a person starts it: the backend
 * must be wasm, not the pure-JS cpu fallback that Node's REPL forced when wasm was initialised from
 * a REPL line, and `useBackend()` typed at the prompt echoes one line, not the whole report again.
 */
import { spawn } from "node:child_process";
import * as path from "node:path";
import { describe, expect, it } from "vitest";

const root = path.resolve(__dirname, "..");

/** Run the REPL under a pty, type `lines` once the prompt appears, return everything it printed. */
function runRepl(lines: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const { HYPERNET_BACKEND: _ignored, ...rest } = process.env;
    const env = { ...rest, TERM: "dumb" };
    const child = spawn("script", ["-qfec", "npx ts-node --transpile-only environment/repl.ts", "/dev/null"], { cwd: root, env });
    let out = "";
    let typed = false;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`REPL did not finish within 90 s; output so far:\n${out}`));
    }, 90_000);
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString("utf8");
      if (!typed && out.includes("hn> ")) {
        typed = true;
        child.stdin.write([...lines, ".exit"].join("\r") + "\r");
      }
    });
    child.on("close", () => {
      clearTimeout(timer);
      resolve(out);
    });
    child.on("error", reject);
  });
}

describe("npm run repl", () => {
  it("starts on the wasm backend and shows useBackend's result in one line", async () => {
    const out = await runRepl(["await hn.useBackend({ quiet: true })"]);
    expect(out).toMatch(/tfjs backend: wasm — CPU \(wasm/);
    expect(out).not.toMatch(/skipped wasm/);
    expect(out).toMatch(/BackendReport \{ wasm: CPU \(wasm/);
    expect(out).not.toMatch(/tfjsBackend:/); // the report object is not dumped
  }, 100_000);
});
