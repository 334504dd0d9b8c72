/**
 * Counting what the tfjs WebGPU backend asks of the GPU: dispatches, submits, CPU→GPU uploads
 * (and how many are single values), uniform writes, buffer and bind-group creations, read-backs.
 *
 * Why: on the bench model a training step is thousands of small launches, and the host cost of
 * each launch (not the arithmetic) decides the speed. These counts make that cost visible on any
 * machine — Dawn's `null` backend, lavapipe or a real GPU — without forking tfjs.
 *
 * How: the methods of Dawn's WebGPU classes (GPUDevice, GPUQueue, GPUCommandEncoder,
 * GPUComputePassEncoder, GPUBuffer) are wrapped on their prototypes, found through the device the
 * tfjs backend holds. A wrapper only increments a counter (and, with `timeNative`, adds the time
 * spent inside the native call), then calls the original. {@link WebgpuCounters.stop} puts the
 * originals back. Install counters after any instance-level patches (webgpu-launch.ts) so both
 * layers are seen; prototype wrappers count the native calls whatever wraps them on the instance.
 *
 * What counts as an upload: a buffer created mapped (`mappedAtCreation`, the stock tfjs upload
 * path: the buffer itself or a fresh staging buffer) or a `queue.writeBuffer` into a buffer that
 * is not a uniform buffer. A scalar upload moves 4 bytes (one float32/int32/bool element).
 */
import * as tf from "@tensorflow/tfjs";

/** GPUBufferUsage bits used here (WebGPU spec values). */
const USAGE_MAP_READ = 0x1;
const USAGE_UNIFORM = 0x40;

/** Per-method totals; all counts since install or the last {@link WebgpuCounters.reset}. */
export interface WebgpuCounts {
  /** `dispatchWorkgroups` calls: one per GPU kernel launch. */
  dispatches: number;
  /** `queue.submit` calls. */
  submits: number;
  /** Command buffers handed to `submit`. */
  commandBuffers: number;
  /** CPU→GPU transfers of tensor data (mapped-at-creation buffers + non-uniform writeBuffer). */
  uploads: number;
  /** Of {@link uploads}, those moving 4 bytes (a single value). */
  scalarUploads: number;
  /** Bytes moved by {@link uploads}. */
  uploadBytes: number;
  /** `writeBuffer` calls into uniform buffers (tfjs writes the shapes/strides of every launch). */
  uniformWrites: number;
  /** `device.createBuffer` calls. */
  createBuffer: number;
  /** Of those, created with `mappedAtCreation: true`. */
  createBufferMapped: number;
  /** `device.createBindGroup` calls. */
  createBindGroup: number;
  /** `getBindGroupLayout` calls on compute pipelines. */
  getBindGroupLayout: number;
  /** Compute pipelines compiled (sync or async). */
  createComputePipeline: number;
  /** `beginComputePass` calls. */
  computePasses: number;
  /** `copyBufferToBuffer` calls. */
  copies: number;
  /** `mapAsync` calls for reading (GPU→CPU read-backs). */
  readbacks: number;
  /** Milliseconds spent inside the wrapped native calls (only with `timeNative`; else 0). */
  nativeMs: number;
}

/** Native time per method name (only with `timeNative`). */
export type NativeTimes = Record<string, { calls: number; ms: number }>;

/** A live set of counters on the WebGPU backend's device. */
export interface WebgpuCounters {
  /** The counts so far (a live object; copy it with {@link snapshot}). */
  readonly counts: WebgpuCounts;
  /** Native time per method (empty unless installed with `timeNative`). */
  readonly native: NativeTimes;
  /** A copy of the counts. */
  snapshot(): WebgpuCounts;
  /** Zero every count. */
  reset(): void;
  /** Remove the wrappers (the prototypes get their original methods back). Idempotent. */
  stop(): void;
}

/** Options for {@link installWebgpuCounters}. */
export interface CounterOptions {
  /** Also time every wrapped native call with `performance.now()` (adds ~0.1 µs per call). */
  timeNative?: boolean;
}

type Fn = (...args: unknown[]) => unknown;
type Proto = Record<string, unknown>;

/** The parts of tfjs's WebGPUBackend this module reads. */
interface BackendWithDevice {
  device: { queue: object; createCommandEncoder(): { beginComputePass(d?: object): object; finish(): unknown } };
}

function zeroCounts(): WebgpuCounts {
  return {
    dispatches: 0,
    submits: 0,
    commandBuffers: 0,
    uploads: 0,
    scalarUploads: 0,
    uploadBytes: 0,
    uniformWrites: 0,
    createBuffer: 0,
    createBufferMapped: 0,
    createBindGroup: 0,
    getBindGroupLayout: 0,
    createComputePipeline: 0,
    computePasses: 0,
    copies: 0,
    readbacks: 0,
    nativeMs: 0,
  };
}

/** The tfjs `webgpu` backend instance, or a clear error when it is not initialised. */
export function webgpuBackendInstance(): BackendWithDevice {
  const b = tf.findBackend("webgpu") as unknown as Partial<BackendWithDevice> | null;
  if (!b?.device) {
    throw new Error('the tfjs "webgpu" backend is not initialised: call useBackend("webgpu") (or tf.setBackend("webgpu")) first');
  }
  return b as BackendWithDevice;
}

/** Bytes a `writeBuffer(buffer, offset, data, dataOffset?, size?)` call moves. */
function writtenBytes(data: unknown, dataOffset: unknown, size: unknown): number {
  const view = data as { byteLength: number; BYTES_PER_ELEMENT?: number };
  const unit = view.BYTES_PER_ELEMENT ?? 1; // ArrayBuffer offsets/sizes are in bytes, typed arrays' in elements
  if (typeof size === "number") return size * unit;
  return view.byteLength - (typeof dataOffset === "number" ? dataOffset * unit : 0);
}

/**
 * Start counting the GPU calls of the tfjs `webgpu` backend (which must be initialised). Only one
 * set of counters can be active at a time: installing a second one while the first runs throws.
 */
export function installWebgpuCounters(opts: CounterOptions = {}): WebgpuCounters {
  if (active) throw new Error("WebGPU counters are already installed; stop() the first set before installing another");
  const backend = webgpuBackendInstance();
  const device = backend.device as unknown as Proto;
  const encoder = backend.device.createCommandEncoder();
  const pass = encoder.beginComputePass({});
  const protos = {
    device: Object.getPrototypeOf(device) as Proto,
    queue: Object.getPrototypeOf(backend.device.queue) as Proto,
    encoder: Object.getPrototypeOf(encoder) as Proto,
    pass: Object.getPrototypeOf(pass) as Proto,
    buffer: (globalThis as unknown as { GPUBuffer?: { prototype: Proto } }).GPUBuffer?.prototype,
  };
  (pass as { end(): void }).end(); // the probe encoder is dropped unsubmitted
  const counts = zeroCounts();
  const native: NativeTimes = {};
  const restores: Array<() => void> = [];
  const wrap = (proto: Proto | undefined, name: string, count: (args: unknown[]) => void): void => {
    if (!proto) return;
    const original = proto[name];
    if (typeof original !== "function")
      throw new Error(`WebGPU counters: ${name} is not a method of the Dawn object (webgpu package changed?)`);
    const orig = original as Fn;
    const timed = opts.timeNative === true;
    const slot = (native[name] ??= { calls: 0, ms: 0 });
    proto[name] = function (this: unknown, ...args: unknown[]): unknown {
      count(args);
      if (!timed) return orig.apply(this, args);
      const t0 = performance.now();
      try {
        return orig.apply(this, args);
      } finally {
        const dt = performance.now() - t0;
        slot.calls++;
        slot.ms += dt;
        counts.nativeMs += dt;
      }
    };
    restores.push(() => {
      proto[name] = original;
    });
  };
  wrap(protos.pass, "dispatchWorkgroups", () => counts.dispatches++);
  wrap(protos.pass, "setBindGroup", () => undefined);
  wrap(protos.pass, "setPipeline", () => undefined);
  wrap(protos.pass, "end", () => undefined);
  wrap(protos.encoder, "beginComputePass", () => counts.computePasses++);
  wrap(protos.encoder, "copyBufferToBuffer", () => counts.copies++);
  wrap(protos.encoder, "finish", () => undefined);
  wrap(protos.device, "createCommandEncoder", () => undefined);
  wrap(protos.queue, "submit", (a) => {
    counts.submits++;
    counts.commandBuffers += Array.isArray(a[0]) ? a[0].length : 0;
  });
  wrap(protos.queue, "writeBuffer", (a) => {
    const usage = (a[0] as { usage: number }).usage;
    if (usage & USAGE_UNIFORM) {
      counts.uniformWrites++;
      return;
    }
    const bytes = writtenBytes(a[2], a[3], a[4]);
    counts.uploads++;
    counts.uploadBytes += bytes;
    if (bytes === 4) counts.scalarUploads++;
  });
  wrap(protos.device, "createBuffer", (a) => {
    const d = a[0] as { size: number; usage: number; mappedAtCreation?: boolean };
    counts.createBuffer++;
    if (d.mappedAtCreation) {
      counts.createBufferMapped++;
      counts.uploads++;
      counts.uploadBytes += d.size;
      if (d.size === 4) counts.scalarUploads++;
    }
  });
  wrap(protos.device, "createBindGroup", () => counts.createBindGroup++);
  wrap(protos.device, "createComputePipeline", () => counts.createComputePipeline++);
  wrap(protos.device, "createComputePipelineAsync", () => counts.createComputePipeline++);
  wrap(protos.buffer, "mapAsync", (a) => {
    if ((Number(a[0]) & USAGE_MAP_READ) !== 0) counts.readbacks++; // GPUMapMode.READ = 1
  });
  // getBindGroupLayout lives on GPUComputePipeline; its prototype is reached through the global class.
  wrap(
    (globalThis as unknown as { GPUComputePipeline?: { prototype: Proto } }).GPUComputePipeline?.prototype,
    "getBindGroupLayout",
    () => counts.getBindGroupLayout++,
  );
  let stopped = false;
  const counters: WebgpuCounters = {
    counts,
    native,
    snapshot: () => ({ ...counts }),
    // The wrappers hold the `native` slots: reset zeroes them in place.
    reset() {
      Object.assign(counts, zeroCounts());
      for (const v of Object.values(native)) {
        v.calls = 0;
        v.ms = 0;
      }
    },
    stop() {
      if (stopped) return;
      stopped = true;
      for (const r of restores.reverse()) r();
      active = null;
    },
  };
  active = counters;
  return counters;
}

let active: WebgpuCounters | null = null;
