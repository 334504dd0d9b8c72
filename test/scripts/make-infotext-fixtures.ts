/**
 * Writes test/fixtures/a1111-infotext.json: every text of infotext-cases.ts (the corpus, and this
 * project's writer's output for the round-trip cases) parsed by A1111's own
 * `parse_generation_parameters` (test/scripts/a1111_infotext_ref.py, run with /usr/bin/python3,
 * which needs python3-packaging), with A1111's `quote` of each round-trip prompt.
 *
 * Run: npx ts-node --transpile-only test/scripts/make-infotext-fixtures.ts
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { formatInfotext } from "../../src/pipeline/infotext";
import { CORPUS, ROUND_TRIP } from "./infotext-cases";

/** Run A1111's parser over `texts`: one ordered [key, value] list per text, and `quote(text)`. */
export function a1111Parse(texts: string[]): { parsed: Array<Array<[string, string | number | boolean]>>; quoted: string[] } {
  const out = execFileSync("/usr/bin/python3", [path.join(__dirname, "a1111_infotext_ref.py")], {
    input: JSON.stringify(texts),
    encoding: "utf8",
  });
  return JSON.parse(out) as { parsed: Array<Array<[string, string | number | boolean]>>; quoted: string[] };
}

if (require.main === module) {
  const written = ROUND_TRIP.map((c) => formatInfotext(c.params));
  const corpus = a1111Parse(CORPUS);
  const trip = a1111Parse(written);
  const fixture = {
    about: "A1111 1.10's parse_generation_parameters on test/scripts/infotext-cases.ts; made by test/scripts/make-infotext-fixtures.ts",
    corpus: CORPUS.map((text, i) => ({ text, parsed: corpus.parsed[i] })),
    roundTrip: written.map((text, i) => ({ text, parsed: trip.parsed[i] })),
  };
  const file = path.join(__dirname, "..", "fixtures", "a1111-infotext.json");
  fs.writeFileSync(file, JSON.stringify(fixture, null, 1) + "\n");
  console.log(`wrote ${file}: ${CORPUS.length} corpus texts, ${written.length} round trips`);
}
