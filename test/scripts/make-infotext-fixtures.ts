/**
 * Writes test/fixtures/a1111-infotext.json: every text of infotext-cases.ts (the corpus, and this
 * project's writer's output for the round-trip cases) parsed by A1111's own
 * `parse_generation_parameters`, imported from an A1111 checkout by test/scripts/run_a1111_infotext.py
 * (run with /usr/bin/python3, which needs python3-packaging and python3-lark). A1111 is AGPL-3.0:
 * its code is read from the checkout, never copied here.
 *
 * Run: npx ts-node --transpile-only test/scripts/make-infotext-fixtures.ts --a1111 DIR [--out FILE]
 * DIR is an A1111 checkout (or a folder with the modules/ files run_a1111_infotext.py names); the
 * environment variable A1111_WEBUI_DIR is used when --a1111 is not given.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { formatInfotext } from "../../src/pipeline/infotext";
import { CORPUS, ROUND_TRIP } from "./infotext-cases";

/** One parsed infotext: A1111's dict as ordered [key, value] pairs. */
export type A1111Entries = Array<[string, string | number | boolean]>;

/**
 * Run A1111's parser (from the checkout `a1111Dir`) over `texts`: one ordered [key, value] list
 * per text, and A1111's `quote(text)`. Shared by this script and test/infotext.test.ts so both
 * run A1111 the same way.
 */
export function a1111Parse(texts: string[], a1111Dir: string): { parsed: A1111Entries[]; quoted: string[] } {
  const out = execFileSync("/usr/bin/python3", [path.join(__dirname, "run_a1111_infotext.py"), "--a1111", a1111Dir], {
    input: JSON.stringify(texts),
    encoding: "utf8",
    stdio: ["pipe", "pipe", "inherit"],
  });
  return JSON.parse(out) as { parsed: A1111Entries[]; quoted: string[] };
}

/** The value after `--name` on the command line, if given. */
function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (require.main === module) {
  const a1111Dir = option("--a1111") ?? process.env.A1111_WEBUI_DIR;
  if (!a1111Dir) {
    console.error("make-infotext-fixtures.ts: give an A1111 checkout with --a1111 DIR (or set A1111_WEBUI_DIR)");
    process.exit(2);
  }
  const written = ROUND_TRIP.map((c) => formatInfotext(c.params));
  const corpus = a1111Parse(CORPUS, a1111Dir);
  const trip = a1111Parse(written, a1111Dir);
  const fixture = {
    about: "A1111 1.10's parse_generation_parameters on test/scripts/infotext-cases.ts; made by test/scripts/make-infotext-fixtures.ts",
    corpus: CORPUS.map((text, i) => ({ text, parsed: corpus.parsed[i] })),
    roundTrip: written.map((text, i) => ({ text, parsed: trip.parsed[i] })),
  };
  const file = option("--out") ?? path.join(__dirname, "..", "fixtures", "a1111-infotext.json");
  fs.writeFileSync(file, `${JSON.stringify(fixture, null, 1)}\n`);
  console.log(`wrote ${file}: ${CORPUS.length} corpus texts, ${written.length} round trips`);
}
