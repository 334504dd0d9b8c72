/**
 * Cheaper kernel launches on tfjs's WebGPU backend (tfjs-backend-webgpu 4.22), applied from this
 * project to the live backend instance — no fork, no edited files in node_modules.
 *
 * Why: a hypernetwork training step of the bench model is ~4,800 GPU dispatches, and on the stock
 * backend each one costs far more host time than GPU time. Four per-launch costs are removed:
 *
 * 1. **Uploads** (`uploadToGPU`): stock tfjs creates a fresh mapped staging buffer per upload (one
 *    device-memory allocation, map, unmap and destroy each — a driver call apiece on real GPUs)
 *    and records a copy that splits the compute pass. Here the pooled storage buffer is filled
 *    with `queue.writeBuffer`, which Dawn stages in its own reused ring.
 * 2. **Constants**: tensors whose elements are all the same value — scalars made by `tf.mul(x, 2)`,
 *    the `ones(shape)` of the Mean/Sum gradients — are uploaded once and shared from a small
 *    cache of read-only GPU buffers (at most 4,096 buffers / 64 MiB, least recently used dropped).
 *    A shared buffer is marked `external`, so tfjs never returns it to its pool; if a kernel
 *    ever names such a tensor as the buffer it writes into, the tensor first gets a private copy.
 * 3. **Uniforms** (`makeUniforms`): every launch writes its shapes and strides into a new uniform
 *    buffer. They repeat from step to step, so each distinct content is written once and kept
 *    (at most 16,384). The byte layout is tfjs's own, checked against it by the tests.
 * 4. **Bind groups**: with stable uniform buffers and tfjs's buffer pool handing out the same
 *    buffers each step, the same (pipeline layout, buffers) combinations recur; they are cached
 *    (at most 16,384), and `getBindGroupLayout(0)` is asked once per pipeline.
 *
 * Everything is checked by test/webgpu-launch.test.ts: the patched methods still exist with the
 * shape this code expects, the results are bit-identical to the stock path on lavapipe, and the
 * counts drop. `HYPERNET_WEBGPU_PATCHES=0` turns the patches off (for before/after comparisons).
 */
import * as tf from "@tensorflow/tfjs";

// GPUBufferUsage bits (WebGPU spec values).
const COPY_SRC = 0x4;
const COPY_DST = 0x8;
const UNIFORM = 0x40;
const STORAGE = 0x80;
const STORAGE_USAGE = STORAGE | COPY_SRC | COPY_DST;

/** The few Dawn objects used here, typed structurally (the `webgpu` package is optional). */
interface GpuBuffer {
  readonly size: number;
  readonly usage: number;
}
interface GpuQueue {
  writeBuffer(buffer: GpuBuffer, offset: number, data: ArrayBuffer | ArrayBufferView, dataOffset?: number, size?: number): void;
}
interface GpuPipeline {
  getBindGroupLayout(index: number): object;
}
interface GpuDevice {
  queue: GpuQueue;
  createBuffer(d: { size: number; usage: number; mappedAtCreation?: boolean }): GpuBuffer;
  createBindGroup(d: BindGroupDescriptor): object;
  createComputePipeline(d: object): GpuPipeline;
  createComputePipelineAsync(d: object): Promise<GpuPipeline>;
}
interface BindGroupDescriptor {
  layout: object;
  entries: Array<{ binding: number; resource: unknown }>;
}

/** One uniform field as tfjs passes it to `makeUniforms`. */
export interface UniformField {
  type: string;
  data: number[];
}

/** What tfjs keeps per tensor on the WebGPU backend (the fields read or written here). */
interface TensorData {
  dtype: tf.DataType;
  shape: number[];
  values: ArrayLike<number> | null;
  resource: unknown;
  external?: boolean;
}

/** The internals of tfjs's WebGPUBackend this module relies on (checked at install). */
interface BackendInternals {
  device: GpuDevice;
  queue: GpuQueue;
  tensorMap: { get(dataId: object): TensorData | undefined };
  bufferManager: { acquireBuffer(size: number, usage: number, mappedAtCreation?: boolean, reuse?: boolean): GpuBuffer };
  commandEncoder: { copyBufferToBuffer(src: GpuBuffer, srcOffset: number, dst: GpuBuffer, dstOffset: number, size: number): void } | null;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  uploadToGPU(dataId: object): void;
  makeUniforms(fields: UniformField[]): { offset: number; size: number; buffer: GpuBuffer };
  runWebGPUProgram(program: unknown, inputs: tf.TensorInfo[], dtype: tf.DataType, uniforms?: UniformField[], output?: tf.TensorInfo): tf.TensorInfo;
  /** Compiled pipelines by shader key (a Promise while compiling in parallel mode). */
  pipelineCache?: Record<string, unknown>;
  __launchPatches?: LaunchPatches;
}

/** Which patches to apply (all by default). */
export interface LaunchPatchOptions {
  uploads?: boolean;
  constants?: boolean;
  uniforms?: boolean;
  bindGroups?: boolean;
}

/** Cache statistics since install. */
export interface LaunchPatchStats {
  writeBufferUploads: number;
  constantHits: number;
  constantMisses: number;
  constantBytes: number;
  privatisedOutputs: number;
  uniformHits: number;
  uniformMisses: number;
  bindGroupHits: number;
  bindGroupMisses: number;
}

/** An installed set of patches. */
export interface LaunchPatches {
  /** The patches in force, by name. */
  readonly applied: string[];
  readonly stats: LaunchPatchStats;
  /** Put the backend's and device's own methods back and drop the caches. */
  remove(): void;
}

/** What {@link installWebgpuLaunchPatches} did. */
export interface LaunchPatchResult {
  installed: boolean;
  /** Why nothing was installed (no webgpu backend, turned off, or tfjs changed). */
  reason?: string;
  patches?: LaunchPatches;
}

const METHODS = ["uploadToGPU", "makeUniforms", "runWebGPUProgram", "ensureCommandEncoderReady", "endComputePassEncoder"] as const;

/**
 * The tfjs internals this module needs, or the first one missing. A non-null answer means the
 * installed tfjs-backend-webgpu differs from the 4.22 layout these patches were written for.
 */
export function missingWebgpuInternals(backend: unknown): string | null {
  const b = backend as Partial<Record<string, unknown>>;
  for (const m of METHODS) if (typeof b[m] !== "function") return `method ${m}`;
  for (const f of ["device", "queue", "tensorMap", "bufferManager"]) if (b[f] == null) return `field ${f}`;
  const bm = b.bufferManager as { acquireBuffer?: unknown };
  if (typeof bm.acquireBuffer !== "function") return "method bufferManager.acquireBuffer";
  return null;
}

/**
 * Apply the launch patches to the initialised tfjs `webgpu` backend (idempotent: a second call
 * returns the patches already in force). Call it right after the backend is selected, before the
 * first kernel runs, so every pipeline gets a cached bind-group layout.
 */
export function installWebgpuLaunchPatches(opts: LaunchPatchOptions = {}): LaunchPatchResult {
  const env = process.env.HYPERNET_WEBGPU_PATCHES?.trim().toLowerCase();
  if (env === "0" || env === "off" || env === "false") return { installed: false, reason: "turned off by HYPERNET_WEBGPU_PATCHES" };
  const backend = tf.findBackend("webgpu") as unknown as BackendInternals | null;
  if (!backend) return { installed: false, reason: 'the tfjs "webgpu" backend is not initialised' };
  if (backend.__launchPatches) return { installed: true, patches: backend.__launchPatches };
  const missing = missingWebgpuInternals(backend);
  if (missing) return { installed: false, reason: `tfjs-backend-webgpu ${tf.version_core} lacks the ${missing} these patches were written for (4.22)` };
  const patches = applyPatches(backend, { uploads: true, constants: true, uniforms: true, bindGroups: true, ...opts });
  backend.__launchPatches = patches;
  return { installed: true, patches };
}

/** Remove the patches from the webgpu backend, if any are installed. */
export function removeWebgpuLaunchPatches(): void {
  const backend = tf.findBackend("webgpu") as unknown as BackendInternals | null;
  backend?.__launchPatches?.remove();
}

function applyPatches(backend: BackendInternals, opts: Required<LaunchPatchOptions>): LaunchPatches {
  const stats: LaunchPatchStats = {
    writeBufferUploads: 0, constantHits: 0, constantMisses: 0, constantBytes: 0, privatisedOutputs: 0,
    uniformHits: 0, uniformMisses: 0, bindGroupHits: 0, bindGroupMisses: 0,
  };
  const restores: Array<() => void> = [];
  const applied: string[] = [];
  const own = (obj: object, name: string, fn: unknown): void => {
    const target = obj as Record<string, unknown>;
    const had = Object.prototype.hasOwnProperty.call(target, name);
    const before = target[name];
    target[name] = fn;
    restores.push(() => {
      if (had) target[name] = before;
      else delete target[name];
    });
  };
  const constants = new ConstantBuffers(backend.device, 4096, 64 << 20, stats);
  if (opts.uploads || opts.constants) {
    own(backend, "uploadToGPU", makeUpload(backend, opts, constants, stats));
    own(backend, "runWebGPUProgram", makeRun(backend, constants, stats));
    applied.push(...(opts.uploads ? ["writeBuffer uploads"] : []), ...(opts.constants ? ["shared constant buffers"] : []));
  }
  if (opts.uniforms) {
    own(backend, "makeUniforms", makeUniformCache(backend, 16384, stats));
    applied.push("cached uniform buffers");
  }
  if (opts.bindGroups) {
    patchBindGroups(backend, 16384, stats, own);
    patchBufferPool(backend.bufferManager as unknown as BufferPool, own);
    applied.push("cached bind groups and layouts");
  }
  return {
    applied,
    stats,
    remove() {
      for (const r of restores.reverse()) r();
      restores.length = 0;
      constants.clear();
      delete backend.__launchPatches;
    },
  };
}

/** The values of a tensor as the 32-bit array the GPU holds (int32 for int32/bool), or null. */
function gpuArray(d: TensorData, n: number): Float32Array | Int32Array | null {
  const v = d.values;
  if (v == null || v.length !== n) return null;
  if (d.dtype === "float32") return v instanceof Float32Array ? v : Float32Array.from(v);
  if (d.dtype === "int32" || d.dtype === "bool") return v instanceof Int32Array ? v : Int32Array.from(v);
  return null;
}

/** The bit pattern shared by every element, or null when they differ. */
function commonBits(a: Float32Array | Int32Array): number | null {
  const bits = a instanceof Int32Array ? a : new Int32Array(a.buffer, a.byteOffset, a.length);
  const first = bits[0]!;
  for (let i = 1; i < bits.length; i++) if (bits[i] !== first) return null;
  return first;
}

/** Read-only GPU buffers holding one repeated value, shared by every tensor with that content. */
class ConstantBuffers {
  private readonly map = new Map<string, GpuBuffer>();
  /** Every buffer handed out (kept weakly, so dropped ones can still be recognised as shared). */
  readonly shared = new WeakSet<GpuBuffer>();
  private bytes = 0;
  constructor(
    private readonly device: GpuDevice,
    private readonly maxEntries: number,
    private readonly maxBytes: number,
    private readonly stats: LaunchPatchStats,
  ) {}

  /** The shared buffer for `data` (all elements equal to `bits`), written on first use. */
  get(dtype: string, bits: number, data: Float32Array | Int32Array): GpuBuffer {
    const key = `${dtype}:${bits}:${data.length}`;
    const hit = this.map.get(key);
    if (hit) {
      this.map.delete(key); // least recently used goes first: move to the end
      this.map.set(key, hit);
      this.stats.constantHits++;
      return hit;
    }
    const buffer = this.device.createBuffer({ size: data.byteLength, usage: STORAGE_USAGE });
    this.device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, data.byteLength);
    this.map.set(key, buffer);
    this.shared.add(buffer);
    this.bytes += data.byteLength;
    this.stats.constantMisses++;
    // Tensors still holding an evicted buffer keep it alive; it is only no longer handed out.
    for (const [k, b] of this.map) {
      if (this.map.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.map.delete(k);
      this.bytes -= b.size;
    }
    this.stats.constantBytes = this.bytes;
    return buffer;
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }
}

/** `uploadToGPU` through `queue.writeBuffer` into a pooled buffer, or a shared constant buffer. */
function makeUpload(backend: BackendInternals, opts: Required<LaunchPatchOptions>, constants: ConstantBuffers, stats: LaunchPatchStats): (dataId: object) => void {
  const stock = backend.uploadToGPU;
  return function uploadToGPU(this: BackendInternals, dataId: object): void {
    const d = this.tensorMap.get(dataId);
    if (!d || d.resource != null) return stock.call(this, dataId);
    const n = tf.util.sizeFromShape(d.shape);
    const data = n > 0 ? gpuArray(d, n) : null;
    if (!data) return stock.call(this, dataId); // no values yet (an output), empty, or not a 32-bit type
    if (opts.constants && !writtenOutputs.has(dataId)) {
      const bits = commonBits(data);
      if (bits !== null) {
        d.resource = constants.get(d.dtype, bits, data);
        d.external = true; // never returned to tfjs's pool: other tensors share it
        d.values = null;
        return;
      }
    }
    if (!opts.uploads) return stock.call(this, dataId);
    const buffer = this.bufferManager.acquireBuffer(data.byteLength, STORAGE_USAGE);
    // Ordered before every command submitted after this call, after every one submitted before;
    // a pooled buffer is only free once the commands that used it were submitted.
    this.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, data.byteLength);
    stats.writeBufferUploads++;
    d.values = null;
    d.resource = buffer;
  };
}

/** Tensors a kernel is about to write into (its `output` argument): never given a shared buffer. */
const writtenOutputs = new WeakSet<object>();

/**
 * `runWebGPUProgram` that keeps kernels from writing into shared constant buffers: an explicit
 * output tensor is excluded from sharing and, if it already holds a shared buffer, first gets a
 * private copy of it.
 */
function makeRun(backend: BackendInternals, constants: ConstantBuffers, stats: LaunchPatchStats): BackendInternals["runWebGPUProgram"] {
  const stock = backend.runWebGPUProgram;
  return function runWebGPUProgram(this: BackendInternals, program, inputs, dtype, uniforms, output) {
    if (output) {
      writtenOutputs.add(output.dataId);
      const d = this.tensorMap.get(output.dataId);
      if (d && d.external && constants.shared.has(d.resource as GpuBuffer)) {
        const src = d.resource as GpuBuffer;
        const dst = this.bufferManager.acquireBuffer(src.size, STORAGE_USAGE);
        this.ensureCommandEncoderReady();
        this.endComputePassEncoder();
        this.commandEncoder!.copyBufferToBuffer(src, 0, dst, 0, src.size);
        d.resource = dst;
        d.external = false;
        stats.privatisedOutputs++;
      }
    }
    return stock.call(this, program, inputs, dtype, uniforms, output);
  };
}

/**
 * The bytes tfjs 4.22's `makeUniforms` writes for `fields` (WGSL struct layout: 4-byte scalars,
 * vec2 aligned to 8, vec3–vec6 to 16, a field after a vec5/vec6 to 16, the struct rounded to its
 * largest alignment). Exported for the test that compares it with tfjs's own.
 */
export function uniformBytes(fields: UniformField[]): ArrayBuffer {
  let offset = 0;
  let preLength = 0;
  let maxAlign = 1;
  const offsets: number[] = [];
  for (const f of fields) {
    const len = f.data.length === 0 ? 1 : f.data.length;
    if (len > 6) throw new Error(`Unsupported ${len}D shape`);
    let align = len === 1 ? 4 : len === 2 ? 8 : 16;
    if (preLength === 5 || preLength === 6) align = 16;
    maxAlign = Math.max(maxAlign, align);
    offset = Math.ceil(offset / align) * align;
    preLength = len;
    offsets.push(offset);
    offset += len * 4;
  }
  offset = Math.ceil(offset / maxAlign) * maxAlign;
  const out = new ArrayBuffer(offset);
  fields.forEach((f, i) => {
    const data = f.data.length === 0 ? [1] : f.data;
    const at = offsets[i]!;
    if (f.type === "int32") new Int32Array(out, at, data.length).set(data);
    else if (f.type === "uint32") new Uint32Array(out, at, data.length).set(data);
    else new Float32Array(out, at, data.length).set(data);
  });
  return out;
}

/**
 * A cache key naming the types and values of `fields` (and so their bytes: equal keys give equal
 * bytes; values that round to the same float32 may give two keys, which only costs a duplicate).
 */
function uniformKey(fields: UniformField[]): string {
  let k = "";
  for (const f of fields) {
    k += f.type === "int32" ? "i" : f.type === "uint32" ? "u" : "f";
    const d = f.data;
    for (let i = 0; i < d.length; i++) {
      const v = d[i]!;
      k += v === 0 && 1 / v < 0 ? "-0," : `${v},`;
    }
    k += ";";
  }
  return k;
}

/** `makeUniforms` that writes each distinct uniform content once and reuses its buffer. */
function makeUniformCache(backend: BackendInternals, maxEntries: number, stats: LaunchPatchStats): BackendInternals["makeUniforms"] {
  const cache = new Map<string, { offset: number; size: number; buffer: GpuBuffer }>();
  const device = backend.device;
  return function makeUniforms(fields: UniformField[]) {
    const key = uniformKey(fields);
    const hit = cache.get(key);
    if (hit) {
      stats.uniformHits++;
      return hit;
    }
    stats.uniformMisses++;
    const bytes = uniformBytes(fields);
    const buffer = device.createBuffer({ size: bytes.byteLength, usage: UNIFORM | COPY_DST });
    device.queue.writeBuffer(buffer, 0, bytes, 0, bytes.byteLength);
    const binding = { offset: 0, size: bytes.byteLength, buffer };
    if (cache.size >= maxEntries) cache.delete(cache.keys().next().value as string); // oldest first
    cache.set(key, binding);
    return binding;
  };
}

/**
 * Cache `getBindGroupLayout(0)` per pipeline and `createBindGroup` per (layout, bound buffers,
 * offsets, sizes). Bind groups are immutable and may be reused across submits; a cached one is
 * only found again when exactly the same buffer objects are bound.
 */
function patchBindGroups(backend: BackendInternals, maxEntries: number, stats: LaunchPatchStats, own: (obj: object, name: string, fn: unknown) => void): void {
  const device = backend.device;
  const memoLayout = (p: GpuPipeline): GpuPipeline => {
    if (Object.prototype.hasOwnProperty.call(p, "getBindGroupLayout")) return p; // already memoised
    const layouts = new Map<number, object>();
    const get = p.getBindGroupLayout.bind(p);
    (p as { getBindGroupLayout(i: number): object }).getBindGroupLayout = (i: number): object => {
      let l = layouts.get(i);
      if (!l) layouts.set(i, (l = get(i)));
      return l;
    };
    return p;
  };
  // Pipelines compiled before the patches (tfjs caches them by shader key) get the memo too.
  for (const p of Object.values(backend.pipelineCache ?? {})) {
    if (p && typeof (p as GpuPipeline).getBindGroupLayout === "function") memoLayout(p as GpuPipeline);
  }
  // The originals are looked up on the prototype at each call (not captured now), so wrappers
  // installed there later (webgpu-counters.ts) still see every native call.
  const proto = Object.getPrototypeOf(device) as GpuDevice;
  own(device, "createComputePipeline", (d: object) => memoLayout(proto.createComputePipeline.call(device, d)));
  own(device, "createComputePipelineAsync", async (d: object) => memoLayout(await proto.createComputePipelineAsync.call(device, d)));
  const createBindGroup = (d: BindGroupDescriptor): object => proto.createBindGroup.call(device, d);
  const cache = new Map<string, object>();
  own(device, "createBindGroup", (d: BindGroupDescriptor): object => {
    let key = String(idOf(d.layout));
    for (const e of d.entries) {
      const r = e.resource as { buffer?: object; offset?: number; size?: number } | null;
      if (!r || typeof r !== "object" || !r.buffer) return createBindGroup(d); // textures: not cached
      key += `|${e.binding}:${idOf(r.buffer)}:${r.offset ?? 0}:${r.size ?? -1}`;
    }
    const hit = cache.get(key);
    if (hit) {
      stats.bindGroupHits++;
      return hit;
    }
    stats.bindGroupMisses++;
    const group = createBindGroup(d);
    if (cache.size >= maxEntries) cache.delete(cache.keys().next().value as string);
    cache.set(key, group);
    return group;
  });
}

/** A stable small number per GPU object (kept on the object: cheaper than a WeakMap lookup). */
const ID = Symbol("hypernet.gpuObjectId");
let nextId = 1;
function idOf(o: object): number {
  const tagged = o as { [ID]?: number };
  return (tagged[ID] ??= nextId++);
}

/** tfjs's BufferManager free lists: `${size}_${usage}` → buffers, the next one handed out last. */
interface BufferPool {
  freeBuffers: Map<string, GpuBuffer[]>;
  releaseBuffer(buffer: GpuBuffer, reuse?: boolean): void;
}

/**
 * Make tfjs's buffer pool hand out the free buffer with the lowest id (each free list kept sorted,
 * lowest id last, where `acquireBuffer` pops). The stock pool pops the most recently released
 * buffer, so which buffer a launch gets drifts from step to step and bind groups never repeat;
 * with a fixed preference the same step gets the same buffers, and its bind groups are reused.
 */
function patchBufferPool(pool: BufferPool, own: (obj: object, name: string, fn: unknown) => void): void {
  const sortList = (list: GpuBuffer[]): void => {
    list.sort((p, q) => idOf(q) - idOf(p));
  };
  for (const list of pool.freeBuffers.values()) sortList(list);
  const stock = pool.releaseBuffer;
  own(pool, "releaseBuffer", function releaseBuffer(this: BufferPool, buffer: GpuBuffer, reuse = true): void {
    stock.call(this, buffer, reuse);
    const list = this.freeBuffers.get(`${buffer.size}_${buffer.usage}`);
    if (!reuse || !list || list[list.length - 1] !== buffer) return;
    // Insertion step: move the released buffer left past every buffer with a lower id.
    const id = idOf(buffer);
    let i = list.length - 1;
    while (i > 0 && idOf(list[i - 1]!) < id) {
      list[i] = list[i - 1]!;
      i--;
    }
    list[i] = buffer;
  });
}
