import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { closeMatches, listHypernetworks, parsePrompt, resolveHypernetwork } from "../src/hypernet/prompt";

describe("prompt tags (spec §3.4)", () => {
  it("extracts hypernet tags in order with default and explicit multipliers", () => {
    const r = parsePrompt("a boy <hypernet:watery:0.8> running <hypernet:ink style> on water");
    expect(r.hypernets).toEqual([
      { name: "watery", multiplier: 0.8 },
      { name: "ink style", multiplier: 1 },
    ]);
    expect(r.prompt).toBe("a boy  running  on water");
    expect(r.ignored).toEqual([]);
  });
  it("accepts negative and large multipliers, and a default multiplier", () => {
    expect(parsePrompt("<hypernet:a:-1.5><hypernet:b:10>").hypernets.map((h) => h.multiplier)).toEqual([-1.5, 10]);
    expect(parsePrompt("<hypernet:a>", 0.6).hypernets[0]!.multiplier).toBe(0.6);
  });
  it("removes other extra-network tags and comment lines, reporting the tags", () => {
    const r = parsePrompt("# a note\ncat <lora:thing:1> <hypernet:x:0.5>\n  # indented comment\ndog");
    expect(r.prompt).toBe("cat  \ndog");
    expect(r.ignored).toEqual(["<lora:thing:1>"]);
    expect(r.hypernets).toEqual([{ name: "x", multiplier: 0.5 }]);
  });
  it("a malformed multiplier is an error, not a silent default", () => {
    expect(() => parsePrompt("<hypernet:x:strong>")).toThrow(/multiplier "strong" is not a number/);
  });
  it("the same name twice is applied twice (stacked), as listed", () => {
    expect(parsePrompt("<hypernet:x:1> <hypernet:x:0.5>").hypernets).toHaveLength(2);
  });
});

describe("resolving names in a folder (spec §3.5)", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hnfolder-"));
  for (const f of ["watery.pt", "sub/Ink.pt", "sub/deep/anime-v2.safetensors", "None.pt", "notes.txt"]) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), "");
  }
  it("lists recursively by basename, skipping None and non-network files", () => {
    expect([...listHypernetworks(dir).keys()].sort()).toEqual(["Ink", "anime-v2", "watery"]);
  });
  it("exact, case-sensitive lookup", () => {
    expect(resolveHypernetwork("Ink", dir)).toBe(path.join(dir, "sub/Ink.pt"));
    expect(() => resolveHypernetwork("ink", dir)).toThrow(/no hypernetwork named "ink".*Did you mean "Ink"/);
  });
  it("unknown names list close matches instead of being skipped", () => {
    expect(() => resolveHypernetwork("watry", dir)).toThrow(/Did you mean "watery"/);
    expect(closeMatches("anime", ["anime-v2", "watery", "Ink"])).toEqual(["anime-v2"]);
    expect(() => resolveHypernetwork("x", path.join(dir, "nope"))).toThrow(/does not exist/);
  });
});
