/**
 * Issue 21's entry points are exported from src/index.ts under the names the issue gives —
 * `a1111Rng`, `randn`, `parsePromptAttention`, `samplerByName` — and work from there: A1111's NV
 * noise for seed 0, shape (3, 4) (rng_philox.py's docstring and the fixture of the real code),
 * A1111's parse of an emphasised prompt, and a sampler by A1111's legacy name with its float32
 * Karras list (test/fixtures/sigma-lists.json, from torch).
 */
import * as fs from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import * as hn from "../src/index";
import { fixture, setupBackend } from "./helpers/tf";

beforeAll(setupBackend);

describe("the A1111 entry points of src/index.ts", () => {
  it("a1111Rng + randn: A1111's NV noise for seed 0, shape (3, 4)", async () => {
    const FX = JSON.parse(fs.readFileSync(fixture("a1111-rng.json"), "utf8")) as { nv: { docstring: { values: string } } };
    const bytes = Buffer.from(FX.nv.docstring.values, "base64");
    const want = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    const t = hn.randn([3, 4], hn.a1111Rng(0, "NV"));
    expect(t.shape).toEqual([3, 4]);
    expect(Array.from(await t.data())).toEqual(Array.from(want));
    t.dispose();
  });

  it("parsePromptAttention: A1111's runs and weights", () => {
    expect(hn.parsePromptAttention("a (red:1.3) [cat]")).toEqual([
      ["a ", 1],
      ["red", 1.3],
      [" ", 1],
      ["cat", 1 / 1.1],
    ]);
  });

  it("samplerByName: the legacy name 'DPM++ 2M Karras' with A1111's float32 Karras list", () => {
    const FX = JSON.parse(fs.readFileSync(fixture("sigma-lists.json"), "utf8")) as {
      lists: { schedule: string; steps: number; discard: boolean; sigmas: number[] }[];
    };
    const want = FX.lists.find((c) => c.schedule === "karras" && c.steps === 20 && !c.discard)!.sigmas;
    expect(Array.from(hn.samplerByName("DPM++ 2M Karras", { steps: 20 }).sigmas()!)).toEqual(want);
  });
});
