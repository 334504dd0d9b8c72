/**
 * The IOPub send queue (`src/kernel-helpers/kernel-sends.ts`) against a stand-in for a zeromq
 * socket that behaves as zeromq's does: `send` is asynchronous and throws EBUSY ("Socket is busy
 * writing") when called while a send is pending. tslab's kernel died of exactly that after a large
 * output at the end of a cell.
 */
import { describe, expect, it, vi } from "vitest";
import { queueKernelSends, queueTslabSends } from "../src/kernel-helpers/kernel-sends";

/**
 * A socket whose sends take `ms` each and refuse to overlap; `delivered` lists what went out. The
 * queue patches a socket's class (zeromq freezes its sockets), so every test makes a class of its own.
 */
const socketClass = () =>
  class BusySocket {
    readonly delivered: unknown[] = [];
    /** Kept in an object of its own, so that the socket can be frozen as zeromq's are. */
    private readonly state = { pending: false };
    constructor(private readonly ms = 3) {}
    send(message: unknown): Promise<void> {
      if (this.state.pending)
        throw Object.assign(new Error("Socket is busy writing; only one send operation may be in progress at any time"), {
          code: "EBUSY",
          errno: 16,
        });
      this.state.pending = true;
      return new Promise((resolve) =>
        setTimeout(() => {
          this.state.pending = false;
          this.delivered.push(message);
          resolve();
        }, this.ms),
      );
    }
  };

describe("queueKernelSends", () => {
  it("the stand-in refuses an overlapping send, as zeromq does", () => {
    const s = new (socketClass())();
    void s.send("a");
    expect(() => s.send("b")).toThrow(/busy writing/);
  });

  it("sends back-to-back messages one after the other, in call order, without an error, on a frozen socket", async () => {
    const s = Object.freeze(new (socketClass())());
    queueKernelSends(s);
    const sent = Array.from({ length: 20 }, (_, i) => s.send(`m${i}`));
    await Promise.all(sent);
    expect(s.delivered).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`));
  });

  it("waits for a send that was started before the queue existed (retried while busy)", async () => {
    const s = new (socketClass())(20);
    const early = s.send("large output");
    queueKernelSends(s);
    await s.send("status: idle");
    await early;
    expect(s.delivered).toEqual(["large output", "status: idle"]);
  });

  it("is idempotent, keeps one queue per socket, and a failed send is reported without stopping the ones after it", async () => {
    const Busy = socketClass();
    let failNext = true;
    class Failing extends Busy {
      override send(m: unknown): Promise<void> {
        if (failNext && m === "lost") {
          failNext = false;
          throw new Error("socket closed");
        }
        return super.send(m);
      }
    }
    const t = new Failing();
    queueKernelSends(t);
    const once = Failing.prototype.send;
    queueKernelSends(t);
    expect(Failing.prototype.send).toBe(once);
    const other = new Failing();
    const err = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    try {
      // Two sockets of one class: each keeps its own order; their sends may interleave.
      await Promise.all([t.send("lost"), t.send("after"), other.send("x"), other.send("y")]);
      expect(t.delivered).toEqual(["after"]);
      expect(other.delivered).toEqual(["x", "y"]);
      expect(err.mock.calls.map((c) => String(c[0])).join("")).toMatch(/a kernel message was not sent: socket closed/);
    } finally {
      err.mockRestore();
    }
  });
});

describe("queueTslabSends", () => {
  it("queues the server's IOPub socket from its next status message on, keeping publishStatus's behaviour", async () => {
    class Server {
      published: unknown[] = [];
      constructor(readonly iopub: InstanceType<ReturnType<typeof socketClass>>) {}
      publishStatus(status: string, parent: string): void {
        this.published.push([status, parent]);
        void this.iopub.send(`status ${status} for ${parent}`);
      }
    }
    const Busy = socketClass();
    const server = new Server(new Busy(10));
    // Unpatched: an output still being sent, then the idle status, throws (the kernel died of this).
    void server.iopub.send("chart");
    expect(() => server.publishStatus("idle", "cell 1")).toThrow(/busy writing/);
    await new Promise((r) => setTimeout(r, 30));

    queueTslabSends(Server as unknown as Parameters<typeof queueTslabSends>[0]);
    queueTslabSends(Server as unknown as Parameters<typeof queueTslabSends>[0]); // idempotent: one wrapper
    void server.iopub.send("chart 2"); // started before the queue (as tslab's writes before the first status)
    server.publishStatus("idle", "cell 2");
    server.iopub.send("stream");
    server.publishStatus("busy", "cell 3");
    await new Promise((r) => setTimeout(r, 120));
    expect(server.iopub.delivered).toEqual(["chart", "chart 2", "status idle for cell 2", "stream", "status busy for cell 3"]);
    expect(server.published).toEqual([
      ["idle", "cell 1"],
      ["idle", "cell 2"],
      ["busy", "cell 3"],
    ]);
  });
});
