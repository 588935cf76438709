#!/usr/bin/env bash
# One node with several GPUs: one process drives all of them (one JAX process, a mesh over
# every visible GPU; no jax.distributed). Set the mesh in the config (e.g. mesh.data=-1).
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
usage: launch/gpu_node.sh [--gpus 0,1,2,3] [--mem-fraction 0.9] [--log FILE] [--] TRAIN_FLAGS...

  --gpus LIST          CUDA_VISIBLE_DEVICES for the run (default: every GPU)
  --mem-fraction F     XLA_PYTHON_CLIENT_MEM_FRACTION (JAX preallocates 0.75 by default; the
                       memory planner assumes that unless the variable is set)
  --log FILE           also append stdout/stderr to FILE
  TRAIN_FLAGS          passed to `tokenrl train`, e.g.
                       --config configs/qwen2_5_1_5b_8gpu.py:/models/Qwen2.5-1.5B-Instruct \
                       --workdir runs/qwen2_5_1_5b_8gpu

Check the memory first:  tokenrl plan --config CONFIG --devices h100-8
SIGTERM saves a checkpoint at the end of the current step and exits 0; rerun to resume.
USAGE
  exit 2
}

log=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) [ $# -ge 2 ] || usage; export CUDA_VISIBLE_DEVICES="$2"; shift 2 ;;
    --mem-fraction) [ $# -ge 2 ] || usage; export XLA_PYTHON_CLIENT_MEM_FRACTION="$2"; shift 2 ;;
    --log) [ $# -ge 2 ] || usage; log="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L; then
  echo "gpu_node.sh: nvidia-smi found no GPU" >&2
  exit 1
fi
if [ -n "$log" ]; then
  # exec keeps the train process in the foreground job so a SIGTERM to it checkpoints cleanly.
  exec > >(tee -a "$log") 2>&1
fi
exec "$here/bootstrap.sh" --extra gpu -- "$@"
