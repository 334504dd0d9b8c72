/**
 * Watching a real training run from the outside: wrappers around the toy base model's text
 * encoder and UNet that record, as host copies, what each call received — the prompts, the token
 * ids, the UNet's inputs and contexts — so a trainer test can compare what reached the model with
 * what the options asked for. Nothing is changed: every wrapper calls the original and returns its
 * result. Call `restore()` when done (in a `finally`).
 */
import type * as tf from "@tensorflow/tfjs";
import type { BaseModel } from "../../src/pipeline/base-model";

/** One UNet call: its input and context as host arrays, with shapes, and its timesteps. */
export interface UNetCall {
  x: Float32Array;
  xShape: number[];
  t: number[];
  context: Float32Array;
  contextShape: number[];
}

/** What a watched base model saw, in call order. */
export interface Capture {
  /** Each `base.encodeText` call's prompts. */
  prompts: string[][];
  /** Each text-encoder call's token ids (one row per prompt and 75-token window). */
  ids: number[][][];
  /** Each UNet call. */
  unet: UNetCall[];
  /** Forget what was recorded so far (the wrappers stay in place). */
  clear(): void;
  /** Put the original methods back. */
  restore(): void;
}

/**
 * Wrap `base.encodeText`, `base.textEncoder.encode` and `base.unet.forward` to record every call.
 * The recorded arrays are copies read synchronously (wasm and cpu backends).
 */
export function captureModel(base: BaseModel): Capture {
  const encodeText = base.encodeText;
  const encode = base.textEncoder.encode;
  const forward = base.unet.forward;
  const cap: Capture = {
    prompts: [],
    ids: [],
    unet: [],
    clear: () => {
      cap.prompts.length = 0;
      cap.ids.length = 0;
      cap.unet.length = 0;
    },
    restore: () => {
      base.encodeText = encodeText;
      base.textEncoder.encode = encode;
      base.unet.forward = forward;
    },
  };
  base.encodeText = function (this: BaseModel, prompts: string[]): tf.Tensor3D {
    cap.prompts.push([...prompts]);
    return encodeText.call(this, prompts);
  };
  base.textEncoder.encode = function (this: BaseModel["textEncoder"], ids, opts) {
    cap.ids.push(Array.isArray(ids) ? ids.map((r) => [...r]) : (ids.arraySync() as number[][]));
    return encode.call(this, ids, opts);
  };
  base.unet.forward = function (this: BaseModel["unet"], x, t, context) {
    cap.unet.push({
      x: Float32Array.from(x.dataSync()),
      xShape: [...x.shape],
      t: Array.isArray(t) ? [...t] : Array.from(t.dataSync()),
      context: Float32Array.from(context.dataSync()),
      contextShape: [...context.shape],
    });
    return forward.call(this, x, t, context);
  };
  return cap;
}

/** Row `i` of a batch stored flat with `rowLength` values per row. */
export function row(data: Float32Array, i: number, rowLength: number): Float32Array {
  return data.subarray(i * rowLength, (i + 1) * rowLength);
}
