#!/usr/bin/env bash
# Per-worker start: create the Python environment once (a marker file), then run
# `python -m tokenrl.cli train` with the given flags. Run from any directory; it works in the
# repository that contains it. Every TPU-pod worker / SLURM task runs the same command.
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
usage: launch/bootstrap.sh [--extra tpu|gpu|cpu] [--setup-only] [--] TRAIN_FLAGS...

  --extra tpu|gpu|cpu  which JAX build to install (pip extra of tokenrl; default: tpu if
                       /dev/accel* or /dev/vfio exists, gpu if nvidia-smi works, else cpu)
  --setup-only         create/update the environment and exit (SLURM: once, before srun)
  TRAIN_FLAGS          passed to `python -m tokenrl.cli train`, e.g.
                       --config configs/qwen3_8b_v5e64.py:/models/Qwen3-8B --workdir gs://b/run

Environment: PYTHON (interpreter for the venv, default python3), TOKENRL_VENV (default
<repo>/.venv). The venv is rebuilt when pyproject.toml changes (its hash is the marker).
The train process replaces this shell (exec), so SIGTERM reaches it directly: it saves a
checkpoint at the end of the current step and exits 0; rerunning resumes from the workdir.
USAGE
  exit 2
}

extra=""
setup_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --extra) [ $# -ge 2 ] || usage; extra="$2"; shift 2 ;;
    --setup-only) setup_only=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [ "$setup_only" -eq 0 ] && [ $# -eq 0 ]; then
  usage
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [ -z "$extra" ]; then
  if compgen -G "/dev/accel*" > /dev/null || compgen -G "/dev/vfio/[0-9]*" > /dev/null; then
    extra=tpu
  elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    extra=gpu
  else
    extra=cpu
  fi
fi
case "$extra" in
  tpu|gpu) spec=".[$extra]" ;;
  cpu) spec="." ;;
  *) echo "bootstrap.sh: --extra must be tpu, gpu or cpu, got '$extra'" >&2; exit 2 ;;
esac

venv="${TOKENRL_VENV:-$repo/.venv}"
want="$extra-$(sha256sum pyproject.toml | cut -c1-16)"
marker="$venv/.tokenrl-bootstrap"
if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "$want" ]; then
  echo "[bootstrap $(hostname)] creating $venv ($spec)" >&2
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$spec"
  echo "$want" > "$marker"
fi
if [ "$setup_only" -eq 1 ]; then
  exit 0
fi
exec "$venv/bin/python" -m tokenrl.cli train "$@"
