/**
 * Issue 18, class 1: a network's stored `name` (from a `.pt`, or `.safetensors` metadata) must
 * never decide where training writes, and `inspect` must never send a file's control characters to
 * the terminal. Unit checks of `safeFileStem`/`insideFolder`/`printable` against hand-worked
 * results, then real training and resume runs of the toy model with hostile names, watching every
 * file outside the run folder (sentinels placed exactly where the unsanitised paths would land).
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readHypernetworkFile, saveHypernetwork } from "../src/hypernet/file";
import { MAX_STEM_BYTES, PathEscapeError, insideFolder, printable, safeFileStem, terminalSafeJson } from "../src/io/safe-name";
import type { BaseModel } from "../src/pipeline/base-model";
import { checkpointPath, listCheckpoints, resumeTraining, train } from "../src/train";
import { runCli } from "./helpers/cli";
import { setupBackend } from "./helpers/tf";
import { type ToyBench, closeToyBench, openToyBench } from "./helpers/toy-bench";
import { makeToyNet, toyTrainOptions } from "./helpers/train-setup";

const ESC = "\u001b";
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const HOSTILE = ["../../../x", "/abs/x", `a${ESC}[31mb`, "..", "", "con", "n".repeat(300)];

describe("safeFileStem: a stored name becomes one plain file-name component", () => {
  it("gives the hand-worked stem for each hostile name and says it changed it", () => {
    // "/" → "_", ".." runs → ".", leading dots/spaces go, device names get "_", empty → fallback.
    const want: Record<string, string> = {
      "../../../x": "_._._x",
      "/abs/x": "_abs_x",
      [`a${ESC}[31mb`]: "a_[31mb",
      "..": "hypernetwork",
      "": "hypernetwork",
      con: "con_",
      ["n".repeat(300)]: "n".repeat(MAX_STEM_BYTES),
      "C:\\Windows\\x": "C__Windows_x",
      "x\u202egnp.exe": "x_gnp.exe",
      " .hidden. ": "hidden",
      "LPT1.txt": "LPT1_.txt",
      "a\u0000b": "a_b",
    };
    for (const [name, stem] of Object.entries(want)) {
      const r = safeFileStem(name);
      expect(r.stem, JSON.stringify(name)).toBe(stem);
      expect(r.changed).toBe(true);
      expect(r.problems.length).toBeGreaterThan(0);
    }
  });

  it("keeps plain names as they are, including non-ASCII and inner dots", () => {
    for (const name of ["toy", "my-style_v2.1", "Aquarelle 水彩", "a.b"])
      expect(safeFileStem(name)).toEqual({ stem: name, changed: false, problems: [] });
  });

  it("cuts long names on UTF-8 character boundaries, never splitting a character", () => {
    const r = safeFileStem("é".repeat(200)); // 2 bytes each
    expect(r.stem).toBe("é".repeat(MAX_STEM_BYTES / 2));
    const emoji = safeFileStem("a" + "😀".repeat(100)); // 4 bytes each, after one byte
    expect(Buffer.byteLength(emoji.stem)).toBeLessThanOrEqual(MAX_STEM_BYTES);
    expect(emoji.stem).toBe("a" + "😀".repeat(29)); // 1 + 29·4 = 117 ≤ 120 < 121
    expect(emoji.stem).not.toMatch(LONE_SURROGATE);
  });

  it("whatever the name, the stem is a single safe component (2,000 random names)", () => {
    let seed = 7;
    const rnd = (n: number): number => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n;
    const alphabet = [
      "a",
      ".",
      "/",
      "\\",
      "\u001b",
      "\u009b",
      ":",
      " ",
      "\u202e",
      "\ud800",
      "é",
      "😀",
      "con",
      "nul",
      "\n",
      "\u0000",
      "-",
      "_",
    ];
    for (let i = 0; i < 2000; i++) {
      const name = Array.from({ length: rnd(40) }, () => alphabet[rnd(alphabet.length)]).join("");
      const { stem } = safeFileStem(name);
      expect(stem.length).toBeGreaterThan(0);
      expect(stem).not.toMatch(/[/\\:*?"<>|\u0000-\u001f\u007f-\u009f\u202e]|\.\./);
      expect(stem).not.toMatch(/^[.\s]|[.\s]$/);
      expect(stem).not.toMatch(/^(con|prn|aux|nul|com\d|lpt\d)(\.|$)/i);
      expect(Buffer.byteLength(stem)).toBeLessThanOrEqual(MAX_STEM_BYTES);
      expect(stem).not.toMatch(LONE_SURROGATE);
      expect(path.basename(stem)).toBe(stem);
      const dir = "/run/hypernetworks";
      expect(path.dirname(path.resolve(dir, `${stem}-12.pt`))).toBe(dir);
    }
  });
});

describe("insideFolder and printable", () => {
  it("insideFolder passes paths inside the folder and throws PathEscapeError for the rest", () => {
    expect(insideFolder("/r/run", "/r/run/hypernetworks/x-1.pt")).toBe("/r/run/hypernetworks/x-1.pt");
    expect(insideFolder("/r/run", "/r/run/..x")).toBe("/r/run/..x"); // a name starting with "..", still inside
    for (const bad of ["/r/run/../x-1.pt", "/r/x", "/r/run", "/etc/passwd", "/r/run-2/x"]) {
      expect(() => insideFolder("/r/run", bad, "the checkpoint")).toThrow(PathEscapeError);
    }
    expect(() => insideFolder("/r/run", "/r/x")).toThrow(/\/r\/x, outside the folder \/r\/run; nothing was written/);
  });

  it("printable shows controls as escapes; terminalSafeJson keeps JSON valid and the string intact", () => {
    expect(printable(`a${ESC}[31mb\n\t\u009b2J\u202e`)).toBe("a\\x1b[31mb\\n\\t\\x9b2J\\u202e");
    expect(printable("plain é 水")).toBe("plain é 水");
    expect(printable("two\nlines", { keepNewlines: true })).toBe("two\nlines");
    const value = { name: `a${ESC}b\u009bc\u202ed`, n: [1, 2] };
    const json = terminalSafeJson(JSON.stringify(value, null, 2));
    expect(json).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
    expect(JSON.parse(json)).toEqual(value);
  });
});

/** Every regular file under `dir` with its SHA-256 (relative paths). */
function snapshot(dir: string, skip?: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (skip && path.resolve(p) === path.resolve(skip)) continue;
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(dir, p), createHash("sha256").update(fs.readFileSync(p)).digest("hex"));
    }
  };
  walk(dir);
  return out;
}

describe("training writes only inside logDir, whatever the network's stored name", () => {
  let base: BaseModel;
  let tmp: string;
  let dataDir: string;
  let bench: ToyBench | undefined;
  beforeAll(async () => ({ base, tmp, dataDir } = bench = await openToyBench("hn-hostile-")));
  afterAll(() => closeToyBench(bench));

  /**
   * Put a sentinel wherever the unsanitised name would have put a checkpoint, its side files or a
   * preview, when that is outside `logDir` (the old behaviour replaced such files).
   */
  const plantSentinels = (logDir: string, name: string, steps: number[]): string[] => {
    const planted: string[] = [];
    for (const step of steps) {
      const pt = path.join(logDir, "hypernetworks", `${name}-${step}.pt`);
      for (const f of [pt, `${pt}.optim`, `${pt}.state.json`, path.join(logDir, "images", `${name}-${step}.png`)]) {
        const rel = path.relative(logDir, f);
        if (!rel.startsWith("..")) continue;
        fs.mkdirSync(path.dirname(f), { recursive: true });
        fs.writeFileSync(f, `sentinel ${f}`);
        planted.push(f);
      }
    }
    return planted;
  };

  const check = (
    logDir: string,
    name: string,
    before: Map<string, string>,
    res: { warnings: string[]; lastCheckpoint?: string },
    firstStep: number,
  ): void => {
    expect(snapshot(tmp, logDir), `files outside ${logDir}`).toEqual(before);
    const stem = safeFileStem(name).stem;
    const listed = listCheckpoints(logDir);
    expect(listed.map((c) => c.file)).toEqual([firstStep, firstStep + 1].map((s) => path.join(logDir, "hypernetworks", `${stem}-${s}.pt`)));
    for (const c of listed) for (const f of [c.file, `${c.file}.optim`, `${c.file}.state.json`]) expect(fs.existsSync(f), f).toBe(true);
    expect(fs.existsSync(path.join(logDir, "images", `${stem}-${firstStep + 1}.png`))).toBe(true);
    expect(res.lastCheckpoint).toBe(listed[listed.length - 1]!.file);
    // The name inside the checkpoint is the network's own (only paths change); the warning says so.
    expect(readHypernetworkFile(res.lastCheckpoint!).info.name).toBe(name);
    const warning = res.warnings.find((w) => w.includes("is not a plain file name"));
    expect(warning, res.warnings.join("\n")).toContain(`"${stem}-<step>.pt"`);
    expect(warning).not.toContain(ESC);
  };

  it.each(HOSTILE.map((n) => [JSON.stringify(n.length > 20 ? `${n.slice(0, 8)}…(${n.length})` : n), n]))(
    "train with name %s",
    async (_label, name) => {
      const logDir = path.join(tmp, "a", "b", "c", `run-train-${HOSTILE.indexOf(name)}`);
      const planted = plantSentinels(logDir, name, [1, 2]);
      const before = snapshot(tmp, logDir);
      const net = makeToyNet();
      net.info.name = name; // as read from a downloaded file
      const res = await train(
        base,
        net,
        toyTrainOptions(dataDir, logDir, { maxSteps: 2, saveEvery: 1, previewEvery: 2, preview: { steps: 2 } }),
      ).done;
      expect(res.reason).toBe("max-steps");
      check(logDir, name, before, res, 1);
      for (const f of planted) expect(fs.readFileSync(f, "utf8")).toBe(`sentinel ${f}`);
      if (name === "../../../x") expect(planted.length).toBeGreaterThan(0);
      net.dispose();
    },
    60_000,
  );

  it.each([".pt", ".safetensors"])(
    "resume from a %s whose stored name is ../../../x",
    async (ext) => {
      const name = "../../../x";
      const src = path.join(tmp, `evil-src${ext.replace(".", "-")}`);
      fs.mkdirSync(src, { recursive: true });
      const file = path.join(src, `evil${ext}`);
      const net = makeToyNet();
      net.info.name = name;
      net.info.step = 3;
      saveHypernetwork(net, file);
      net.dispose();
      expect(readHypernetworkFile(file).info.name).toBe(name);
      const logDir = path.join(tmp, "p", "q", "r", `run-resume${ext}`);
      const planted = plantSentinels(logDir, name, [4, 5]);
      expect(planted.length).toBeGreaterThan(0);
      const before = snapshot(tmp, logDir);
      const run = resumeTraining(
        base,
        file,
        toyTrainOptions(dataDir, logDir, { maxSteps: 5, saveEvery: 1, previewEvery: 5, preview: { steps: 2 } }),
      );
      const res = await run.done;
      run.network.dispose();
      expect(res.reason).toBe("max-steps");
      check(logDir, name, before, res, 4);
      for (const f of planted) expect(fs.readFileSync(f, "utf8")).toBe(`sentinel ${f}`);
    },
    60_000,
  );

  it("the default run folder (no logDir) is textual_inversion/<date>/<stem>, inside the working folder", async () => {
    const cwd = process.cwd();
    const work = path.join(tmp, "cwd");
    fs.mkdirSync(work);
    const sentinel = path.join(tmp, "x-1.pt");
    fs.writeFileSync(sentinel, "sentinel");
    process.chdir(work);
    try {
      const net = makeToyNet();
      net.info.name = "../../../x";
      const res = await train(base, net, toyTrainOptions(dataDir, "", { logDir: undefined, maxSteps: 1, saveEvery: 1 })).done;
      net.dispose();
      expect(path.dirname(path.dirname(res.logDir))).toBe("textual_inversion");
      expect(path.basename(res.logDir)).toBe("_._._x");
      expect(fs.existsSync(path.join(work, res.logDir, "hypernetworks", "_._._x-1.pt"))).toBe(true);
    } finally {
      process.chdir(cwd);
    }
    expect(fs.readFileSync(sentinel, "utf8")).toBe("sentinel");
  }, 60_000);

  it("checkpointPath sanitises the name and stays inside <logDir>/hypernetworks", () => {
    for (const name of HOSTILE) {
      const f = checkpointPath("/runs/r", name, 7);
      expect(path.dirname(f)).toBe(path.join("/runs/r", "hypernetworks"));
      expect(path.basename(f)).toBe(`${safeFileStem(name).stem}-7.pt`);
    }
  });
});

describe("inspect prints no terminal escapes from a file", () => {
  /** Capture console output of one in-process CLI call. */
  const run = runCli;

  it("text and --json output of a network named with escape sequences", async () => {
    await setupBackend();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hn-inspect-esc-"));
    try {
      const name = `a${ESC}[31mb${ESC}]0;title\u0007\u009b2J\u202e`;
      const info = `line1\nstep 999999\r${ESC}[2K`;
      for (const ext of [".pt", ".safetensors"]) {
        const file = path.join(dir, `esc${ext}`);
        const net = makeToyNet();
        net.info.name = name;
        net.info.optionalInfo = info;
        saveHypernetwork(net, file);
        net.dispose();
        const text = await run(["inspect", file]);
        expect(text.code).toBe(0);
        expect(text.out).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
        expect(text.out).toContain("a\\x1b[31mb\\x1b]0;title\\x07\\x9b2J\\u202e");
        // the optional info's line break is shown, not obeyed: no line of its own starts with "step 999999"
        expect(text.out.split("\n").some((l) => l.startsWith("step 999999"))).toBe(false);
        const json = await run(["inspect", file, "--json"]);
        expect(json.out).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
        const parsed = JSON.parse(json.out) as { name: string; optional_info: string };
        expect(parsed.name).toBe(name);
        expect(parsed.optional_info).toBe(info);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
