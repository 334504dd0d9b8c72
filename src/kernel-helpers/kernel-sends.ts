/**
 * One message at a time on the kernel's IOPub socket.
 *
 * tslab sends every IOPub message (outputs, display updates, the kernel's busy/idle status) with
 * zeromq's `send` and does not wait for it. zeromq's `send` is asynchronous and refuses a second
 * send while one is still pending, by throwing "Socket is busy writing" (EBUSY). A large output —
 * a training chart with its PNG — followed at once by the kernel's "idle" status at the end of the
 * cell then throws inside tslab, and the kernel dies (seen on a loaded machine: the notebook stops
 * with "Kernel died" after a training cell). Outputs are this package's to send, so it makes the
 * sends safe: {@link queueKernelSends} puts every send of the socket in one queue, each waiting for
 * the one before, and retries a send refused as busy (one that was started before the queue
 * existed) until the socket is free.
 */

/** The part of a zeromq socket the queue uses. */
export interface Sendable {
  send(message: unknown): Promise<void> | void;
}

/** How long a send refused as busy is retried before its error is reported (ms). */
const BUSY_LIMIT_MS = 60_000;

const tails = new WeakMap<object, Promise<void>>();
const queuedClasses = new WeakSet<object>();

function isBusy(e: unknown): boolean {
  return typeof e === "object" && e !== null && ((e as { code?: unknown }).code === "EBUSY" || (e as { errno?: unknown }).errno === 16);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Send `message`, retrying (1, 2, 4 … 50 ms apart) while the socket says it is busy. */
async function sendWhenFree(send: (m: unknown) => Promise<void> | void, message: unknown): Promise<void> {
  let waited = 0;
  for (let wait = 1; ; wait = Math.min(2 * wait, 50)) {
    try {
      await send(message);
      return;
    } catch (e) {
      if (!isBusy(e) || waited >= BUSY_LIMIT_MS) throw e;
    }
    await sleep(wait);
    waited += wait;
  }
}

function reportUnsent(e: unknown): void {
  process.stderr.write(`hypernet-lab: a kernel message was not sent: ${e instanceof Error ? e.message : String(e)}\n`);
}

/**
 * Queue the sends of `socket`'s class: each socket's messages are sent after its previous one
 * finished, in call order, and a busy socket is waited for. Errors other than busy are written to
 * stderr (the caller, tslab, does not look at them). zeromq freezes its socket objects, so the
 * queued `send` is defined on the socket's prototype (for tslab's IOPub socket, zeromq's
 * `Publisher`: the kernel's only publisher). Idempotent.
 */
export function queueKernelSends(socket: Sendable): void {
  const proto = Object.getPrototypeOf(socket) as Sendable | null;
  if (!proto || queuedClasses.has(proto)) return;
  queuedClasses.add(proto);
  const send = proto.send;
  Object.defineProperty(proto, "send", {
    configurable: true,
    writable: true,
    value: function queuedSend(this: Sendable, message: unknown): Promise<void> {
      const tail = (tails.get(this) ?? Promise.resolve()).then(() => sendWhenFree((m) => send.call(this, m), message)).catch(reportUnsent);
      tails.set(this, tail);
      return tail;
    },
  });
}

/** The part of tslab's `ZmqServer` (tslab/dist/jupyter.js) the patch uses. */
interface KernelServerClass {
  prototype: { publishStatus(this: { iopub?: Sendable }, ...args: unknown[]): unknown };
}

const patchedServers = new WeakSet<object>();

/**
 * Queue the IOPub sends of tslab's running kernel. The server object is not reachable from a
 * cell, but every shell message publishes a status through `ZmqServer.prototype.publishStatus`
 * with the server as `this`: the patched method queues `this.iopub` before sending, so from the
 * first status after this call (at the latest the "idle" that ends the current cell) every IOPub
 * message — tslab's and this package's — goes through one queue. Idempotent.
 */
export function queueTslabSends(server: KernelServerClass): void {
  const proto = server.prototype;
  if (patchedServers.has(proto)) return;
  patchedServers.add(proto);
  const original = proto.publishStatus;
  proto.publishStatus = function (this: { iopub?: Sendable }, ...args: unknown[]): unknown {
    if (this.iopub && typeof this.iopub.send === "function") queueKernelSends(this.iopub);
    return original.apply(this, args);
  };
}
