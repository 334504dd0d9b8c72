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
 *
 * Strengths (strengths.ts): an entry's multiplier may be scaled per projection (k, v), per context
 * width, and by a ramp over the timestep — the gate generalised to a smooth factor.
 *
 * Parallel groups (MonkeyPatch's `.hns` "parallel" processing, A1111 PR #4334): an item
 * `{ parallel: [{ network, multiplier, weight }, …] }` in the stack runs each member on the same
 * input and takes the weighted mean of their outputs instead of feeding one into the next:
 *
 *     group(c) = c + m_g · Σ_i ŵ_i · (member_i(c) − c),     ŵ_i = w_i / Σ_j w_j
 *
 * which, with m_g = 1, is Σ_i ŵ_i · member_i(c) — MonkeyPatch's weighted sum. A member may itself be
 * a sequence (`{ weight, stack: [...] }`), so `.hns` trees nest. Members and groups may be gated.
 */
import * as tf from "@tensorflow/tfjs";
import { type AttentionProcessor, type CrossAttention, attend } from "../unet/attention";
import type { Hypernetwork } from "./network";
import { checkStrengths, type Strengths, strengthFactor } from "./strengths";

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
  /** Per-projection, per-width and per-timestep factors on `multiplier` (strengths.ts); inference only. */
  strengths?: Strengths;
}

/** A member of a parallel group: a network entry, or a sequence of items, with its weight in the mean. */
export type ParallelMember = (StackEntry & { weight: number }) | { weight: number; stack: readonly StackItem[] };

/** Networks applied side by side, their outputs averaged by weight (see the module comment). */
export interface ParallelGroup {
  parallel: readonly ParallelMember[];
  /** Strength of the group's combined change (default 1 = the weighted mean of the members' outputs). */
  multiplier: number;
  /** As for an entry: the group takes part only at timesteps `min ≤ t < max`. */
  timesteps?: readonly [number, number];
}

/** One item of a stack: a network entry or a parallel group. */
export type StackItem = StackEntry | ParallelGroup;

/** The entries of a stack, nested ones included, in order. */
export function stackEntries(stack: readonly StackItem[]): StackEntry[] {
  const out: StackEntry[] = [];
  const walk = (items: readonly StackItem[]): void => {
    for (const it of items) {
      if ("network" in it) out.push(it);
      else for (const m of it.parallel) "stack" in m ? walk(m.stack) : out.push(m);
    }
  };
  walk(stack);
  return out;
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
  /** The items that take part in the forward in progress (all of them outside a forward). */
  private current: readonly StackItem[] | undefined;
  /** The timesteps of the forward in progress, as the UNet reported them. */
  private currentT: readonly number[] | undefined;

  constructor(
    private readonly host: ProcessorHost,
    /** The stack, in application order; edit `multiplier`s, `timesteps` and `strengths` freely between forwards. */
    readonly stack: StackItem[],
    private readonly previous: Map<string, AttentionProcessor>,
  ) {
    this.removeHook = host.addForwardHook?.({
      begin: (t) => {
        this.currentT = t;
        this.current = this.stack.filter((e) => admits(e, t));
        this.contextCache.begin();
      },
      end: () => {
        this.current = undefined;
        this.currentT = undefined;
        this.contextCache.end();
      },
    });
  }

  /** @internal the items applied in the forward in progress: the stack less the gated-out ones. */
  get activeStack(): readonly StackItem[] {
    return this.current ?? this.stack;
  }

  /** @internal how the processor applies the stack now: the timesteps, and the gate for nested items. */
  get applyContext(): { t: readonly number[] | undefined; admit: ((item: StackItem) => boolean) | undefined } {
    const t = this.currentT;
    return { t, admit: this.current ? (item) => admits(item, t) : undefined };
  }

  /**
   * True when every module application gives the same result for the same input, so the
   * cross-attention contexts may be shared across layers: eval mode, or training with no dropout
   * and no rrelu (whose slopes are random in training) in any network of the stack.
   */
  get deterministic(): boolean {
    if (!this.training) return true;
    return stackEntries(this.stack).every(
      (e) => e.network.info.dropoutStructure.every((p) => p === 0) && e.network.info.activation !== "rrelu",
    );
  }

  /** @internal whether the processor may use the cross-attention cache right now. */
  get canCache(): boolean {
    return this.cacheCrossAttention && this.removeHook !== undefined && this.deterministic;
  }

  /** Set the multiplier of every entry whose network has this name, in groups too (or of top-level item `index`). */
  setMultiplier(which: string | number, multiplier: number): void {
    const hits: Array<StackItem | undefined> =
      typeof which === "number" ? [this.stack[which]] : stackEntries(this.stack).filter((e) => e.network.name === which);
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

/** How messages name an item. */
function itemName(e: StackItem): string {
  return "network" in e
    ? `hypernetwork "${e.network.name}"`
    : `parallel group of ${stackEntries([e])
        .map((x) => `"${x.network.name}"`)
        .join(", ")}`;
}

/** Refuse a malformed timestep gate with a message naming the network (or group). */
function checkGate(e: StackItem): void {
  const g = e.timesteps;
  if (g === undefined) return;
  if (g.length !== 2 || !Number.isFinite(g[0]) || !Number.isFinite(g[1]) || g[0] >= g[1]) {
    throw new Error(`${itemName(e)}: timesteps must be [min, max) with min < max, got ${JSON.stringify(g)}`);
  }
}

/** Whether an item's timestep gate admits a UNet call at timesteps `t` (see the module comment). */
function admits(e: StackItem, t: readonly number[] | undefined): boolean {
  if (e.timesteps === undefined) return true;
  checkGate(e);
  const [lo, hi] = e.timesteps;
  if (t === undefined || t.length === 0) {
    throw new Error(
      `${itemName(e)} is gated to timesteps [${lo}, ${hi}) but the UNet was called with its timesteps as a tensor; pass them as numbers`,
    );
  }
  const inside = t.map((x) => x >= lo && x < hi);
  if (inside.some((b) => b !== inside[0])) {
    throw new Error(
      `${itemName(e)} is gated to timesteps [${lo}, ${hi}) but one UNet call mixes timesteps inside and outside that range (${Math.min(...t)}–${Math.max(...t)}); a gate is for sampling, where a call has one timestep (a strengths.ramp gives each sample its own factor). To train on part of the range use the trainer's \`timesteps\` option`,
    );
  }
  return inside[0]!;
}

/** Options of `applyStack`. */
export interface ApplyStackOptions {
  training?: boolean;
  /** Dropout seed for each module call (training). */
  seed?: () => number | undefined;
  /** The UNet call's timesteps (for strength ramps). */
  t?: readonly number[];
  /** Gate for nested items (group members); absent = every item takes part. */
  admit?: (item: StackItem) => boolean;
}

/** One entry's k (or v) module over a context, with its strengths. */
function applyEntry(e: StackEntry, which: "k" | "v", c: tf.Tensor, opts: ApplyStackOptions): tf.Tensor {
  const width = c.shape[c.shape.length - 1]!;
  if (!e.network.pair(width)) return c;
  const f = opts.training ? 1 : strengthFactor(e.strengths, which, width, opts.t, e.network.name);
  const multiplier = typeof f === "number" ? e.multiplier * f : f.map((x) => e.multiplier * x);
  return e.network.apply(which, c, { multiplier, training: opts.training, seed: opts.seed?.() });
}

/** A parallel group over a context: `c + m_g · Σ ŵ_i (member_i(c) − c)`. */
function applyGroup(g: ParallelGroup, which: "k" | "v", c: tf.Tensor, opts: ApplyStackOptions): tf.Tensor {
  const members = g.parallel.filter((m) => !opts.admit || !("network" in m) || opts.admit(m));
  const total = g.parallel.reduce((a, m) => a + m.weight, 0);
  return tf.tidy(() => {
    let sum: tf.Tensor | undefined;
    for (const m of members) {
      const out = "stack" in m ? applyStack(m.stack, which, c, opts) : applyEntry(m, which, c, opts);
      if (out === c) continue;
      const part = tf.mul(tf.sub(out, c), m.weight / total);
      sum = sum ? tf.add(sum, part) : part;
    }
    return sum ? tf.add(c, tf.mul(sum, g.multiplier)) : c;
  });
}

/** Run the stack's k (or v) modules over a context, in order (groups side by side). */
export function applyStack(stack: readonly StackItem[], which: "k" | "v", context: tf.Tensor, opts: ApplyStackOptions = {}): tf.Tensor {
  let c = context;
  for (const e of stack) {
    if (opts.admit && !opts.admit(e)) continue;
    c = "network" in e ? applyEntry(e, which, c, opts) : applyGroup(e, which, c, opts);
  }
  return c;
}

/** Refuse a malformed parallel group (no members, weights that are not finite or sum to 0). */
function checkGroup(g: ParallelGroup): void {
  if (!Array.isArray(g.parallel) || g.parallel.length === 0) throw new Error("a parallel group needs at least one member");
  const total = g.parallel.reduce((a, m) => a + m.weight, 0);
  if (g.parallel.some((m) => !Number.isFinite(m.weight)) || !Number.isFinite(total) || total === 0)
    throw new Error(
      `${itemName(g)}: member weights must be finite numbers with a non-zero sum, got [${g.parallel.map((m) => m.weight).join(", ")}]`,
    );
  if (!Number.isFinite(g.multiplier)) throw new Error(`${itemName(g)}: multiplier must be a finite number, got ${g.multiplier}`);
  for (const m of g.parallel) if ("stack" in m) for (const it of m.stack) if ("parallel" in it) checkGroup(it);
}

/**
 * The processor that rewrites the context for to_k and to_v, wrapping `inner`'s projections.
 * `attachment` supplies the live stack, training flag and dropout seeds.
 */
export function hypernetworkProcessor(attachment: Attachment): AttentionProcessor {
  return (layer: CrossAttention, x: tf.Tensor, context: tf.Tensor | undefined): tf.Tensor => {
    const ctx = context ?? x;
    const opts: ApplyStackOptions = { training: attachment.training, seed: () => attachment.nextSeed(), ...attachment.applyContext };
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

/** A parallel group as given to `attachHypernetworks` (its multiplier defaults to 1). */
export type ParallelGroupInput = Omit<ParallelGroup, "multiplier"> & { multiplier?: number };

/** Every gated item of a stack, nested ones included. */
function allItems(stack: readonly StackItem[]): StackItem[] {
  const out: StackItem[] = [];
  const walk = (items: readonly StackItem[]): void => {
    for (const it of items) {
      out.push(it);
      if ("parallel" in it) for (const m of it.parallel) "stack" in m ? walk(m.stack) : out.push(m);
    }
  };
  walk(stack);
  return out;
}

/**
 * Attach hypernetworks (in stack order) to every attention layer of `unet`.
 * Entries may be networks (multiplier 1), `{ network, multiplier, timesteps?, strengths? }`, or
 * parallel groups `{ parallel: [{ network, multiplier, weight }, …], multiplier? }`.
 */
export function attachHypernetworks(
  unet: ProcessorHost,
  entries: Array<Hypernetwork | StackEntry | ParallelGroupInput>,
  opts: AttachOptions = {},
): Attachment {
  const stack: StackItem[] = entries.map((e): StackItem => {
    if ("parallel" in e)
      return { parallel: [...e.parallel], multiplier: e.multiplier ?? 1, ...(e.timesteps ? { timesteps: e.timesteps } : {}) };
    if ("network" in e)
      return {
        network: e.network,
        multiplier: e.multiplier,
        ...(e.timesteps ? { timesteps: e.timesteps } : {}),
        ...(e.strengths ? { strengths: e.strengths } : {}),
      };
    return { network: e, multiplier: 1 };
  });
  for (const it of stack) if ("parallel" in it) checkGroup(it);
  const entriesAll = stackEntries(stack);
  if (unet.contextDims)
    for (const e of new Set(entriesAll.map((x) => x.network))) checkWidths(e, unet.contextDims, opts.onWarning ?? ((m) => console.warn(m)));
  for (const e of entriesAll) checkStrengths(e.strengths, e.network.name);
  for (const e of allItems(stack)) {
    const ramp = "network" in e && e.strengths?.ramp !== undefined;
    if (e.timesteps === undefined && !ramp) continue;
    checkGate(e);
    if (!unet.addForwardHook)
      throw new Error(
        `${itemName(e)} has a timestep ${ramp ? "ramp" : "gate"}, but this UNet reports no timesteps to its attention layers (no addForwardHook)`,
      );
  }
  const previous = unet.getProcessors();
  const attachment = new Attachment(unet, stack, previous);
  unet.setProcessor(hypernetworkProcessor(attachment));
  return attachment;
}
