/**
 * Rendering a run on a terminal: the progress line (epoch, step, loss, rate, ETA) and the default
 * printing of the trainer's messages. The loop itself prints nothing; `train` plugs these in when
 * asked (`progress`, no `onLog`), and the notebook verb `train` has its own live view.
 */
import type { StepEvent } from "./events";
import type { TrainOptions } from "./options";

/** Seconds as `1h05m`, `3m07s` or `12s` ("?" when unknown or negative). */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
}

/** The progress line of a step, A1111's console style: `[Epoch 0: 2/4] step 6/100 loss 0.1234 (avg …) lr … step/s ETA …`. */
export function progressLine(e: StepEvent): string {
  return `[Epoch ${e.epoch}: ${e.epochStep + 1}/${e.stepsPerEpoch}] step ${e.step}/${e.endStep} loss ${e.loss.toFixed(4)} (avg ${e.lossAverage.toFixed(4)}) lr ${e.lr} ${e.stepsPerSecond.toFixed(2)} step/s ETA ${formatDuration(e.etaSeconds)}`;
}

/**
 * Steps per second, smoothed (the first step's rate, then an exponential average with weight 0.1),
 * and the seconds left at that rate.
 */
export class StepClock {
  private last = Date.now();
  private rate = 0;

  /**
   * Note that a step just ended; returns the smoothed rate and the ETA for `stepsLeft` more steps.
   * The ETA is never negative: a count below 0 (a caller past its end step) counts as 0.
   */
  tick(stepsLeft: number): { stepsPerSecond: number; etaSeconds: number } {
    const now = Date.now();
    const dt = Math.max(1e-3, (now - this.last) / 1000);
    this.last = now;
    this.rate = this.rate === 0 ? 1 / dt : 0.9 * this.rate + 0.1 / dt;
    return { stepsPerSecond: this.rate, etaSeconds: Math.max(0, stepsLeft) / this.rate };
  }
}

/** A progress line on a stream: rewritten in place on a terminal, one line every ~2 s (and at the end) in a log. */
export interface ProgressPrinter {
  step(e: StepEvent): void;
  /** End a line being rewritten in place, so that other output starts on a fresh line. */
  breakLine(): void;
}

/** A progress printer on `stream` (default stderr). */
export function progressPrinter(stream: NodeJS.WriteStream = process.stderr): ProgressPrinter {
  let lastPrinted = 0;
  let open = false;
  return {
    step(e) {
      const now = Date.now();
      if (!(stream.isTTY || now - lastPrinted > 2000 || e.step === e.endStep)) return;
      lastPrinted = now;
      const line = progressLine(e);
      stream.write(stream.isTTY ? `\r${line}\x1b[K` : `${line}\n`);
      open = Boolean(stream.isTTY);
    },
    breakLine() {
      if (open) stream.write("\n");
      open = false;
    },
  };
}

/**
 * `opts` with the terminal rendering the caller asked for: messages to `console.log` when there is
 * no `onLog`, and with `progress` (default: when stderr is a terminal) the progress line after each
 * step's `onStep`. `finish` ends a progress line left open.
 */
export function withTerminalOutput(opts: TrainOptions): { opts: TrainOptions; finish(): void } {
  const printer = (opts.progress ?? Boolean(process.stderr.isTTY)) ? progressPrinter() : undefined;
  const log = opts.onLog ?? ((m: string) => console.log(m));
  const onStep = opts.onStep;
  return {
    opts: {
      ...opts,
      onLog: (m) => {
        printer?.breakLine();
        log(m);
      },
      onStep: (e) => {
        onStep?.(e);
        printer?.step(e);
      },
    },
    finish: () => printer?.breakLine(),
  };
}
