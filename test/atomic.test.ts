import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { removeStaleTempFiles, writeFileAtomic } from "../src/io/atomic";

describe("atomic writes", () => {
  it("temp files of dead processes are removed; live ones, our own and other files are kept", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "atomic-"));
    // a pid that has exited: run a process and take its pid after it ends
    const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout;
    const names = [
      `.a.pt.${dead}.1700000000000.tmp`,
      `.b.pt.${process.pid}.1700000000000.tmp`,
      `.c.pt.1.1700000000000.tmp`,
      "a.pt",
      ".a.pt.tmp",
    ];
    for (const n of names) fs.writeFileSync(path.join(dir, n), "x");
    // pid 1 is always running here (init), so its file stays
    expect(removeStaleTempFiles(dir)).toEqual([`.a.pt.${dead}.1700000000000.tmp`]);
    expect(fs.readdirSync(dir).sort()).toEqual(names.slice(1).sort());
  });

  it("writes chunks in order and leaves no temp file", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "atomic-"));
    const f = path.join(dir, "x.bin");
    writeFileAtomic(f, [Buffer.from("ab"), new Uint8Array([99, 100])]);
    expect(fs.readFileSync(f, "utf8")).toBe("abcd");
    expect(fs.readdirSync(dir)).toEqual(["x.bin"]);
  });
});
