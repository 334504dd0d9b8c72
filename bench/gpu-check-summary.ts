/**
 * The summary of a `bench/gpu-check.sh` run: reads every `*.jsonl` the runs wrote into a results
 * folder (one file per run: `tfjs-*.jsonl` from bench.ts, `torch-*.jsonl` from torch_bench.py),
 * writes `summary.json` beside them and prints a short table: step times tfjs vs PyTorch, the
 * launch counts and host costs per step, and the micro-benchmarks with their GFLOP/s.
 *
 *     node bench/gpu-check-summary.js RESULTS_DIR      (compiled into the GPU check's pack)
 *     npx ts-node --transpile-only bench/gpu-check-summary.ts RESULTS_DIR
 */
import * as fs from "node:fs";
import * as path from "node:path";

type Row = Record<string, unknown>;

/** Every JSON line of every `.jsonl` file in `dir`, tagged with its run (the file's name). */
export function readRuns(dir: string): Row[] {
  const rows: Row[] = [];
  for (const f of fs
    .readdirSync(dir)
    .filter((n) => n.endsWith(".jsonl"))
    .sort()) {
    const run = f.replace(/\.jsonl$/, "");
    for (const line of fs.readFileSync(path.join(dir, f), "utf8").split("\n")) {
      if (!line.trim().startsWith("{")) continue;
      try {
        rows.push({ run, ...(JSON.parse(line) as Row) });
      } catch {
        rows.push({ run, case: "unparsable_line", line: line.slice(0, 200) });
      }
    }
  }
  return rows;
}

const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
const fmt = (v: unknown, digits = 1): string => {
  const n = num(v);
  return n === null ? "–" : n.toLocaleString("en-US", { maximumFractionDigits: digits });
};

interface LaunchSide {
  counts: Record<string, number>;
  host_ms: number;
  host_cpu_us_per_dispatch: number;
  host_us_per_dispatch: number;
  drain_ms: number;
  tfjs_kernels: number;
}

/** "on / off": whether a WebGPU run had the launch patches and the fused kernels ("–" elsewhere). */
function flags(r: Row): string {
  if (!("launch_patches" in r)) return "–";
  const patches = Array.isArray(r.launch_patches) && r.launch_patches.length > 0;
  // Runs from before the attention and AdamW kernels have no such fields.
  const off = [r.fused_attention === false ? "attention" : "", r.fused_adamw === false ? "AdamW" : ""].filter(Boolean);
  const fused = r.fused_kernels ? (off.length ? `on, not ${off.join("/")}` : "on") : "off";
  return `${patches ? "on" : "off"} / ${fused}`;
}

/** The summary object and its printed form. */
export function summarise(rows: Row[]): { summary: Row; text: string } {
  const lines: string[] = [];
  const steps = rows.filter((r) => r.case === "unet_step");
  lines.push("Step times (median ms; train = hypernetwork training step, sample = one UNet forward):");
  lines.push(["run", "backend", "patches / fused", "config", "b", "size", "train", "sample"].join(" | "));
  for (const r of steps) {
    const config = String(r.config ?? "")
      .replace(/^.*\//, "")
      .replace(/\.config\.json$/, "");
    lines.push([r.run, r.backend, flags(r), config, r.batch, r.size, fmt(r.train_step_ms), fmt(r.sample_step_ms)].join(" | "));
  }
  const launches = rows.filter((r) => r.case === "webgpu_launches");
  if (launches.length) {
    lines.push("", "WebGPU launches per step (patches on/off; host = queuing on the CPU, drain = waiting for the GPU and the read-back):");
    lines.push(
      [
        "run",
        "step",
        "patches / fused",
        "dispatches",
        "submits",
        "uploads (scalars)",
        "uniform writes",
        "bind groups",
        "host ms",
        "µs/dispatch (CPU)",
        "drain ms",
      ].join(" | "),
    );
    for (const r of launches) {
      for (const kind of ["train_step", "sample_step"] as const) {
        const s = r[kind] as LaunchSide | undefined;
        if (!s) continue;
        const c = s.counts;
        lines.push(
          [
            r.run,
            kind.replace("_step", ""),
            flags(r),
            c.dispatches,
            c.submits,
            `${c.uploads} (${c.scalarUploads})`,
            c.uniformWrites,
            c.createBindGroup,
            fmt(s.host_ms),
            `${fmt(s.host_us_per_dispatch)} (${fmt(s.host_cpu_us_per_dispatch)})`,
            fmt(s.drain_ms),
          ].join(" | "),
        );
      }
    }
  }
  const micro = rows.filter((r) => typeof r.gflops === "number");
  if (micro.length) {
    lines.push("", "Micro-benchmarks (median ms, GFLOP/s):");
    const names = [...new Set(micro.map((r) => String(r.case)))];
    const backends = [...new Set(micro.map((r) => String(r.backend)))];
    lines.push(["case", ...backends].join(" | "));
    for (const n of names) {
      const cells = backends.map((b) => {
        const r = micro.find((m) => m.case === n && m.backend === b);
        const g = num(r?.gflops);
        return r ? `${fmt(r.median_ms)} ms, ${fmt(g, g !== null && g < 10 ? 1 : 0)}` : "–";
      });
      lines.push([n, ...cells].join(" | "));
    }
  }
  const checks = rows.filter((r) => r.case === "kernel_check");
  if (checks.length) {
    lines.push("", "Fused kernels against their composites on this device (error relative to the largest value; ms median):");
    lines.push(
      ["kernel", "shape", "ok", "rel. error (out, grads…)", "fused ms", "composite ms", "fused fwd+bwd", "composite fwd+bwd"].join(" | "),
    );
    for (const r of checks) {
      const ok = r.error ? `FAILED: ${String(r.error)}` : r.ok === undefined ? "(timed only)" : r.ok ? "yes" : "NO";
      const err = Array.isArray(r.rel_err) ? r.rel_err.map((e) => Number(e).toExponential(1)).join(", ") : "–";
      const cells = [r.fused_ms, r.composite_ms, r.fused_fwd_bwd_ms, r.composite_fwd_bwd_ms].map((v) => fmt(v, 2));
      lines.push([r.kernel, JSON.stringify(r.shape), ok, err, ...cells].join(" | "));
    }
  }
  const problems = rows.filter(
    (r) => r.case === "leak" || r.case === "unparsable_line" || r.case === "run_failed" || r.case === "run_skipped",
  );
  if (problems.length) {
    lines.push("", "Problems:");
    for (const p of problems) lines.push(`  ${p.run}: ${p.case} ${JSON.stringify({ ...p, run: undefined, case: undefined })}`);
  }
  const devices = [...new Set(rows.map((r) => r.device).filter(Boolean))];
  return { summary: { devices, steps, launches, micro, kernel_checks: checks, problems }, text: lines.join("\n") };
}

function main(): void {
  const dir = process.argv[2];
  if (!dir || !fs.existsSync(dir)) {
    console.error(`usage: gpu-check-summary RESULTS_DIR (got ${dir ?? "nothing"}: not a folder)`);
    process.exit(2);
  }
  const { summary, text } = summarise(readRuns(dir));
  fs.writeFileSync(path.join(dir, "summary.json"), JSON.stringify(summary, null, 1));
  fs.writeFileSync(path.join(dir, "summary.txt"), text + "\n");
  console.log(text);
}

if (require.main === module) main();
