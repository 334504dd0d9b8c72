/**
 * The set-up most trainer test files share: the test backend, the toy base model, a fresh temporary
 * folder and the toy four-colour dataset in it. Kept apart from train-setup.ts, which child
 * processes load outside vitest (this file loads the vitest-side backend helper).
 *
 *     let base: BaseModel; let tmp: string; let dataDir: string;
 *     let bench: ToyBench | undefined;
 *     beforeAll(async () => ({ base, tmp, dataDir } = bench = await openToyBench("hn-train-")));
 *     afterAll(() => closeToyBench(bench));
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { BaseModel } from "../../src/pipeline/base-model";
import { setupBackend } from "./tf";
import { makeToyBase, makeToyDataset } from "./train-setup";

/** What `openToyBench` made: the toy base model, the temporary folder, and the toy dataset (`<tmp>/data`). */
export interface ToyBench {
  base: BaseModel;
  tmp: string;
  dataDir: string;
}

/** Set up the backend, the toy base model, a temporary folder named `<prefix>…` and the toy dataset in it. */
export async function openToyBench(prefix: string): Promise<ToyBench> {
  await setupBackend();
  const base = makeToyBase();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const dataDir = path.join(tmp, "data");
  await makeToyDataset(dataDir);
  return { base, tmp, dataDir };
}

/** Free the base model and delete the temporary folder (nothing when the set-up never ran). */
export function closeToyBench(bench: ToyBench | undefined): void {
  if (!bench) return;
  bench.base.dispose();
  fs.rmSync(bench.tmp, { recursive: true, force: true });
}
