/** Running the command-line tool in-process from tests. */
import { main } from "../../src/cli/main";

/** What one CLI call returned: its exit code and everything it printed to stdout and stderr. */
export interface CliResult {
  code: number;
  out: string;
  err: string;
}

/**
 * Runs one CLI call in this process and captures its console output (console.log → out,
 * console.error → err), restoring the console afterwards even when the call throws.
 */
export async function runCli(argv: string[]): Promise<CliResult> {
  const out: string[] = [];
  const err: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    return { code: await main(argv), out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}
