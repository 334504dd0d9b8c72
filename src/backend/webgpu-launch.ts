/**
 * Cheaper kernel launches on tfjs's WebGPU backend (tfjs-backend-webgpu 4.22), applied from this
 * project to the live backend instance — no fork, no edited files in node_modules.
 *
 * Why: a hypernetwork training step of the bench model is ~4,800 GPU dispatches, and on the stock
 * backend each one costs far more host time than GPU time. Five per-launch costs are removed:
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
 * 5. **Recording** (`recordAndSubmit`): a lean version finds the uniform buffer by the shapes it is
 *    made of and the bind group by the buffers it binds, so a repeated launch allocates nothing;
 *    `device.limits`, read per launch, is read once. The commands recorded are tfjs's own.
 *
 * The caching code is in webgpu-launch-cache.ts.
 * Everything is checked by test/webgpu-launch.test.ts: the patched methods still exist with the
 * shape this code expects, the results are bit-identical to the stock path on lavapipe, and the
 * counts drop. `HYPERNET_WEBGPU_PATCHES=0` turns the patches off (for before/after comparisons).
 */
import * as tf from "@tensorflow/tfjs";
import {
  type GpuBuffer,
  type GpuDevice,
  type GpuQueue,
  type LaunchCaches,
  type RecorderInternals,
  type UniformField,
  type BufferPool,
  makeRecorder,
  makeUniformCache,
  patchBindGroups,
  patchBufferPool,
} from "./webgpu-launch-cache";
import { useFusedKernels } from "./webgpu-fused";

export { type UniformField, uniformBytes } from "./webgpu-launch-cache";

// GPUBufferUsage bits (WebGPU spec values).
const COPY_SRC = 0x4;
const COPY_DST = 0x8;
const STORAGE = 0x80;
const STORAGE_USAGE = STORAGE | COPY_SRC | COPY_DST;

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
  runWebGPUProgram(
    program: unknown,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: UniformField[],
    output?: tf.TensorInfo,
  ): tf.TensorInfo;
  recordAndSubmit: RecorderInternals["recordAndSubmit"];
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
  /** The lean `recordAndSubmit` (needs `uniforms` and `bindGroups`). */
  record?: boolean;
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

const METHODS = [
  "uploadToGPU",
  "makeUniforms",
  "runWebGPUProgram",
  "recordAndSubmit",
  "submitQueue",
  "ensureCommandEncoderReady",
  "endComputePassEncoder",
] as const;

/**
 * The tfjs internals this module needs, or the first one missing. A non-null answer means the
 * installed tfjs-backend-webgpu differs from the 4.22 layout these patches were written for.
 */
export function missingWebgpuInternals(backend: unknown): string | null {
  const b = backend as Partial<Record<string, unknown>>;
  for (const m of METHODS) if (typeof b[m] !== "function") return `method ${m}`;
  for (const f of ["device", "queue", "tensorMap", "bufferManager", "commandQueueOwnedIds", "pipelineCache"])
    if (b[f] == null) return `field ${f}`;
  if (typeof b.dispatchCountInPass !== "number") return "field dispatchCountInPass";
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
  useFusedKernels(); // fused GroupNorm(+SiLU)/LayerNorm/GEGLU kernels: src/backend/webgpu-fused.ts
  const env = process.env.HYPERNET_WEBGPU_PATCHES?.trim().toLowerCase();
  if (env === "0" || env === "off" || env === "false") return { installed: false, reason: "turned off by HYPERNET_WEBGPU_PATCHES" };
  const backend = tf.findBackend("webgpu") as unknown as BackendInternals | null;
  if (!backend) return { installed: false, reason: 'the tfjs "webgpu" backend is not initialised' };
  if (backend.__launchPatches) return { installed: true, patches: backend.__launchPatches };
  const missing = missingWebgpuInternals(backend);
  if (missing)
    return {
      installed: false,
      reason: `tfjs-backend-webgpu ${tf.version_core} lacks the ${missing} these patches were written for (4.22)`,
    };
  const patches = applyPatches(backend, { uploads: true, constants: true, uniforms: true, bindGroups: true, record: true, ...opts });
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
    writeBufferUploads: 0,
    constantHits: 0,
    constantMisses: 0,
    constantBytes: 0,
    privatisedOutputs: 0,
    uniformHits: 0,
    uniformMisses: 0,
    bindGroupHits: 0,
    bindGroupMisses: 0,
  };
  const restores: Array<() => void> = [];
  const applied: string[] = [];
  // An own property shadows the prototype's method or getter until remove() (defineProperty,
  // since plain assignment cannot shadow a getter such as device.limits).
  const own = (obj: object, name: string, value: unknown): void => {
    const before = Object.getOwnPropertyDescriptor(obj, name);
    Object.defineProperty(obj, name, { value, configurable: true, writable: true, enumerable: false });
    restores.push(() => {
      if (before) Object.defineProperty(obj, name, before);
      else delete (obj as Record<string, unknown>)[name];
    });
  };
  const constants = new ConstantBuffers(backend.device, 4096, 64 << 20, stats);
  if (opts.uploads || opts.constants) {
    own(backend, "uploadToGPU", makeUpload(backend, opts, constants, stats));
    own(backend, "runWebGPUProgram", makeRun(backend, constants, stats));
    applied.push(...(opts.uploads ? ["writeBuffer uploads"] : []), ...(opts.constants ? ["shared constant buffers"] : []));
  }
  const caches: LaunchCaches = { uniforms: new Map(), bindGroups: new Map(), maxEntries: 16384 };
  if (opts.uniforms) {
    own(backend, "makeUniforms", makeUniformCache(backend.device, caches, stats));
    applied.push("cached uniform buffers");
  }
  if (opts.bindGroups) {
    patchBindGroups(backend.device, backend.pipelineCache, caches, stats, own);
    patchBufferPool(backend.bufferManager as unknown as BufferPool, own);
    applied.push("cached bind groups and layouts");
  }
  if (opts.record && opts.uniforms && opts.bindGroups) {
    own(backend, "recordAndSubmit", makeRecorder(backend as unknown as RecorderInternals, caches, stats));
    // tfjs reads device.limits (a fresh native object each time) on every launch; limits never change.
    own(backend.device, "limits", (backend.device as unknown as { limits: object }).limits);
    applied.push("lean launch recording");
  }
  return {
    applied,
    stats,
    remove() {
      for (const r of restores.reverse()) r();
      restores.length = 0;
      constants.clear();
      caches.uniforms.clear();
      caches.bindGroups.clear();
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
function makeUpload(
  backend: BackendInternals,
  opts: Required<LaunchPatchOptions>,
  constants: ConstantBuffers,
  stats: LaunchPatchStats,
): (dataId: object) => void {
  const stock = backend.uploadToGPU;
  return function uploadToGPU(this: BackendInternals, dataId: object): void {
    const d = this.tensorMap.get(dataId);
    if (!d || d.resource != null) {
      stock.call(this, dataId);
      return;
    }
    const n = tf.util.sizeFromShape(d.shape);
    const data = n > 0 ? gpuArray(d, n) : null;
    if (!data) {
      stock.call(this, dataId);
      return;
    } // no values yet (an output), empty, or not a 32-bit type
    if (opts.constants && !writtenOutputs.has(dataId)) {
      const bits = commonBits(data);
      if (bits !== null) {
        d.resource = constants.get(d.dtype, bits, data);
        d.external = true; // never returned to tfjs's pool: other tensors share it
        d.values = null;
        return;
      }
    }
    if (!opts.uploads) {
      stock.call(this, dataId);
      return;
    }
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
      if (d?.external && constants.shared.has(d.resource as GpuBuffer)) {
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
