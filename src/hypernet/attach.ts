/**
 * Attaching hypernetworks to a UNet — through the one hook every attention layer has, its
 * processor (`src/unet/attention.ts`). The processor is what changes the computation; the UNet's
 * forward hook (`UNetModel.addForwardHook`) only tells the attachment when a pass begins (with its
 * timesteps) and ends, which a per-layer processor cannot see — the cache and the timestep gate
 * below need exactly that, and nothing else uses it.
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
 *
 * Cross-attention shortcut: every cross-attention layer of one forward receives the same text
 * context tensor, and the hypernetwork modules for its width are the same in every layer, so
 * (ctx_k, ctx_v) are identical across those layers whenever the modules are deterministic (eval
 * mode, or training without dropout/rrelu). A1111 recomputes them per layer; here they are
 * computed once per forward and reused (SD 1.5: 16 layers → 1, saving ~5.4 G MACs per pass).
 * The cache is keyed on the context tensor's identity, lives only for one `forward` (the host's
 * forward hook clears it), and is bypassed when dropout makes each layer's masks differ.
 *
 * Timestep gates (not an A1111 feature): an entry with `timesteps: [min, max)` takes part only in
 * UNet calls whose timestep lies in that range, so a network can be applied on the low-noise steps
 * that draw colour and texture and kept out of the high-noise steps that lay out the picture.
 * The host's forward hook reports each call's timesteps; a sampler's call has one timestep for
 * the whole batch, so a gate decides per call.
 */
import * as tf from "@tensorflow/tfjs";
import { type AttentionProcessor, type CrossAttention, attend } from "../unet/attention";
import type { Hypernetwork } from "./network";

/** One network in a stack, with its strength for this attachment. */
export interface StackEntry {
  network: Hypernetwork;
  /** Strength of the residual branch (A1111's multiplier; 0 = no effect, 1 = as trained). */
  multiplier: number;
  /**
   * Apply only in UNet calls at timesteps `min ≤ t < max` (of the schedule's 0–999; fractional t
   * from the Euler samplers counts too). Absent = every call, as in A1111. See the module comment.
   */
  timesteps?: readonly [number, number];
}

/** What `attachHypernetworks` needs from a UNet: read and replace its processors. */
export interface ProcessorHost {
  getProcessors(): Map<string, AttentionProcessor>;
  setProcessor(p: AttentionProcessor | Map<string, AttentionProcessor>): void;
  /** Optional: the context widths its attention layers use; when given, attaching checks networks against them. */
  readonly contextDims?: readonly number[];
  /** Optional: callbacks around each forward; without it the cross-attention cache stays off. */
  addForwardHook?(hook: { begin(t?: readonly number[]): void; end(): void }): () => void;
}

/**
 * The rewritten cross-attention contexts of the forward in progress, keyed by the context tensor.
 * Entries are `tf.keep`-ed (they outlive the layer's `tidy` that made them) and disposed when the
 * forward ends. Under a gradient tape this is safe: ops that use them save their own copies.
 */
class ContextCache {
  private active = false;
  private readonly entries = new Map<tf.Tensor, { k: tf.Tensor; v: tf.Tensor }>();
  private readonly owned: tf.Tensor[] = [];

  begin(): void {
    this.clear();
    this.active = true;
  }

  end(): void {
    this.active = false;
    this.clear();
  }

  /** Between begin and end: the cached pair for `context`, computing it with `make` the first time. */
  get(context: tf.Tensor, make: () => { k: tf.Tensor; v: tf.Tensor }): { k: tf.Tensor; v: tf.Tensor } | undefined {
    if (!this.active) return undefined;
    let hit = this.entries.get(context);
    if (!hit) {
      hit = make();
      // A width without a module passes the context itself through: that tensor is the caller's.
      for (const t of new Set([hit.k, hit.v])) if (t !== context) this.owned.push(tf.keep(t));
      this.entries.set(context, hit);
    }
    return hit;
  }

  private clear(): void {
    for (const t of this.owned) t.dispose();
    this.owned.length = 0;
    this.entries.clear();
  }
}

/** A live attachment: change multipliers, switch training mode, detach. */
export class Attachment {
  /** Training mode: dropout active and multipliers forced to 1 (A1111's rule). */
  training = false;
  /** Compute the cross-attention (ctx_k, ctx_v) once per forward when that is exact (default true). */
  cacheCrossAttention = true;
  private seed: number | undefined;
  private calls = 0;
  private attached = true;
  /** @internal per-forward cache of the cross-attention contexts (see the module comment). */
  readonly contextCache = new ContextCache();
  private removeHook: (() => void) | undefined;
  /** The entries that take part in the forward in progress (all of them outside a forward). */
  private current: readonly StackEntry[] | undefined;

  constructor(
    private readonly host: ProcessorHost,
    /** The stack, in application order; edit `multiplier`s and `timesteps` freely between forwards. */
    readonly stack: StackEntry[],
    private readonly previous: Map<string, AttentionProcessor>,
  ) {
    this.removeHook = host.addForwardHook?.({
      begin: (t) => {
        this.current = this.stackAt(t);
        this.contextCache.begin();
      },
      end: () => {
        this.current = undefined;
        this.contextCache.end();
      },
    });
  }

  /** @internal the entries applied in the forward in progress: the stack less the gated-out ones. */
  get activeStack(): readonly StackEntry[] {
    return this.current ?? this.stack;
  }

  /** The entries whose timestep gate admits a UNet call at timesteps `t`. */
  private stackAt(t: readonly number[] | undefined): readonly StackEntry[] {
    if (this.stack.every((e) => e.timesteps === undefined)) return this.stack;
    return this.stack.filter((e) => {
      if (e.timesteps === undefined) return true;
      checkGate(e);
      const [lo, hi] = e.timesteps;
      if (t === undefined || t.length === 0) {
        throw new Error(
          `hypernetwork "${e.network.name}" is gated to timesteps [${lo}, ${hi}) but the UNet was called with its timesteps as a tensor; pass them as numbers`,
        );
      }
      const inside = t.map((x) => x >= lo && x < hi);
      if (inside.some((b) => b !== inside[0])) {
        throw new Error(
          `hypernetwork "${e.network.name}" is gated to timesteps [${lo}, ${hi}) but one UNet call mixes timesteps inside and outside that range (${Math.min(...t)}–${Math.max(...t)}); a gate is for sampling, where a call has one timestep. To train on part of the range use the trainer's \`timesteps\` option`,
        );
      }
      return inside[0];
    });
  }

  /**
   * True when every module application gives the same result for the same input, so the
   * cross-attention contexts may be shared across layers: eval mode, or training with no dropout
   * and no rrelu (whose slopes are random in training) in any network of the stack.
   */
  get deterministic(): boolean {
    if (!this.training) return true;
    return this.stack.every((e) => e.network.info.dropoutStructure.every((p) => p === 0) && e.network.info.activation !== "rrelu");
  }

  /** @internal whether the processor may use the cross-attention cache right now. */
  get canCache(): boolean {
    return this.cacheCrossAttention && this.removeHook !== undefined && this.deterministic;
  }

  /** Set the multiplier of every entry whose network has this name (or of entry `index`). */
  setMultiplier(which: string | number, multiplier: number): void {
    const hits = typeof which === "number" ? [this.stack[which]] : this.stack.filter((e) => e.network.name === which);
    if (hits.length === 0 || hits[0] === undefined)
      throw new Error(`no attached hypernetwork ${typeof which === "number" ? `at index ${which}` : `named "${which}"`}`);
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
    this.removeHook?.();
    this.removeHook = undefined;
    this.attached = false;
  }

  get isAttached(): boolean {
    return this.attached;
  }
}

/** Refuse a malformed timestep gate with a message naming the network. */
function checkGate(e: StackEntry): void {
  const g = e.timesteps;
  if (g === undefined) return;
  if (g.length !== 2 || !Number.isFinite(g[0]) || !Number.isFinite(g[1]) || g[0] >= g[1]) {
    throw new Error(`hypernetwork "${e.network.name}": timesteps must be [min, max) with min < max, got ${JSON.stringify(g)}`);
  }
}

/** Run the stack's k (or v) modules over a context, in order. */
export function applyStack(
  stack: readonly StackEntry[],
  which: "k" | "v",
  context: tf.Tensor,
  opts: { training?: boolean; seed?: () => number | undefined } = {},
): tf.Tensor {
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
    const stack = attachment.activeStack;
    const both = (): { k: tf.Tensor; v: tf.Tensor } => ({ k: applyStack(stack, "k", ctx, opts), v: applyStack(stack, "v", ctx, opts) });
    // Cross-attention: the same context in every layer of this forward → compute once.
    const cached = context !== undefined && attachment.canCache ? attachment.contextCache.get(context, both) : undefined;
    const { k: ck, v: cv } = cached ?? both();
    return attend(layer, layer.to_q.apply(x), layer.to_k.apply(ck), layer.to_v.apply(cv));
  };
}

/** Options of `attachHypernetworks`. */
export interface AttachOptions {
  /** Where the "widths this model never uses" warning goes (default console.warn); said once per network and model. */
  onWarning?: (message: string) => void;
}

/** Networks already warned about, per set of model widths (the warning is said once). */
const warnedWidths = new WeakMap<Hypernetwork, Set<string>>();

/**
 * A network whose widths match none of the model's does nothing at all: refuse it, naming the
 * widths the model has. Modules for widths the model lacks (SD 2's 1024 on SD 1.x, say) are
 * legal in A1111 and simply never called: warn once.
 */
export function checkWidths(network: Hypernetwork, modelDims: readonly number[], warn: (message: string) => void): void {
  const have = new Set(modelDims);
  const unused = network.dims.filter((d) => !have.has(d));
  const has = `this model's attention layers use widths [${modelDims.join(", ")}]`;
  if (unused.length === network.dims.length) {
    throw new Error(
      `hypernetwork "${network.name}" has modules for widths [${network.dims.join(", ")}], but ${has}: it would change nothing. ` +
        `Create it with dims: base.contextDims (or createHypernetwork({ …, dims: "all" }, base)).`,
    );
  }
  if (unused.length === 0) return;
  const key = modelDims.join(",");
  const seen = warnedWidths.get(network) ?? new Set<string>();
  if (seen.has(key)) return;
  seen.add(key);
  warnedWidths.set(network, seen);
  warn(
    `hypernetwork "${network.name}": its modules for widths [${unused.join(", ")}] are never used (${has}); they are kept as they are and not trained`,
  );
}

/**
 * Attach hypernetworks (in stack order) to every attention layer of `unet`.
 * Entries may be networks (multiplier 1) or `{ network, multiplier }`.
 */
export function attachHypernetworks(unet: ProcessorHost, entries: Array<Hypernetwork | StackEntry>, opts: AttachOptions = {}): Attachment {
  const stack: StackEntry[] = entries.map((e) =>
    "network" in e
      ? { network: e.network, multiplier: e.multiplier, ...(e.timesteps ? { timesteps: e.timesteps } : {}) }
      : { network: e, multiplier: 1 },
  );
  if (unet.contextDims) for (const e of stack) checkWidths(e.network, unet.contextDims, opts.onWarning ?? ((m) => console.warn(m)));
  for (const e of stack) {
    if (e.timesteps === undefined) continue;
    checkGate(e);
    if (!unet.addForwardHook)
      throw new Error(
        `hypernetwork "${e.network.name}" has a timestep gate, but this UNet reports no timesteps to its attention layers (no addForwardHook)`,
      );
  }
  const previous = unet.getProcessors();
  const attachment = new Attachment(unet, stack, previous);
  unet.setProcessor(hypernetworkProcessor(attachment));
  return attachment;
}
