/**
 * Small helpers the notebook verbs (`steps.ts`) use to show results compactly and to keep a
 * training run's chart whole:
 *
 * - {@link compactInspect}: a result that holds pixel arrays and PNG bytes prints as one line in a
 *   notebook or REPL (`util.inspect` is what tslab and Node's REPL use to echo a cell's value),
 *   instead of `Float32Array(3072) […]` and `<Buffer 89 50 4e 47 …>` dumps.
 * - {@link defaultRunDir}: where a run's files go when the notebook gives no `logDir` (under the
 *   git-ignored `out/`, not the repository root).
 * - {@link readLossCsv}: the loss points an earlier run wrote, so a resumed run's chart continues
 *   the first curve.
 * - {@link finalLossChart}: the loss chart's last output, with a PNG of itself for viewers that
 *   have no plotly.js.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { inspect } from "node:util";
import { safeFileStem } from "../io/safe-name";
import { type Figure, type LossPoint, type ValidationPoint, figureHtml, lossChartPng } from "./charts";

/**
 * Give `value` a non-enumerable `util.inspect.custom` that prints `summary()` instead of its
 * contents (the object itself is unchanged: its fields, JSON and iteration stay as they were).
 * Returns the same object.
 */
export function compactInspect<T extends object>(value: T, summary: (v: T) => string): T {
  Object.defineProperty(value, inspect.custom, { value: () => summary(value), enumerable: false, configurable: true, writable: true });
  return value;
}

/** `YYYY-MM-DD` of a date in local time, as the trainer names run folders. */
function today(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

/** `out/textual_inversion/<YYYY-MM-DD>/<name>` under `cwd`: the notebooks' default run folder. */
export function defaultRunDir(name: string, cwd = process.cwd(), now = new Date()): string {
  // The day and file stem as the trainer names its own default folder (A1111: textual_inversion/<day>/<name>).
  return path.join(cwd, "out", "textual_inversion", today(now), safeFileStem(name).stem);
}

/**
 * The points of an A1111 loss CSV (`step,epoch,epoch_step,loss,learn_rate`, the trainer's
 * `hypernetwork_loss.csv`) up to and including `upToStep`. Columns are found by header name; rows
 * that do not parse are skipped. A missing file gives no points: a run with no CSV simply starts
 * its chart empty.
 */
export function readLossCsv(file: string, upToStep = Infinity): LossPoint[] {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new Error(`loss chart: cannot read the earlier run's loss file ${file}: ${(e as Error).message}`);
  }
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
  const header = (lines.shift() ?? "").split(",").map((h) => h.trim());
  const col = (name: string): number => header.indexOf(name);
  const [iStep, iLoss, iLr] = [col("step"), col("loss"), col("learn_rate")];
  if (iStep < 0 || iLoss < 0) return [];
  const points: LossPoint[] = [];
  for (const line of lines) {
    const f = line.split(",");
    const step = Number(f[iStep]);
    const loss = Number(f[iLoss]);
    if (!Number.isInteger(step) || f[iLoss] === undefined || f[iLoss]!.trim() === "" || step > upToStep) continue;
    const lr = iLr >= 0 && f[iLr] !== undefined && f[iLr]!.trim() !== "" ? Number(f[iLr]) : undefined;
    points.push(lr !== undefined && Number.isFinite(lr) ? { step, loss, lr } : { step, loss });
  }
  return points;
}

/**
 * The loss CSV a resumed run continues: the one in `logDir` if given, else the one in the run
 * folder holding the checkpoint (`<run>/hypernetworks/<name>-<step>.pt`).
 */
export function resumedLossCsv(resumeFrom: string, logDir?: string): string {
  const run = logDir ?? path.dirname(path.dirname(path.resolve(resumeFrom)));
  return path.join(run, "hypernetwork_loss.csv");
}

/**
 * The file the train verb keeps a run's validation losses in (`step,validation_loss`, next to the
 * trainer's `hypernetwork_loss.csv`), so that a resumed run's chart continues the validation curve
 * as it continues the loss curve.
 */
export function validationCsv(runDir: string): string {
  return path.join(runDir, "validation_loss.csv");
}

/** The validation points of `file` measured before `beforeStep` (a missing file: none; unparsable rows are skipped). */
export function readValidationCsv(file: string, beforeStep = Infinity): ValidationPoint[] {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new Error(`loss chart: cannot read the earlier run's validation file ${file}: ${(e as Error).message}`);
  }
  const points: ValidationPoint[] = [];
  for (const line of text.split(/\r?\n/).slice(1)) {
    const [step, loss] = line.split(",").map((f) => Number(f));
    if (Number.isInteger(step) && Number.isFinite(loss) && step! < beforeStep) points.push({ step: step!, loss: loss! });
  }
  return points;
}

/** Write `points` to `file` (header first), replacing what it held; the folder is created if needed. */
export function writeValidationCsv(file: string, points: readonly ValidationPoint[]): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `step,validation_loss\n${points.map((p) => `${p.step},${p.loss}\n`).join("")}`);
}

/** The loss chart's final output: the figure's HTML with a PNG of the chart (and the validation curve, if any) inside it and beside it. */
export async function finalLossChart(
  fig: Figure,
  divId: string,
  points: readonly LossPoint[],
  title: string,
  validation?: readonly ValidationPoint[],
): Promise<{ html: string; png: Buffer }> {
  const png = await lossChartPng(points, { title, ...(validation?.length ? { validation } : {}) });
  return { html: figureHtml(fig, divId, { fallbackPng: png }), png };
}
