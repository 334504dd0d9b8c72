/**
 * The files training names after a network, in its run folder (A1111's layout):
 *
 *   <logDir>/hypernetworks/<stem>-<step>.pt              the checkpoint
 *   <logDir>/hypernetworks/<stem>-<step>.pt.optim        its AdamW state
 *   <logDir>/hypernetworks/<stem>-<step>.pt.state.json   its training state
 *   <logDir>/images/<stem>-<step>.png                     the preview
 *
 * `<stem>` is `safeFileStem(name).stem`: the name comes from a file (a downloaded `.pt`'s `name`,
 * a `.safetensors`' metadata) and must never choose the folder. Each path is also checked to lie
 * inside its folder before it is returned. Kept apart from the trainer (no tfjs) so the fuzzer can
 * check, for every name a reader returns, the very paths training would write.
 */
import * as path from "node:path";
import { insideFolder, safeFileStem } from "../io/safe-name";

/** The checkpoint `.pt` of network `name` at `step` in run folder `logDir`. */
export function checkpointFile(logDir: string, name: string, step: number): string {
  const dir = path.join(logDir, "hypernetworks");
  return insideFolder(dir, path.join(dir, `${safeFileStem(name).stem}-${step}.pt`), `the checkpoint of step ${step}`);
}

/** The preview PNG of network `name` at `step` in run folder `logDir`. */
export function previewFile(logDir: string, name: string, step: number): string {
  const dir = path.join(logDir, "images");
  return insideFolder(dir, path.join(dir, `${safeFileStem(name).stem}-${step}.png`), `the preview of step ${step}`);
}

/** Every file training writes for network `name` at `step`: checkpoint, `.optim`, `.state.json`, preview. */
export function runFiles(logDir: string, name: string, step: number): string[] {
  const pt = checkpointFile(logDir, name, step);
  return [pt, `${pt}.optim`, `${pt}.state.json`, previewFile(logDir, name, step)];
}
