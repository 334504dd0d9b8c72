#!/usr/bin/env bash
# Jupyter for the notebooks: Debian's Jupyter for /usr/bin/python3, plus the tslab (TypeScript)
# kernel registered with it. Idempotent and quick when everything is already there.
#
#   environment/setup-jupyter.sh              # Jupyter + tslab kernel
#   environment/setup-jupyter.sh --chromium   # also headless Chromium (for the notebook HTML check)
#
# The kernelspec goes to <repo>/.jupyter/share/jupyter/kernels/tslab (git-ignored). Our scripts set
# JUPYTER_PATH to find it; to use the kernel from any Jupyter, add --user (per-user registry).
#
# Why /usr/bin/python3: the first python3 on PATH may be another interpreter (pyenv) without
# Jupyter, and `tslab install` then fails with "jupyter is not installed in this Python".
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PY=/usr/bin/python3
export PYDEVD_DISABLE_FILE_VALIDATION=1  # silences a debugger warning from Debian's Python 3.11

want_chromium=0
user_install=0
for arg in "$@"; do
  case "$arg" in
    --chromium) want_chromium=1 ;;
    --user) user_install=1 ;;
    *) echo "setup-jupyter: unknown option $arg (use --chromium, --user)" >&2; exit 2 ;;
  esac
done

packages=(jupyter-nbconvert python3-nbclient python3-ipykernel jupyter-client python3-jupyter-client jupyter-notebook)
[ "$want_chromium" = 1 ] && packages+=(chromium)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup-jupyter: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "setup-jupyter: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x node_modules/.bin/tslab ] || { echo "setup-jupyter: node_modules/.bin/tslab is missing; run npm ci first" >&2; exit 1; }

# The kernel command is environment/tslab-kernel.sh (absolute path): it runs this checkout's tslab,
# pinned in package-lock.json, from the repository root (see the comment there).
TSLAB="$REPO/node_modules/.bin/tslab"
KERNEL="$REPO/environment/tslab-kernel.sh"
if [ "$user_install" = 1 ]; then
  "$TSLAB" install --python="$PY" --binary="$KERNEL" --user >/dev/null
  echo "setup-jupyter: tslab kernel registered in the per-user registry"
else
  "$TSLAB" install --python="$PY" --binary="$KERNEL" --prefix="$REPO/.jupyter" >/dev/null
fi
JUPYTER_PATH="$REPO/.jupyter/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}" "$PY" -m jupyter kernelspec list 2>/dev/null | grep "tslab" >/dev/null \
  || { echo "setup-jupyter: the tslab kernelspec is not visible to $PY -m jupyter" >&2; exit 1; }
if [ "$user_install" != 1 ]; then
  case ":${JUPYTER_PATH:-}:" in
    *":$REPO/.jupyter/share/jupyter:"*) ;;
    *) echo "setup-jupyter: the kernel is registered in $REPO/.jupyter; for a plain \`jupyter notebook\`/\`jupyter nbconvert\` to find it, run"
       echo "    export JUPYTER_PATH=\"$REPO/.jupyter/share/jupyter\${JUPYTER_PATH:+:\$JUPYTER_PATH}\""
       echo "  or register it for your user once: environment/setup-jupyter.sh --user (npm run notebook needs neither)" ;;
  esac
fi
echo "setup-jupyter: ok (python $($PY -c 'import nbconvert, nbclient; print("nbconvert", nbconvert.__version__, "nbclient", nbclient.__version__)'), $("$TSLAB" --version))"
