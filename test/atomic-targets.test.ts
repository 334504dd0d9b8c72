/**
 * Where an atomic write lands and how it fails: names as long as the file system allows, names
 * longer than that, a path through a file, a folder or a dangling symbolic link at the target.
 * Every error names the user's target, never the temp file, and says what to do.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { FileExistsError, removeStaleTempFiles, tempFileFor, writeFileAtomic } from "../src/io/atomic";

const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), "atomic-targets-"));

/** Run `fn` expecting an Error; return its message. */
function messageOf(fn: () => void): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error("expected an error");
}

describe("atomic writes: targets", () => {
  it("a name of 250 bytes, which the file system accepts, is written (the temp name no longer outgrows it)", () => {
    const dir = tmp();
    const name = `${"n".repeat(247)}.pt`; // 250 bytes
    fs.writeFileSync(path.join(dir, "probe-" + "p".repeat(244)), "x"); // proof that 250-byte names fit here
    writeFileAtomic(path.join(dir, name), [Buffer.from("abc")]);
    expect(fs.readFileSync(path.join(dir, name), "utf8")).toBe("abc");
    expect(fs.readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    // multi-byte names too: 84 three-byte characters = 252 bytes
    const wide = "字".repeat(84);
    writeFileAtomic(path.join(dir, wide), [Buffer.from("w")]);
    expect(fs.readFileSync(path.join(dir, wide), "utf8")).toBe("w");
  });

  it("temp names are short, unique per call, and recognised by the stale-file cleanup", () => {
    const long = path.join(tmp(), `${"é".repeat(120)}.safetensors`);
    const names = new Set<string>();
    for (let i = 0; i < 50; i++) names.add(path.basename(tempFileFor(long)));
    expect(names.size).toBe(50);
    for (const n of names) {
      expect(Buffer.byteLength(n)).toBeLessThanOrEqual(64);
      expect(n).toMatch(new RegExp(`^\\.${"é".repeat(12)}\\.${process.pid}\\.\\d+\\.tmp$`));
    }
    // one such file of a process that has exited is removed by the cleanup the trainer and convert share
    const dir = path.dirname(long);
    const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout;
    const stale = path.basename(tempFileFor(long)).replace(`.${process.pid}.`, `.${dead}.`);
    fs.writeFileSync(path.join(dir, stale), "half a file");
    expect(removeStaleTempFiles(dir)).toEqual([stale]);
  });

  it("several targets sharing their first bytes, written in a quick loop, all succeed", () => {
    const dir = tmp();
    for (let i = 0; i < 30; i++)
      writeFileAtomic(path.join(dir, `a-very-long-common-prefix-for-checkpoints-${i}.pt`), [Buffer.from(String(i))]);
    expect(fs.readdirSync(dir).length).toBe(30);
  });

  it("a name over 255 bytes: the error names the target, says the limit, and leaves nothing behind", () => {
    const dir = tmp();
    const target = path.join(dir, `${"x".repeat(300)}.pt`);
    const msg = messageOf(() => writeFileAtomic(target, [Buffer.from("a")]));
    expect(msg).toContain(`file name too long: ${target} (255 bytes max per name on this file system`);
    expect(msg).toContain("has 303");
    expect(msg).not.toMatch(/\.tmp/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("a path through a file (ENOTDIR): names the target and the file in the way", () => {
    const dir = tmp();
    fs.writeFileSync(path.join(dir, "afile"), "x");
    const target = path.join(dir, "afile", "sub", "x.pt");
    const msg = messageOf(() => writeFileAtomic(target, [Buffer.from("a")]));
    expect(msg).toContain(target);
    expect(msg).toContain(`${path.join(dir, "afile")} is a file, not a folder`);
    expect(msg).not.toMatch(/\.tmp/);
  });

  it("a folder at the target is refused even with overwrite", () => {
    const dir = tmp();
    fs.mkdirSync(path.join(dir, "x.pt"));
    expect(messageOf(() => writeFileAtomic(path.join(dir, "x.pt"), [Buffer.from("a")], { overwrite: true }))).toMatch(
      /x\.pt is a folder; give the name of a file/,
    );
  });

  it("a dangling symbolic link is replaced only with overwrite, and its target is never created", () => {
    const dir = tmp();
    const link = path.join(dir, "out.safetensors");
    const pointsTo = path.join(dir, "elsewhere", "missing.bin");
    fs.symlinkSync(pointsTo, link);
    let caught: unknown;
    try {
      writeFileAtomic(link, [Buffer.from("new")]);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(FileExistsError);
    expect((caught as Error).message).toContain(`${link} is a symbolic link to ${pointsTo}, which does not exist`);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    writeFileAtomic(link, [Buffer.from("new")], { overwrite: true });
    expect(fs.lstatSync(link).isFile()).toBe(true);
    expect(fs.readFileSync(link, "utf8")).toBe("new");
    expect(fs.existsSync(pointsTo)).toBe(false);
  });
});
