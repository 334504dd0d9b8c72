#!/usr/bin/env bash
# The tslab kernel command registered by setup-jupyter.sh. It starts tslab in the repository root,
# whatever folder the notebook is in: tslab compiles every imported .ts file with rootDir = its
# working directory, so from notebooks/ an `import ... from "../src"` fails ("is not under
# rootDir"). From the root, notebooks import the package as "./src", and relative paths in
# notebooks are relative to the repository root.
cd "$(dirname "$0")/.." || exit 1
exec node node_modules/tslab/bin/tslab "$@"
