import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { main, parseArgs } from "../src/cli/main";
import { readHypernetworkFile } from "../src/hypernet/file";
import { readSafetensors, writeSafetensors } from "../src/io/safetensors";
import { expectClose, fixture } from "./helpers/tf";

const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), "hncli-"));

/** Capture console output of one CLI call made in-process. */
async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    const code = await main(argv);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

describe("hypernet CLI", () => {
  it("parses flags", () => {
    expect(parseArgs(["a", "--json", "--input", "x", "--multiplier=0.5"])).toEqual({
      positional: ["a"],
      flags: new Map<string, string | true>([
        ["json", true],
        ["input", "x"],
        ["multiplier", "0.5"],
      ]),
    });
  });

  it("inspect --json reports structure and counts", async () => {
    const r = await run(["inspect", fixture("hn-relu-ln-drop.pt"), "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as Record<string, unknown>;
    expect(j.format).toBe("a1111");
    expect(j.dims).toEqual([32]);
    expect(j.activation).toBe("relu");
    expect(j.layer_norm).toBe(true);
    expect(j.size_bytes).toBe(fs.statSync(fixture("hn-relu-ln-drop.pt")).size);
    // count parameters from the tensors themselves
    const hf = readHypernetworkFile(fixture("hn-relu-ln-drop.pt"));
    let n = 0;
    for (const pair of hf.weights.values()) for (const sd of pair) for (const t of sd.values()) n += t.data.length;
    expect(j.parameters).toBe(n);
    const text = await run(["inspect", fixture("hn-legacy-nai.pt")]);
    expect(text.out).toMatch(/format\s+novelai-legacy/);
  });

  it("convert .pt → .safetensors → .pt keeps every tensor and key", async () => {
    const dir = tmp();
    const st = path.join(dir, "a.safetensors");
    const pt = path.join(dir, "a.pt");
    expect((await run(["convert", fixture("hn-swish-actout.pt"), st])).code).toBe(0);
    expect((await run(["convert", st, pt])).code).toBe(0);
    const a = readHypernetworkFile(fixture("hn-swish-actout.pt"));
    const b = readHypernetworkFile(pt);
    expect(b.info).toEqual(a.info);
    for (const [dim, pair] of a.weights)
      pair.forEach((sd, j) => sd.forEach((t, k) => expect([...b.weights.get(dim)![j].get(k)!.data]).toEqual([...t.data])));
    const again = await run(["convert", st, pt]);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/already exists.*--overwrite/);
  });

  it("apply reproduces PyTorch's k/v outputs from the fixture", async () => {
    const dir = tmp();
    const io = readSafetensors(fixture("hn-plain121.io.safetensors")).tensors;
    const input = path.join(dir, "in.safetensors");
    writeSafetensors(input, [
      ["x.24", io.get("x.24")!],
      ["x.40", io.get("x.40")!],
    ]);
    const output = path.join(dir, "out.safetensors");
    process.env.HYPERNET_BACKEND = "cpu";
    const r = await run(["apply", fixture("hn-plain121.pt"), "--input", input, "--output", output, "--multiplier", "0.6"]);
    delete process.env.HYPERNET_BACKEND;
    expect(r.code, r.err).toBe(0);
    const out = readSafetensors(output).tensors;
    for (const k of ["k.24", "v.24", "k.40", "v.40"]) expectClose(out.get(k)!.data, io.get(`${k}.0.6`)!.data, 1e-5);
  });

  it("usage errors exit 2, file errors exit 1 with the file named", async () => {
    expect((await run(["frobnicate"])).code).toBe(2);
    expect((await run(["inspect"])).code).toBe(2);
    const r = await run(["inspect", "/nonexistent/x.pt"]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/\/nonexistent\/x\.pt: no such file/);
    // A dtype named like an Object.prototype member is a usage error, not a function used as a dtype.
    for (const bad of ["constructor", "toString", "__proto__"]) {
      const c = await run(["convert", fixture("hn-half.pt"), path.join(os.tmpdir(), `never-${bad}.safetensors`), "--dtype", bad]);
      expect(c.code).toBe(2);
      expect(c.err).toMatch(new RegExp(`--dtype ${bad}: use f32, f16 or bf16`));
    }
  });

  it("the installed bin runs (npx hypernet)", () => {
    const r = spawnSync(process.execPath, [path.join(__dirname, "..", "bin", "hypernet.js"), "inspect", fixture("hn-half.pt"), "--json"], {
      encoding: "utf8",
    });
    expect(r.status, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { dtype: string }).dtype).toBe("F16");
  });
});
