#!/usr/bin/env bash
# The prepared GPU check (issue 19): on a fresh GPU machine that has no Node.js and no network,
# set up the Vulkan driver, run the tfjs WebGPU benchmarks (the bench model's training and
# sampling steps with launch counts, SD 1.5 at 512 px, the micro-benchmarks at small and SD 1.5
# sizes) and PyTorch's side, in under 8 minutes; write JSON under bench/results/ (and $OUT when
# set) and print a short summary.
#
#   bench/gpu-check.sh --pack        HERE, with node_modules: build .cache/gpu-pack (≈ 40 MB:
#                                    node, the compiled benchmarks with the node_modules files they
#                                    load, Dawn's linux-x64 binary, Debian's Vulkan/GL loader debs)
#   bench/gpu-check.sh               THERE, in the carried tree: the GPU check (also checks the
#                                    fused kernels against their composites on that driver)
#   bench/gpu-check.sh --cpu         anywhere with the pack: the same script on lavapipe
#                                    (environment/setup-webgpu-cpu.sh) and Dawn's null device, at
#                                    small sizes — proves the pack and the script end to end
#
# Options: --budget SECONDS (default 450: every run is cut to fit), --sd15 (also in --cpu mode;
# slow there), --results DIR (default bench/results/<mode>-<host>-<UTC date>).
#
# On the device tool: run(command="bench/gpu-check.sh", carry=[".cache/gpu-pack"], timeout_s=540).
# The tree travels without node_modules; .cache/ is git-ignored, hence `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PACK="$REPO/.cache/gpu-pack"
WORK="${TMPDIR:-/tmp}/gpu-check"
MODE=gpu
BUDGET=450
SD15_IN_CPU=0
RESULTS=""
T0=$SECONDS

die() { echo "gpu-check: $*" >&2; exit 1; }
note() { echo "gpu-check [$((SECONDS - T0))s]: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --pack) MODE=pack ;;
    --cpu) MODE=cpu ;;
    --sd15) SD15_IN_CPU=1 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    --results) RESULTS="${2:?--results needs a folder}"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown option $1 (use --pack, --cpu, --sd15, --budget SECONDS, --results DIR)" ;;
  esac
  shift
done

# ------------------------------------------------------------------------------------- --pack
if [ "$MODE" = pack ]; then
  [ -d node_modules/@tensorflow/tfjs ] || die "--pack needs node_modules (npm ci first)"
  [ -f node_modules/webgpu/dist/linux-x64/dawn.node ] || die "--pack needs the optional webgpu package (npm install webgpu)"
  command -v node >/dev/null || die "--pack needs node"
  command -v xz >/dev/null || die "--pack needs xz (apt-get install xz-utils)"
  mkdir -p "$PACK"
  rm -rf "$PACK/build" "$PACK/stage"
  # 1. The benchmarks compiled to JavaScript (type errors elsewhere in the tree do not stop emit).
  cat >"$PACK/tsconfig.json" <<'EOF'
{ "extends": "../../tsconfig.json",
  "compilerOptions": { "outDir": "build", "rootDir": "../..", "declaration": false, "sourceMap": false, "noEmitOnError": false },
  "files": ["../../bench/bench.ts", "../../bench/gpu-check-summary.ts", "../../bench/webgpu-kernel-check.ts"], "include": [] }
EOF
  note "compiling bench/bench.ts and its imports"
  npx tsc -p "$PACK/tsconfig.json" >"$PACK/tsc.log" 2>&1 || true
  for f in bench/bench.js bench/webgpu-kernel-check.js; do
    [ -f "$PACK/build/$f" ] || { cat "$PACK/tsc.log" >&2; die "tsc produced no $f"; }
  done
  # 2. The node_modules files a run loads: traced on Dawn's null device (same modules as a GPU run).
  note "tracing the modules a benchmark run loads"
  cat >"$PACK/trace.cjs" <<'EOF'
process.on("exit", () => require("fs").writeFileSync(process.env.GPU_CHECK_TRACE, Object.keys(require.cache).join("\n") + "\n"));
EOF
  GPU_CHECK_TRACE="$PACK/trace.txt" node -r "$PACK/trace.cjs" "$PACK/build/bench/bench.js" \
    --backend webgpu-null --batch 1 --size 8 --steps 1 --no-micro >"$PACK/trace-run.jsonl" 2>"$PACK/trace-run.log" \
    || { cat "$PACK/trace-run.log" >&2; die "the traced run failed"; }
  mkdir -p "$PACK/stage/app"
  cp -r "$PACK/build/." "$PACK/stage/app/"
  {
    grep "^$REPO/node_modules/" "$PACK/trace.txt" | sed "s#^$REPO/##"
    # package.json of every package touched (module resolution reads them), native parts that
    # are opened without require (libvips for sharp), and Dawn's linux-x64 binary.
    grep "^$REPO/node_modules/" "$PACK/trace.txt" | sed "s#^$REPO/##" \
      | awk -F/ '{ if ($2 ~ /^@/) print $1"/"$2"/"$3"/package.json"; else print $1"/"$2"/package.json" }'
    find node_modules/@img -path '*sharp-libvips-linux-x64*' -type f 2>/dev/null || true
    echo node_modules/webgpu/dist/linux-x64/dawn.node
  } | sort -u | while read -r f; do [ -f "$f" ] && echo "$f"; done >"$PACK/files.txt"
  tar -cf - -T "$PACK/files.txt" | tar -xf - -C "$PACK/stage/app"
  note "compressing the app ($(du -sh "$PACK/stage/app" | cut -f1))"
  tar -C "$PACK/stage" -cf - app | xz -T0 -6 >"$PACK/app.tar.xz"
  # 3. node itself (the GPU machine has none), once per node version.
  NODE_BIN="$(command -v node)"
  if [ "$(cat "$PACK/node.version" 2>/dev/null)" != "$(node --version)" ] || [ ! -f "$PACK/node.xz" ]; then
    note "compressing $NODE_BIN ($(node --version))"
    xz -T0 -6 -c "$NODE_BIN" >"$PACK/node.xz"
    node --version >"$PACK/node.version"
  fi
  # 4. Debian's Vulkan loader and glvnd (NVIDIA's Vulkan driver needs libGLdispatch), as the
  # device README prescribes; unpacked with dpkg -x there.
  if ! ls "$PACK"/gl/libvulkan1_*.deb >/dev/null 2>&1; then
    note "downloading the Vulkan/GL loader packages"
    mkdir -p "$PACK/gl" /tmp/gpu-check-apt/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu-check-apt)
    if [ "$(id -u)" = 0 ]; then o+=(-oAPT::Sandbox::User=root); fi
    apt-get "${o[@]}" update -qq
    (cd "$PACK/gl" && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  fi
  rm -rf "$PACK/stage" "$PACK/build" "$PACK/trace.cjs"
  {
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
    echo "made $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
    echo "node $(cat "$PACK/node.version")"
    ls -l "$PACK"/app.tar.xz "$PACK"/node.xz "$PACK"/gl/*.deb | awk '{print $5, $NF}'
  } >"$PACK/MANIFEST.txt"
  pack_mb=$(du -sm "$PACK" | cut -f1)
  tree_mb=$(git ls-files -co --exclude-standard -z | du -cm --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  note "pack ready: $PACK (${pack_mb} MB; the tree that travels with it: ~${tree_mb} MB; limit 64 MiB)"
  [ $((pack_mb + tree_mb)) -lt 62 ] || echo "gpu-check: WARNING: pack + tree ≈ $((pack_mb + tree_mb)) MB, near or over the 64 MiB that travels" >&2
  echo 'Device tool: run(command="bench/gpu-check.sh", carry=[".cache/gpu-pack"], timeout_s=540)'
  exit 0
fi

# ----------------------------------------------------------------------------- the check itself
[ -f "$PACK/app.tar.xz" ] && [ -f "$PACK/node.xz" ] \
  || die "no pack in $PACK: run 'bench/gpu-check.sh --pack' on a machine with node_modules, and carry .cache/gpu-pack"
command -v xz >/dev/null || die "xz is needed to unpack node and the app"
head -1 "$PACK/MANIFEST.txt" 2>/dev/null | sed 's/^/gpu-check: pack made from /'
rm -rf "$WORK" && mkdir -p "$WORK"
xz -dc "$PACK/node.xz" >"$WORK/node" && chmod +x "$WORK/node"
NODE="$WORK/node"
"$NODE" --version >/dev/null 2>&1 || die "the packed node does not run here ($(uname -m); it was built for x86-64 glibc)"
xz -dc "$PACK/app.tar.xz" | tar -xf - -C "$WORK"
APP="$WORK/app"
[ -f "$APP/bench/bench.js" ] || die "the pack's app has no bench/bench.js"
note "node $("$NODE" --version), app unpacked"

if [ -z "$RESULTS" ]; then RESULTS="bench/results/$MODE-$(hostname | tr -c 'A-Za-z0-9.\n-' '_')-$(date -u +%Y-%m-%d)"; fi
mkdir -p "$RESULTS"

# Vulkan: the NVIDIA driver (GPU mode) or the private lavapipe (--cpu).
if [ "$MODE" = gpu ]; then
  if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
    ls "$PACK"/gl/*.deb >/dev/null 2>&1 || die "no Vulkan loader on this machine and none in the pack (.cache/gpu-pack/gl)"
    [ "$(id -u)" = 0 ] || die "the Vulkan loader must be unpacked into / (dpkg -x): run as root"
    for f in "$PACK"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    note "Vulkan/GL loaders unpacked from the pack"
  fi
  if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
    for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.*.json; do
      if [ -f "$f" ]; then export VK_DRIVER_FILES="$f"; break; fi
    done
    egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    if [ -f "$egl" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"; fi
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi -L | sed 's/^/gpu-check: /' || true
else
  ICD="$REPO/.cache/lavapipe/lvp_icd.x86_64.json"
  [ -f "$ICD" ] || die "--cpu needs the private lavapipe: run environment/setup-webgpu-cpu.sh"
  export VK_ICD_FILENAMES="$ICD"
fi
ADAPTER="$("$NODE" -e '
  const w = require(process.argv[1]);
  w.create([]).requestAdapter({ powerPreference: "high-performance" }).then((a) => {
    if (!a) { console.log("none"); process.exit(0); }
    const i = a.info || {};
    console.log(JSON.stringify({ vendor: i.vendor, architecture: i.architecture, description: i.description }));
    process.exit(0);
  }, (e) => { console.log("error " + e.message); process.exit(0); });' "$APP/node_modules/webgpu" 2>"$WORK/adapter.log" | tail -1)"
case "$ADAPTER" in
  none|error*|"") die "Dawn found no WebGPU adapter (${ADAPTER:-no answer}): $(grep -v -e XDG_RUNTIME -e 'artificially reduced' "$WORK/adapter.log" | head -3 | tr '\n' ' ')— see environment/README.md, 'WebGPU in Node'" ;;
esac
if [ "$MODE" = gpu ] && echo "$ADAPTER" | grep -qiE 'llvmpipe|lavapipe|swiftshader|"architecture":"software"'; then
  die "Dawn found only a software adapter ($ADAPTER): the GPU's Vulkan driver did not load (check VK_DRIVER_FILES and nvidia-smi)"
fi
note "WebGPU adapter: $ADAPTER"

PY=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import torch' 2>/dev/null; then PY="$p"; break; fi
done
TORCH_DEVICE=cpu
if [ "$MODE" = gpu ] && [ -n "$PY" ]; then
  if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then TORCH_DEVICE=cuda; else PY=""; fi
fi

# run NAME SECONDS COMMAND...: stdout (JSON lines) to NAME.jsonl, stderr to NAME.log; each run is
# cut to what is left of the budget; a run that fails or times out is recorded and the rest go on.
run() {
  local name="$1" want="$2"; shift 2
  local left=$((BUDGET - (SECONDS - T0) - 15))
  if [ "$left" -lt 20 ]; then
    echo "{\"case\":\"run_skipped\",\"reason\":\"budget of ${BUDGET}s used up\"}" >"$RESULTS/$name.jsonl"
    note "$name: skipped (budget used up)"; return 0
  fi
  local limit=$(( want < left ? want : left ))
  local t=$SECONDS rc=0
  timeout --kill-after=5 "$limit" "$@" >"$RESULTS/$name.jsonl" 2>"$RESULTS/$name.log" || rc=$?
  if [ "$rc" != 0 ]; then
    local why; why="$(grep -v -e XDG_RUNTIME -e 'artificially reduced' "$RESULTS/$name.log" | tail -2 | tr "\n\"" "  " || true)"
    echo "{\"case\":\"run_failed\",\"exit\":$rc,\"limit_s\":$limit,\"stderr_tail\":\"$why\"}" >>"$RESULTS/$name.jsonl"
    note "$name: FAILED (exit $rc after $((SECONDS - t))s${why:+: $why})"
  else
    note "$name: $((SECONDS - t))s"
  fi
}
BENCH=("$NODE" "$APP/bench/bench.js")
TINY16=(--batch 1 --size 16)

if [ "$MODE" = gpu ]; then
  run tfjs-tiny16 120 "${BENCH[@]}" --backend webgpu "${TINY16[@]}" --steps 5 --sd-shapes
  # the fused kernels (attention, GroupNorm, GEGLU, AdamW) against their composites on this driver, SD 1.5 shapes
  run tfjs-kernels 60 "$NODE" "$APP/bench/webgpu-kernel-check.js" --sd
  run tfjs-sd15 170 "${BENCH[@]}" --backend webgpu --config sd15 --size 64 --batch 1 --steps 2 --no-micro
  if [ -n "$PY" ]; then
    run torch-tiny16 90 "$PY" bench/torch_bench.py --device "$TORCH_DEVICE" --threads 16 "${TINY16[@]}" --steps 5 --sd-shapes
    run torch-sd15 90 "$PY" bench/torch_bench.py --device "$TORCH_DEVICE" --threads 16 --config sd15 --size 64 --batch 1 --steps 2 --no-micro
  else
    note "PyTorch with CUDA is not importable here: its side is skipped"
  fi
  run tfjs-tiny16-stock 60 "${BENCH[@]}" --backend webgpu "${TINY16[@]}" --steps 5 --no-micro --no-webgpu-patches
  run tfjs-null 45 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro
  run tfjs-null-stock 45 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro --no-webgpu-patches
  run tfjs-null-unfused 45 env HYPERNET_WEBGPU_FUSED=0 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro
  run tfjs-null-noattn 45 env HYPERNET_WEBGPU_FUSED_ATTENTION=0 HYPERNET_WEBGPU_FUSED_ADAMW=0 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro
  run tfjs-null-original 45 env HYPERNET_WEBGPU_FUSED=0 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro --no-webgpu-patches
  run tfjs-tiny32b4 60 "${BENCH[@]}" --backend webgpu --steps 3 --no-micro
  if [ -n "$PY" ]; then run torch-tiny32b4 45 "$PY" bench/torch_bench.py --device "$TORCH_DEVICE" --threads 16 --steps 3 --no-micro; fi
else
  # lavapipe runs shaders on the CPU (~3 GFLOP/s on 2 cores): the steps only, no micro-benchmarks.
  run tfjs-tiny16 180 "${BENCH[@]}" --backend webgpu "${TINY16[@]}" --steps 2 --no-micro
  run tfjs-kernels 90 "$NODE" "$APP/bench/webgpu-kernel-check.js"
  run tfjs-tiny16-stock 100 "${BENCH[@]}" --backend webgpu "${TINY16[@]}" --steps 2 --no-micro --no-webgpu-patches
  run tfjs-null 60 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro
  run tfjs-null-stock 60 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro --no-webgpu-patches
  run tfjs-null-unfused 60 env HYPERNET_WEBGPU_FUSED=0 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro
  run tfjs-null-noattn 60 env HYPERNET_WEBGPU_FUSED_ATTENTION=0 HYPERNET_WEBGPU_FUSED_ADAMW=0 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro
  run tfjs-null-original 60 env HYPERNET_WEBGPU_FUSED=0 "${BENCH[@]}" --backend webgpu-null "${TINY16[@]}" --steps 5 --no-micro --no-webgpu-patches
  if [ -n "$PY" ]; then run torch-tiny16 60 "$PY" bench/torch_bench.py --threads 2 "${TINY16[@]}" --steps 2 --no-micro; fi
  if [ "$SD15_IN_CPU" = 1 ]; then
    run tfjs-sd15 600 "${BENCH[@]}" --backend webgpu --config sd15 --size 8 --batch 1 --steps 1 --no-micro
  fi
fi

{
  echo "{\"case\":\"gpu_check\",\"mode\":\"$MODE\",\"seconds\":$((SECONDS - T0)),\"budget_s\":$BUDGET,\"adapter\":$(printf '%s' "$ADAPTER" | "$NODE" -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.stringify(s)))'),\"torch\":\"${PY:+$TORCH_DEVICE}\",\"host\":\"$(nproc) cores, $(hostname)\",\"date\":\"$(date -u +%Y-%m-%dT%H:%MZ)\"}"
} >"$RESULTS/gpu-check.jsonl"
echo
"$NODE" "$APP/bench/gpu-check-summary.js" "$RESULTS" || note "the summary failed (the JSON lines are in $RESULTS)"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  tar -C "$(dirname "$RESULTS")" -czf "$OUT/gpu-check-results.tar.gz" "$(basename "$RESULTS")"
  cp "$RESULTS/summary.txt" "$RESULTS/summary.json" "$OUT/" 2>/dev/null || true
  note "copied to \$OUT: gpu-check-results.tar.gz, summary.txt, summary.json"
fi
note "done in $((SECONDS - T0))s; results in $RESULTS"
