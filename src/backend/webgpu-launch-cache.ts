/**
 * The caching half of the WebGPU launch patches (webgpu-launch.ts installs them): uniform buffers
 * written once per distinct content, bind groups and bind-group layouts reused, tfjs's buffer pool
 * made to hand out buffers in a fixed order (so the same step binds the same buffers and its bind
 * groups repeat), and a lean `recordAndSubmit` that does all of that without building tfjs's
 * per-launch uniform and binding objects.
 */
import * as tf from "@tensorflow/tfjs";

// GPUBufferUsage bits (WebGPU spec values).
const COPY_DST = 0x8;
const UNIFORM = 0x40;

/** The few Dawn objects used here, typed structurally (the `webgpu` package is optional). */
export interface GpuBuffer {
  readonly size: number;
  readonly usage: number;
}
export interface GpuQueue {
  writeBuffer(buffer: GpuBuffer, offset: number, data: ArrayBuffer | ArrayBufferView, dataOffset?: number, size?: number): void;
}
export interface GpuPipeline {
  getBindGroupLayout(index: number): object;
}
export interface GpuPass {
  setPipeline(p: GpuPipeline): void;
  setBindGroup(i: number, g: object): void;
  dispatchWorkgroups(x: number, y?: number, z?: number): void;
}
export interface GpuDevice {
  queue: GpuQueue;
  createBuffer(d: { size: number; usage: number; mappedAtCreation?: boolean }): GpuBuffer;
  createBindGroup(d: BindGroupDescriptor): object;
  createComputePipeline(d: object): GpuPipeline;
  createComputePipelineAsync(d: object): Promise<GpuPipeline>;
}
export interface BindGroupDescriptor {
  layout: object;
  entries: Array<{ binding: number; resource: unknown }>;
}

/** One uniform field as tfjs passes it to `makeUniforms`. */
export interface UniformField {
  type: string;
  data: number[];
}

/** A uniform buffer binding as tfjs's `makeUniforms` returns it. */
export interface UniformBinding {
  offset: number;
  size: number;
  buffer: GpuBuffer;
}

/** Hit/miss counters these caches keep. */
export interface CacheStats {
  uniformHits: number;
  uniformMisses: number;
  bindGroupHits: number;
  bindGroupMisses: number;
}

/** The caches of one backend (bounded: the oldest entry goes first). */
export interface LaunchCaches {
  uniforms: Map<string, UniformBinding>;
  bindGroups: Map<string, object>;
  maxEntries: number;
}

/** Sets an own property and records how to undo it (see webgpu-launch.ts). */
export type Own = (obj: object, name: string, fn: unknown) => void;

/** Keep a bind group under `key`, dropping the oldest when full. */
function remember(cache: LaunchCaches, key: string, group: object): object {
  if (cache.bindGroups.size >= cache.maxEntries) cache.bindGroups.delete(cache.bindGroups.keys().next().value as string);
  cache.bindGroups.set(key, group);
  return group;
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
export function uniformKey(fields: UniformField[]): string {
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
export function makeUniformCache(device: GpuDevice, cache: LaunchCaches, stats: CacheStats): (fields: UniformField[]) => UniformBinding {
  return function makeUniforms(fields: UniformField[]): UniformBinding {
    const key = uniformKey(fields);
    const hit = cache.uniforms.get(key);
    if (hit) {
      stats.uniformHits++;
      return hit;
    }
    return cacheUniform(device, cache, stats, key, fields);
  };
}

/** Write `fields` into a new uniform buffer and keep it under `key` (oldest entry dropped first). */
function cacheUniform(device: GpuDevice, cache: LaunchCaches, stats: CacheStats, key: string, fields: UniformField[]): UniformBinding {
  stats.uniformMisses++;
  const bytes = uniformBytes(fields);
  const buffer = device.createBuffer({ size: bytes.byteLength, usage: UNIFORM | COPY_DST });
  device.queue.writeBuffer(buffer, 0, bytes, 0, bytes.byteLength);
  const binding = { offset: 0, size: bytes.byteLength, buffer };
  if (cache.uniforms.size >= cache.maxEntries) cache.uniforms.delete(cache.uniforms.keys().next().value as string);
  cache.uniforms.set(key, binding);
  return binding;
}

/**
 * Cache `getBindGroupLayout(0)` per pipeline and `createBindGroup` per (layout, bound buffers,
 * offsets, sizes). Bind groups are immutable and may be reused across submits; a cached one is
 * only found again when exactly the same buffer objects are bound.
 */
export function patchBindGroups(
  device: GpuDevice,
  pipelineCache: Record<string, unknown> | undefined,
  cache: LaunchCaches,
  stats: CacheStats,
  own: Own,
): void {
  const memoLayout = (p: GpuPipeline): GpuPipeline => {
    if (Object.hasOwn(p, "getBindGroupLayout")) return p; // already memoised
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
  for (const p of Object.values(pipelineCache ?? {})) {
    if (p && typeof (p as GpuPipeline).getBindGroupLayout === "function") memoLayout(p as GpuPipeline);
  }
  // The originals are looked up on the prototype at each call (not captured now), so wrappers
  // installed there later (webgpu-counters.ts) still see every native call.
  const proto = Object.getPrototypeOf(device) as GpuDevice;
  own(device, "createComputePipeline", (d: object) => memoLayout(proto.createComputePipeline.call(device, d)));
  own(device, "createComputePipelineAsync", async (d: object) => memoLayout(await proto.createComputePipelineAsync.call(device, d)));
  const createBindGroup = (d: BindGroupDescriptor): object => proto.createBindGroup.call(device, d);
  own(device, "createBindGroup", (d: BindGroupDescriptor): object => {
    let key = String(idOf(d.layout));
    for (const e of d.entries) {
      const r = e.resource as { buffer?: object; offset?: number; size?: number } | null;
      if (!r || typeof r !== "object" || !r.buffer) return createBindGroup(d); // textures: not cached
      key += `|${e.binding}:${idOf(r.buffer)}:${r.offset ?? 0}:${r.size ?? -1}`;
    }
    const hit = cache.bindGroups.get(key);
    if (hit) {
      stats.bindGroupHits++;
      return hit;
    }
    stats.bindGroupMisses++;
    return remember(cache, key, createBindGroup(d));
  });
}

/** A stable small number per GPU object (kept on the object: cheaper than a WeakMap lookup). */
const ID = Symbol("hypernet.gpuObjectId");
let nextId = 1;
export function idOf(o: object): number {
  const tagged = o as { [ID]?: number };
  return (tagged[ID] ??= nextId++);
}

/** tfjs's BufferManager free lists: `${size}_${usage}` → buffers, the next one handed out last. */
export interface BufferPool {
  freeBuffers: Map<string, GpuBuffer[]>;
  releaseBuffer(buffer: GpuBuffer, reuse?: boolean): void;
}

/**
 * Make tfjs's buffer pool hand out the free buffer with the lowest id (each free list kept sorted,
 * lowest id last, where `acquireBuffer` pops). The stock pool pops the most recently released
 * buffer, so which buffer a launch gets drifts from step to step and bind groups never repeat;
 * with a fixed preference the same step gets the same buffers, and its bind groups are reused.
 */
export function patchBufferPool(pool: BufferPool, own: Own): void {
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

/** The parts of a tfjs WebGPU program the recorder reads. */
interface Program {
  pipeline: unknown;
  pixelsOpType?: unknown;
  size?: boolean;
  outputComponent?: number;
  outputShape: number[];
  dispatch: number[];
}

/** The backend internals `recordAndSubmit` uses (tfjs-backend-webgpu 4.22). */
export interface RecorderInternals {
  device: GpuDevice;
  tensorMap: { get(dataId: object): { resource: unknown } | undefined };
  commandQueueOwnedIds: WeakSet<object>;
  commandEncoder: { beginComputePass(d: object): GpuPass } | null;
  computePassEncoder: GpuPass | null;
  dispatchCountInPass: number;
  activeTimers?: unknown;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  recordAndSubmit(program: object, output: tf.TensorInfo, inputs: tf.TensorInfo[], uniforms?: UniformField[]): void;
}

/**
 * A lean `recordAndSubmit`: the same commands as tfjs 4.22's (one compute pass per submit batch,
 * setPipeline, setBindGroup, dispatchWorkgroups, a submit every WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE
 * launches), but the uniform buffer is found by the shapes it is made of and the bind group by the
 * buffers it binds, so a repeated launch builds no uniform fields, strides, bytes or binding
 * objects. Profiling (`activeTimers`), the pixel programs and parallel compilation take tfjs's own
 * path. The uniform content is tfjs's: NaN, Infinity, then each input's and the output's shape and
 * strides, the flat size if the program asks for it, then the program's own uniforms.
 */
export function makeRecorder(backend: RecorderInternals, cache: LaunchCaches, stats: CacheStats): RecorderInternals["recordAndSubmit"] {
  const stock = backend.recordAndSubmit;
  const device = backend.device;
  const proto = Object.getPrototypeOf(device) as GpuDevice;
  // A GPUBuffer (not a texture): it has mapAsync. A prototype lookup, cheaper than `instanceof`
  // against Dawn's native class.
  const isBuffer = (r: unknown): r is object => r != null && typeof (r as { mapAsync?: unknown }).mapAsync === "function";
  return function recordAndSubmit(
    this: RecorderInternals,
    p: object,
    output: tf.TensorInfo,
    inputs: tf.TensorInfo[],
    defined?: UniformField[],
  ): void {
    const program = p as Program;
    if (program.pixelsOpType != null || this.activeTimers != null || program.pipeline instanceof Promise) {
      stock.call(this, p, output, inputs, defined);
      return;
    }
    const buffers: object[] = [];
    const outBuffer = this.tensorMap.get(output.dataId)?.resource;
    if (!isBuffer(outBuffer)) {
      stock.call(this, p, output, inputs, defined);
      return;
    }
    buffers.push(outBuffer);
    for (const t of inputs) {
      const b = this.tensorMap.get(t.dataId)?.resource;
      if (!isBuffer(b)) {
        stock.call(this, p, output, inputs, defined);
        return;
      } // a texture input
      buffers.push(b);
    }
    // The uniform buffer, keyed by what its content is made of.
    let key = "";
    for (const t of inputs) key += `${t.shape.join(",")};`;
    key += `${output.shape.join(",")};`;
    let size = -1;
    if (program.size) {
      const n = tf.util.sizeFromShape(program.outputShape);
      size = program.outputComponent ? n / program.outputComponent : n;
    }
    key += `${size}|`;
    if (defined) key += uniformKey(defined);
    let uniform = cache.uniforms.get(key);
    if (uniform) stats.uniformHits++;
    else {
      const fields: UniformField[] = [
        { type: "float32", data: [NaN] },
        { type: "float32", data: [Infinity] },
      ];
      for (const t of [...inputs, output])
        fields.push({ type: "int32", data: t.shape }, { type: "int32", data: tf.util.computeStrides(t.shape) });
      if (size >= 0) fields.push({ type: "int32", data: [size] });
      if (defined) fields.push(...defined);
      uniform = cacheUniform(device, cache, stats, key, fields);
    }
    // The bind group, keyed by the layout and the buffers it binds.
    const pipeline = program.pipeline as GpuPipeline;
    const layout = pipeline.getBindGroupLayout(0);
    let gkey = `${idOf(layout)}`;
    for (const b of buffers) gkey += `,${idOf(b)}`;
    gkey += `,${idOf(uniform.buffer)}`;
    let group = cache.bindGroups.get(gkey);
    if (group) stats.bindGroupHits++;
    else {
      stats.bindGroupMisses++;
      const entries = buffers.map((buffer, binding) => ({ binding, resource: { buffer } }));
      entries.push({ binding: buffers.length, resource: uniform as unknown as { buffer: object } });
      group = remember(cache, gkey, proto.createBindGroup.call(device, { layout, entries }));
    }
    for (const t of inputs) this.commandQueueOwnedIds.add(t.dataId);
    this.commandQueueOwnedIds.add(output.dataId);
    this.ensureCommandEncoderReady();
    if (!this.computePassEncoder) this.computePassEncoder = this.commandEncoder!.beginComputePass({});
    const pass = this.computePassEncoder;
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(program.dispatch[0]!, program.dispatch[1], program.dispatch[2]);
    this.dispatchCountInPass++;
    if (tf.env().getNumber("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE") <= this.dispatchCountInPass) {
      this.endComputePassEncoder();
      this.submitQueue();
    }
  };
}
