#!/usr/bin/env bash
# Every accelerator check of tokenrl in one call (DESIGN.md §9), sized for one H200 in < 8 min.
#
#   bash benchmarks/accelerator.sh               # on the GPU machine (python3 there has jax[cuda])
#   bash benchmarks/accelerator.sh --cpu-smoke   # here: same steps, CPU, tiny sizes (checks logic)
#
# Steps, each under its own `timeout` and all under one deadline (ACCEL_TOTAL_S, default 460 s):
#   setup    carried wheels in .whl/ -> /tmp/site (PYTHONPATH); tokenrl installed editable
#            (pip -e, offline) or, failing that, a symlinked tree /tmp/tokenrl_tree/tokenrl
#            (PYTHONSAFEPATH=1, pytest --import-mode=importlib); tokenrl/kernels/__init__.py finds
#            the kernel modules in the repo's kernels/ through the links.
#   env      nvidia-smi, python/jax/jaxlib versions, jax.devices(), package versions.
#   tests    pytest tests/kernels -m gpu (the TestOnAccelerator classes), JAX_PLATFORMS=cuda.
#   kernels  benchmarks/kernel_bench.py --quick (kernel vs XLA, achieved vs copy bandwidth).
#   tokenselect  benchmarks/tokenselect.py (TokenSelect vs full decode attention and decode
#            tokens/s at 128k/64k/32k context, vs the memory floor; $OUT/tokenselect.json).
#   model    benchmarks/model_gpu.py (matmul/copy ceilings, train-step MFU, decode vs the memory
#            floor, sampler tokens/s, speculative decoding vs sample: K=0 overhead, a 2-layer
#            self-draft and n-gram drafts of the bf16 0.5B-shaped target at N=1 and 8, greedy,
#            same tokens asserted), given whatever time is left.
# Output goes to stdout and, when $OUT is set, to $OUT/accelerator.log; the numbers of the model
# step plus every step's exit code and seconds go to $OUT/accelerator.json (else /tmp/...).
# Exit status: 0 only if every step passed.
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
# A relative interpreter path (.venv/bin/python) must survive `cd /`; keep venv symlinks as they are.
[[ $PY == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
export PY
SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
TOTAL=${ACCEL_TOTAL_S:-460}
START=$(date +%s)
RESULTS=${OUT:-/tmp/tokenrl_accelerator}
mkdir -p "$RESULTS"
LOG="$RESULTS/accelerator.log"
JSON="$RESULTS/accelerator.json"
STEPS="$RESULTS/steps.tsv"
MODEL_JSON="$RESULTS/model_gpu.json"
export PYTHONUNBUFFERED=1
if [[ $SMOKE == 1 ]]; then
  export JAX_PLATFORMS=cpu
else
  export JAX_PLATFORMS=cuda
  # One JAX process at a time holds the GPU; the train step without remat needs ~65 GiB at
  # micro-batches of 8 sequences (~130 GiB for the whole 16×1024 batch, so it is micro-batched).
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
fi

left() { echo $((TOTAL - ($(date +%s) - START))); }

# step NAME CAP_SECONDS CMD...: run under min(CAP, time left - 5); record rc and seconds.
step() {
  local name=$1 cap=$2
  shift 2
  local budget
  budget=$(($(left) - 5))
  ((budget < cap)) && cap=$budget
  if ((cap < 15)); then
    echo "=== [$name] SKIPPED: only $(left) s left of ${TOTAL} s"
    printf '%s\t%s\t%s\n' "$name" "skipped" 0 >>"$STEPS"
    return
  fi
  echo
  echo "=== [$name] t=$(($(date +%s) - START)) s, cap ${cap} s: $*"
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$cap" "$@"
  rc=$?
  ((rc == 124 || rc == 137)) && echo "!!! [$name] TIMED OUT after ${cap} s"
  echo "=== [$name] rc=$rc in $(($(date +%s) - t0)) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$STEPS"
}

setup() {
  echo "=== [setup] repo $REPO, python $(command -v "$PY"), smoke=$SMOKE, deadline ${TOTAL} s"
  # Carried wheels (ml_collections: tokenrl.objectives needs it, the GPU image lacks it), unless
  # the calling command already installed them to /tmp/site.
  if compgen -G ".whl/*.whl" >/dev/null && [[ ":${PYTHONPATH:-}:" != *:/tmp/site:* ]]; then
    echo "installing carried wheels: $(ls .whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # On the (throwaway) GPU machine, install editable, offline, as a user would (the repo root
  # alone also imports tokenrl.kernels, but not from `cd /`). Never in --cpu-smoke mode: that
  # runs in a developer's environment, which it must not touch.
  if [[ $SMOKE == 0 && -z "${ACCEL_FORCE_TREE:-}" ]] &&
    ! (cd / && "$PY" -c "import tokenrl.kernels") 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3
  fi
  if [[ -n "${ACCEL_FORCE_TREE:-}" ]] || ! (cd / && "$PY" -c "import tokenrl.kernels") 2>/dev/null; then
    echo "editable install unavailable: symlinked tree /tmp/tokenrl_tree"
    rm -rf /tmp/tokenrl_tree && mkdir -p /tmp/tokenrl_tree/tokenrl
    # tokenrl/kernels is linked with the rest; its __init__ resolves the link and adds the
    # repo's kernels/ folder (which has no __init__.py: it must never shadow the `kernels`
    # distribution that transformers imports).
    ln -s "$REPO"/tokenrl/* /tmp/tokenrl_tree/tokenrl/
    export PYTHONPATH=/tmp/tokenrl_tree${PYTHONPATH:+:$PYTHONPATH}
    # Keep the repo root (cwd, pytest's rootdir) off sys.path so tokenrl comes from the tree.
    export PYTHONSAFEPATH=1 PYTEST_ADDOPTS="--import-mode=importlib ${PYTEST_ADDOPTS:-}"
  fi
}

env_report() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv
  else
    echo "no nvidia-smi"
  fi
  "$PY" - <<'EOF'
import importlib.metadata as md, os, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
             "flax", "optax", "ml_collections", "numpy", "pytest", "hypothesis"):
  try:
    print(f"  {name} {md.version(name)}")
  except md.PackageNotFoundError:
    print(f"  {name} -")
print("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""), "| JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS"))
import jax
print("jax.devices():", jax.devices(), "| backend:", jax.default_backend())
import tokenrl.kernels, tokenrl.models, tokenrl.rollout
print("tokenrl from", os.path.dirname(tokenrl.__file__), "| kernels from",
      os.path.dirname(tokenrl.kernels.__file__))
try:
  import tokenrl.train.steps  # needs ml_collections (carry its wheel if missing)
  print("tokenrl.train.steps imports")
except ImportError as e:
  print("!! tokenrl.train.steps does not import:", e)
  sys.exit(1)
EOF
}

main() {
  : >"$STEPS"
  rm -f "$MODEL_JSON"
  setup
  export -f env_report  # `timeout` runs programs, not shell functions
  step env 60 bash -c env_report
  if [[ $SMOKE == 1 ]]; then
    step tests 90 "$PY" -m pytest tests/kernels -q -m gpu -p no:cacheprovider
    step kernels 150 "$PY" benchmarks/kernel_bench.py --cpu --quick
    step tokenselect 90 "$PY" benchmarks/tokenselect.py --cpu-smoke --budget-s 60 \
      --json "$RESULTS/tokenselect.json"
    local cap=$(($(left) - 10))
    step model "$cap" "$PY" benchmarks/model_gpu.py --cpu-smoke --budget-s $((cap - 20)) --json "$MODEL_JSON"
  else
    step tests 90 "$PY" -m pytest tests/kernels -q -m gpu -p no:cacheprovider
    step kernels 120 "$PY" benchmarks/kernel_bench.py --quick
    step tokenselect 130 "$PY" benchmarks/tokenselect.py --budget-s 100 \
      --json "$RESULTS/tokenselect.json"
    local cap=$(($(left) - 10))
    step model "$cap" "$PY" benchmarks/model_gpu.py --budget-s $((cap - 30)) --json "$MODEL_JSON"
  fi

  "$PY" - "$STEPS" "$MODEL_JSON" "$JSON" "$TOTAL" <<'EOF'
import json, os, sys
steps_path, model_path, out_path, total = sys.argv[1:]
steps = {}
for line in open(steps_path):
  name, rc, secs = line.rstrip("\n").split("\t")
  steps[name] = {"rc": rc, "seconds": int(secs)}
data = {"steps": steps, "deadline_s": int(total)}
if os.path.exists(model_path):
  with open(model_path) as f:
    data["model"] = json.load(f)
with open(out_path, "w") as f:
  json.dump(data, f, indent=1)
print("\n=== accelerator.sh summary (numbers in", out_path + ")")
print("| step | rc | s |")
print("|---|---|---|")
for name, s in steps.items():
  print(f"| {name} | {s['rc']} | {s['seconds']} |")
EOF
  echo "total $(($(date +%s) - START)) s"
  awk -F'\t' '$2 != "0" {bad = 1} END {exit bad}' "$STEPS"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
