/**
 * Hypernetwork files that used to load wrongly or lose data, and `convert`'s promises:
 * - widths written two ways (`8.*` and `08.*`) or one weight named twice (NovelAI's and A1111's
 *   spelling) are refused, naming both keys, instead of one silently replacing the other;
 * - `.pt` → `.safetensors` → `.pt` keeps every top-level key A1111 does not interpret, type for
 *   type (checked against torch.load of the original when PyTorch is installed);
 * - steps that a float64 cannot hold, or that are not whole numbers, are refused, never rounded;
 * - NaN/Inf weights load with one warning that names each tensor;
 * - `convert` replaces a dangling symbolic link only with --overwrite, removes temp files an
 *   interrupted write left, and reports over-long names by the user's path.
 * Fixtures hn-extras.pt, hn-bigstep.pt and hn-dupwidth.pt come from test/scripts/make_hostile_hn.py.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "./helpers/cli";
import { type HypernetworkFile, loadHypernetwork, readHypernetworkFile, writeHypernetworkFile } from "../src/hypernet/file";
import type { HostTensor } from "../src/io/host-tensor";
import { PyDict, PyFloat, PyTuple, type PyKey, type PyValue, isHostTensor } from "../src/io/pyvalue";
import { readSafetensors, writeSafetensors } from "../src/io/safetensors";
import { readTorchFile } from "../src/io/torch-file";
import { fixture } from "./helpers/tf";
import { skipWithoutTorch } from "./helpers/torch";

const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), "hostile-hn-"));

/** One CLI call in-process, with its console output. */
const run = runCli;

/** A hypernetwork safetensors file rewritten with its tensors renamed/added by `edit`. */
function rewriteSafetensors(src: string, dst: string, edit: (tensors: Array<[string, HostTensor]>) => void): void {
  const { tensors, metadata } = readSafetensors(src);
  const list = [...tensors];
  edit(list);
  writeSafetensors(dst, list, metadata);
}

/** A structural, type-aware comparison of two Python values as read (tensors by dtype, shape, data). */
function samePy(a: PyValue | undefined, b: PyValue | undefined, where: string, out: string[]): void {
  const kind = (v: PyValue | undefined): string =>
    v === null
      ? "None"
      : Array.isArray(v)
        ? "list"
        : v instanceof PyTuple
          ? "tuple"
          : v instanceof PyDict
            ? v.kind
            : v instanceof PyFloat
              ? "float"
              : isHostTensor(v)
                ? "tensor"
                : typeof v;
  if (kind(a) !== kind(b)) return void out.push(`${where}: ${kind(a)} became ${kind(b)}`);
  if (a instanceof PyFloat) {
    if (!Object.is(a.value, (b as PyFloat).value)) out.push(`${where}: ${a.value} became ${(b as PyFloat).value}`);
  } else if (Array.isArray(a) || a instanceof PyTuple) {
    const [x, y] = [Array.isArray(a) ? a : a.items, Array.isArray(b) ? b : (b as PyTuple).items];
    if (x.length !== y.length) out.push(`${where}: length ${x.length} became ${y.length}`);
    x.forEach((v, i) => samePy(v, y[i], `${where}[${i}]`, out));
  } else if (a instanceof PyDict) {
    const bm = (b as PyDict).map;
    if (JSON.stringify([...a.map.keys()].map(String)) !== JSON.stringify([...bm.keys()].map(String))) out.push(`${where}: keys changed`);
    for (const [k, v] of a.map) samePy(v, bm.get(k), `${where}[${String(k)}]`, out);
  } else if (isHostTensor(a)) {
    const t = b as typeof a;
    if (
      a.dtype !== t.dtype ||
      a.shape.join() !== t.shape.join() ||
      a.data.length !== t.data.length ||
      a.data.some((v, i) => !Object.is(v, t.data[i]))
    )
      out.push(`${where}: tensor changed`);
  } else if (a !== b) out.push(`${where}: ${String(a)} became ${String(b)}`);
}

/** The top-level keys of a `.pt` root that are neither widths nor A1111's metadata. */
const extrasOf = (root: PyValue): Map<PyKey, PyValue> => {
  const m = new Map<PyKey, PyValue>();
  for (const [k, v] of (root as PyDict).map)
    if (
      typeof k !== "number" &&
      ![
        "step",
        "name",
        "layer_structure",
        "activation_func",
        "is_layer_norm",
        "weight_initialization",
        "sd_checkpoint",
        "sd_checkpoint_name",
        "activate_output",
        "use_dropout",
        "dropout_structure",
        "last_layer_dropout",
        "optional_info",
      ].includes(k as string)
    )
      m.set(k, v);
  return m;
};

describe("widths and weights named two ways are refused", () => {
  it("safetensors: 08.* beside 8.* (the old reader loaded whichever came last), and 08.* alone", () => {
    const dir = tmp();
    const st = path.join(dir, "hn.safetensors");
    writeHypernetworkFile(readHypernetworkFile(fixture("hn-plain121.pt")), st);
    const alias = path.join(dir, "alias.safetensors");
    rewriteSafetensors(st, alias, (list) => {
      for (const [name, t] of [...list])
        if (name.startsWith("24.")) list.push([`0${name}`, { ...t, data: t.data.map((x) => -x) as Float32Array }]);
    });
    expect(() => readHypernetworkFile(alias)).toThrow(
      /tensor "024\.0\.linear\.0\.weight" writes width 24 as "024", and "24\.0\.linear\.0\.weight" names the same weight.*refused/,
    );
    const renamed = path.join(dir, "renamed.safetensors");
    rewriteSafetensors(st, renamed, (list) => list.forEach((e) => (e[0] = e[0].replace(/^40\./, "0040."))));
    expect(() => readHypernetworkFile(renamed)).toThrow(
      /renamed\.safetensors: tensor "0040\.0\.linear\.0\.weight" writes width 40 as "0040"; widths are written without leading zeros/,
    );
  });

  it(".pt: one weight under NovelAI's and A1111's names (hn-dupwidth.pt, written by torch)", () => {
    expect(() => readHypernetworkFile(fixture("hn-dupwidth.pt"))).toThrow(
      /hn-dupwidth\.pt: dim 8 k module: "linear\.0\.weight" and "linear1\.weight" both name the weight "linear\.0\.weight"/,
    );
  });
});

describe("convert keeps what A1111 does not interpret", () => {
  it(".pt → .safetensors → .pt restores every extra key type for type; the metadata holds them as documented", async (ctx) => {
    const dir = tmp();
    const st = path.join(dir, "x.safetensors");
    const back = path.join(dir, "x.pt");
    const r1 = await run(["convert", fixture("hn-extras.pt"), st]);
    expect(r1.code, r1.err).toBe(0);
    expect(r1.err).toBe(""); // nothing dropped, nothing to warn about
    const { metadata, tensors } = readSafetensors(st);
    const pairs = JSON.parse(metadata.extra!) as Array<[unknown, unknown]>;
    const byKey = new Map(pairs.map(([k, v]) => [JSON.stringify(k), v]));
    expect(byKey.get('"huge_int"')).toEqual({ int: String(2n ** 70n + 3n) });
    expect(byKey.get('"floats"')).toEqual([{ float: "nan" }, { float: "-0" }, { float: "inf" }, { float: 0.1 }]);
    expect(byKey.get('"pair"')).toEqual({ tuple: [1, { float: 2.5 }, "x"] });
    expect(byKey.get("true")).toBe("a bool key");
    expect(byKey.get('"ordered"')).toEqual({
      dict: [
        ["b", 1],
        ["a", [null, true, { dict: [["deep", { tuple: [false] }]] }]],
      ],
      ordered: true,
    });
    // the optimizer's tensors are stored as tensors: 2 widths × 2 modules × 4 params × (exp_avg, exp_avg_sq, step)
    expect([...tensors.keys()].filter((k) => k.startsWith("__extra__.")).length).toBe(48);
    const r2 = await run(["convert", st, back]);
    expect(r2.code, r2.err).toBe(0);
    const diffs: string[] = [];
    const [orig, rt] = [extrasOf(readTorchFile(fixture("hn-extras.pt"))), extrasOf(readTorchFile(back))];
    expect([...rt.keys()]).toEqual([...orig.keys()]);
    for (const [k, v] of orig) samePy(v, rt.get(k), String(k), diffs);
    expect(diffs).toEqual([]);
    // and as torch sees it
    skipWithoutTorch(ctx, "torch.load comparison of the round-tripped extras");
    const py = spawnSync("/usr/bin/python3", [path.join(__dirname, "scripts", "compare_extras.py"), fixture("hn-extras.pt"), back], {
      encoding: "utf8",
    });
    expect(py.status, py.stderr).toBe(0);
    const cmp = JSON.parse(py.stdout) as { keys: string[]; differences: string[] };
    expect(cmp.keys).toEqual(["'optimizer_name'", "'optimizer_state_dict'", "'huge_int'", "'floats'", "'pair'", "'ordered'", "True"]);
    expect(cmp.differences).toEqual([]);
  });

  it("what cannot be kept is named, and the rest is written", () => {
    const hf = readHypernetworkFile(fixture("hn-plain121.pt"));
    const loop: PyValue[] = [1];
    loop.push(loop);
    const withExtra: HypernetworkFile = {
      ...hf,
      extra: new Map<PyKey, PyValue>([
        ["loop", loop],
        ["ok", "kept"],
      ]),
    };
    const file = path.join(tmp(), "y.safetensors");
    const report = writeHypernetworkFile(withExtra, file);
    expect(report.dropped).toEqual(['top-level key "loop": not kept, because it contains itself']);
    expect(readHypernetworkFile(file).extra).toEqual(new Map([["ok", "kept"]]));
  });

  it("foreign metadata keys of a .safetensors come along as extra keys; a broken extra is refused", () => {
    const dir = tmp();
    const st = path.join(dir, "hn.safetensors");
    writeHypernetworkFile(readHypernetworkFile(fixture("hn-plain121.pt")), st);
    const { tensors, metadata } = readSafetensors(st);
    const foreign = path.join(dir, "foreign.safetensors");
    writeSafetensors(foreign, tensors, { ...metadata, "modelspec.title": "mine" });
    expect(readHypernetworkFile(foreign).extra.get("modelspec.title")).toBe("mine");
    const broken = path.join(dir, "broken.safetensors");
    writeSafetensors(broken, tensors, { ...metadata, extra: '[["x", {"tensor": "__extra__.0"}]]' });
    expect(() => readHypernetworkFile(broken)).toThrow(
      /broken\.safetensors: metadata "extra" refers to a tensor "__extra__\.0" that the file does not have/,
    );
    const width = path.join(dir, "width.safetensors");
    writeSafetensors(width, tensors, { ...metadata, extra: "[[24, 1]]" });
    expect(() => readHypernetworkFile(width)).toThrow(/holds the key 24, which would be a width/);
  });
});

describe("steps are kept exactly or refused", () => {
  it("2^60 + 1 written by torch is refused, not rounded to 2^60", () => {
    expect(() => readHypernetworkFile(fixture("hn-bigstep.pt"))).toThrow(
      /hn-bigstep\.pt: metadata "step" should be a whole number from 0 to 2\^53 - 1, found bigint "1152921504606846977"; a step beyond 2\^53 - 1 cannot be kept exactly/,
    );
  });

  it("safetensors steps: past 2^53, fractional, boolean refused; 2^53 - 1 round-trips", () => {
    const dir = tmp();
    const st = path.join(dir, "hn.safetensors");
    writeHypernetworkFile(readHypernetworkFile(fixture("hn-plain121.pt")), st);
    const { tensors, metadata } = readSafetensors(st);
    const withStep = (name: string, step: string): string => {
      const f = path.join(dir, name);
      writeSafetensors(f, tensors, { ...metadata, step });
      return f;
    };
    expect(JSON.parse("9007199254740993")).toBe(9007199254740992); // what JSON.parse made of it before
    expect(() => readHypernetworkFile(withStep("a.safetensors", "9007199254740993"))).toThrow(
      /found bigint "9007199254740993"; a step beyond/,
    );
    expect(() => readHypernetworkFile(withStep("b.safetensors", "5.5"))).toThrow(/found float 5\.5/);
    expect(() => readHypernetworkFile(withStep("c.safetensors", "1.0"))).toThrow(/found float 1/);
    expect(() => readHypernetworkFile(withStep("d.safetensors", "true"))).toThrow(/found boolean true/);
    const max = readHypernetworkFile(withStep("e.safetensors", "9007199254740991"));
    expect(max.info.step).toBe(Number.MAX_SAFE_INTEGER);
    const pt = path.join(dir, "e.pt");
    writeHypernetworkFile(max, pt);
    expect((readTorchFile(pt) as PyDict).get("step")).toBe(Number.MAX_SAFE_INTEGER);
  });
});

describe("non-finite weights", () => {
  it("load with one warning naming each tensor and its counts; finite files say nothing", () => {
    const hf = readHypernetworkFile(fixture("hn-plain121.pt"), { onWarning: () => expect.fail("hn-plain121.pt has finite weights") });
    const w = hf.weights.get(24)![0].get("linear.0.weight")!;
    w.data[0] = NaN;
    w.data[5] = NaN;
    hf.weights.get(40)![1].get("linear.1.bias")!.data[2] = -Infinity;
    const file = path.join(tmp(), "nan.pt");
    writeHypernetworkFile(hf, file);
    const warnings: string[] = [];
    const net = loadHypernetwork(file, { onWarning: (m) => warnings.push(m) });
    net.dispose();
    expect(warnings).toEqual([
      `${file}: 2 weight tensor(s) hold NaN or infinite values: 24.0.linear.0.weight (2 NaN), 40.1.linear.1.bias (1 Inf). Outputs through these modules will not be finite; the file was loaded as stored (retrain, or resume from an earlier checkpoint).`,
    ]);
  });
});

describe("convert: targets and leftovers", () => {
  it("a dangling symbolic link is replaced only with --overwrite", async () => {
    const dir = tmp();
    const link = path.join(dir, "out.safetensors");
    fs.symlinkSync(path.join(dir, "gone", "x.safetensors"), link);
    const r = await run(["convert", fixture("hn-plain121.pt"), link]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(
      `${link} is a symbolic link to ${path.join(dir, "gone", "x.safetensors")}, which does not exist (a dangling link); pass { overwrite: true } (CLI: --overwrite)`,
    );
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect((await run(["convert", fixture("hn-plain121.pt"), link, "--overwrite"])).code).toBe(0);
    expect(fs.lstatSync(link).isFile()).toBe(true);
    expect(fs.existsSync(path.join(dir, "gone"))).toBe(false);
  });

  it("temp files of an interrupted convert are removed by the next one (the trainer's cleanup), and said so", async () => {
    const dir = tmp();
    const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout;
    const stale = `.hn.safetensors.${dead}.1700000000000.tmp`;
    fs.writeFileSync(path.join(dir, stale), "half a file");
    fs.writeFileSync(path.join(dir, "keep.tmp"), "not ours");
    const r = await run(["convert", fixture("hn-plain121.pt"), path.join(dir, "hn.safetensors")]);
    expect(r.code).toBe(0);
    expect(r.err).toContain(`removed 1 temp file(s) an interrupted write left in ${dir}: ${stale}`);
    expect(fs.readdirSync(dir).sort()).toEqual(["hn.safetensors", "keep.tmp"]);
  });

  it("a 250-byte output name works; a 300-byte one is reported by its own path", async () => {
    const dir = tmp();
    const ok = path.join(dir, `${"a".repeat(238)}.safetensors`);
    expect((await run(["convert", fixture("hn-plain121.pt"), ok])).code).toBe(0);
    expect(readHypernetworkFile(ok).weights.size).toBe(2);
    const long = path.join(dir, `${"b".repeat(288)}.safetensors`);
    const r = await run(["convert", fixture("hn-plain121.pt"), long]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`file name too long: ${long} (255 bytes max per name on this file system`);
    expect(r.err).not.toMatch(/\.tmp/);
  });
});
