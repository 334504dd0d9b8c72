/**
 * Attaching hypernetworks to a UNet — through the one hook every attention layer has, its
 * processor (`src/unet/attention.ts`).
 *
 * In each attention layer (self and cross alike) the processor computes
 *
 *     ctx   = context ?? x
 *     ctx_k = fold over the stack: ctx_k ← ctx_k + net.k(ctx_k) · m      (modules chosen by width)
 *     ctx_v = fold over the stack: ctx_v ← ctx_v + net.v(ctx_v) · m
 *     out   = attend(to_q(x), to_k(ctx_k), to_v(ctx_v))
 *
 * exactly as A1111's `apply_hypernetworks` (spec §3.1–§3.2): networks apply in list order, each to
 * the previous one's output; a width with no module passes through. The multiplier is read from
 * the attachment on every call, so it is per network and per attachment, never global state.
 * The hypernetwork's weights never become part of the UNet's parameters; `detach()` puts the
 * previous processors back, so the UNet computes exactly what it did before.
 */
import type * as tf from "@tensorflow/tfjs";
import { type AttentionProcessor, type CrossAttention, attend } from "../unet/attention";
import type { Hypernetwork } from "./network";

/** One network in a stack, with its strength for this attachment. */
export interface StackEntry {
  network: Hypernetwork;
  /** Strength of the residual branch (A1111's multiplier; 0 = no effect, 1 = as trained). */
  multiplier: number;
}

/** What `attachHypernetworks` needs from a UNet: read and replace its processors. */
export interface ProcessorHost {
  getProcessors(): Map<string, AttentionProcessor>;
  setProcessor(p: AttentionProcessor | Map<string, AttentionProcessor>): void;
}

/** A live attachment: change multipliers, switch training mode, detach. */
export class Attachment {
  /** Training mode: dropout active and multipliers forced to 1 (A1111's rule). */
  training = false;
  private seed: number | undefined;
  private calls = 0;
  private attached = true;

  constructor(
    private readonly host: ProcessorHost,
    /** The stack, in application order; edit `multiplier`s freely between forwards. */
    readonly stack: StackEntry[],
    private readonly previous: Map<string, AttentionProcessor>,
  ) {}

  /** Set the multiplier of every entry whose network has this name (or of entry `index`). */
  setMultiplier(which: string | number, multiplier: number): void {
    const hits = typeof which === "number" ? [this.stack[which]] : this.stack.filter((e) => e.network.name === which);
    if (hits.length === 0 || hits[0] === undefined) throw new Error(`no attached hypernetwork ${typeof which === "number" ? `at index ${which}` : `named "${which}"`}`);
    for (const e of hits) e!.multiplier = multiplier;
  }

  /**
   * Seed the dropout masks of the following forward passes (training): every module call draws
   * its mask from (seed, call counter), so a resumed run with the same seed sees the same masks.
   */
  setSeed(seed: number | undefined): void {
    this.seed = seed;
    this.calls = 0;
  }

  /** @internal called by the processor for each module application. */
  nextSeed(): number | undefined {
    return this.seed === undefined ? undefined : this.seed * 4096 + this.calls++;
  }

  /** Restore the processors that were there before `attachHypernetworks`. */
  detach(): void {
    if (!this.attached) return;
    this.host.setProcessor(this.previous);
    this.attached = false;
  }

  get isAttached(): boolean {
    return this.attached;
  }
}

/** Run the stack's k (or v) modules over a context, in order. */
export function applyStack(stack: readonly StackEntry[], which: "k" | "v", context: tf.Tensor, opts: { training?: boolean; seed?: () => number | undefined } = {}): tf.Tensor {
  let c = context;
  for (const e of stack) c = e.network.apply(which, c, { multiplier: e.multiplier, training: opts.training, seed: opts.seed?.() });
  return c;
}

/**
 * The processor that rewrites the context for to_k and to_v, wrapping `inner`'s projections.
 * `attachment` supplies the live stack, training flag and dropout seeds.
 */
export function hypernetworkProcessor(attachment: Attachment): AttentionProcessor {
  return (layer: CrossAttention, x: tf.Tensor, context: tf.Tensor | undefined): tf.Tensor => {
    const ctx = context ?? x;
    const opts = { training: attachment.training, seed: () => attachment.nextSeed() };
    const ck = applyStack(attachment.stack, "k", ctx, opts);
    const cv = applyStack(attachment.stack, "v", ctx, opts);
    return attend(layer, layer.to_q.apply(x), layer.to_k.apply(ck), layer.to_v.apply(cv));
  };
}

/**
 * Attach hypernetworks (in stack order) to every attention layer of `unet`.
 * Entries may be networks (multiplier 1) or `{ network, multiplier }`.
 */
export function attachHypernetworks(unet: ProcessorHost, entries: Array<Hypernetwork | StackEntry>): Attachment {
  const stack: StackEntry[] = entries.map((e) => ("network" in e ? { network: e.network, multiplier: e.multiplier } : { network: e, multiplier: 1 }));
  const previous = unet.getProcessors();
  const attachment = new Attachment(unet, stack, previous);
  unet.setProcessor(hypernetworkProcessor(attachment));
  return attachment;
}
