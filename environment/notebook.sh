#!/usr/bin/env bash
# `npm run notebook`: start Jupyter Notebook (Debian's, /usr/bin/python3) on notebooks/ with the
# tslab kernel. Extra arguments go to Jupyter (e.g. --port 8890 --no-browser --ip 0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
environment/setup-jupyter.sh
export JUPYTER_PATH="$(pwd)/.jupyter/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
# As root (containers, CI) Jupyter refuses to start without --allow-root; pass it for the user.
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)
exec /usr/bin/python3 -m notebook --notebook-dir="$(pwd)/notebooks" "${extra[@]}" "$@"
