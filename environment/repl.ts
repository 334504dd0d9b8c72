/**
 * `npm run repl`: a Node REPL with the package loaded as `hn` (top-level `await` works).
 * Outside a notebook the display helpers write HTML/PNG files under `hypernet-output/` and print
 * their paths, so every notebook step also works here:
 *
 *     hn> await hn.useBackend()
 *     hn> const base = await hn.loadBase()
 *     hn> await hn.preview(base, "a large red circle in the center, white background", { seed: 1 })
 */
import * as repl from "node:repl";
import * as hn from "../src/index";

console.log(`hypernet-lab REPL — the API is \`hn\` (try hn.useBackend()); files go to ${hn.getOutputDir()}`);
const server = repl.start({ prompt: "hn> " });
server.context.hn = hn;
