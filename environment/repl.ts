/**
 * `npm run repl`: a Node REPL with the package loaded as `hn` (top-level `await` works).
 * Outside a notebook the display helpers write HTML/PNG files under `hypernet-output/` and print
 * their paths, so every notebook step also works here:
 *
 *     hn> const base = await hn.loadBaseModel()
 *     hn> await hn.txt2img(base, { prompt: "a large red circle in the center, white background", seed: 1 })
 *
 * The backend is chosen before the prompt appears: the wasm backend's loader registers a process
 * `uncaughtException` listener, which Node forbids inside a REPL, so initialised from a REPL line it
 * would fail and leave the 25–100× slower pure-JS backend. `HYPERNET_BACKEND` picks another one.
 */
import * as repl from "node:repl";
import * as hn from "../src/index";

async function main(): Promise<void> {
  await hn.useBackend();
  console.log(`hypernet-lab REPL — the API is \`hn\`; files go to ${hn.display.getOutputDir()}`);
  const server = repl.start({ prompt: "hn> " });
  server.context.hn = hn;
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
});
