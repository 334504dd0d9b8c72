#!/usr/bin/env node
// The `hypernet` command. Runs the TypeScript sources through ts-node (types are checked by
// `npm test`, so transpile-only keeps start-up fast).
const path = require("node:path");
require("ts-node").register({ transpileOnly: true, project: path.join(__dirname, "..", "tsconfig.json") });
require("../src/cli/main.ts")
  .main(process.argv.slice(2))
  .then((code) => {
    process.exitCode = code;
  });
