#!/usr/bin/env bash
# A Cloud TPU VM pod slice from your workstation: create it, copy this repository to every
# worker, run launch/bootstrap.sh + `tokenrl train` on all workers at once, stream the logs,
# stop (coordinated checkpoint) and delete it. Needs gcloud, authenticated, with a project set.
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
usage: launch/tpu_pod.sh ACTION --name NAME --zone ZONE [options] [-- TRAIN_FLAGS...]

ACTION
  create   gcloud compute tpus tpu-vm create NAME --zone --accelerator-type --version [--spot]
  copy     copy the repository to every worker (git ls-files | tar, scp --worker=all), or
           git clone/fetch on every worker with --repo
  run      on all workers (ssh --worker=all): launch/bootstrap.sh -- TRAIN_FLAGS, detached
           (nohup), output in ~/tokenrl_train.log, pid in ~/tokenrl_train.pid
  logs     stream worker W's log (default 0; Ctrl-C stops streaming, not the job)
  stop     SIGTERM the train process on every worker: checkpoint at the end of the step, exit
  delete   delete the TPU VM (asks no question)
  up       create + copy + run + logs

options
  --name NAME          TPU VM name (required)
  --zone ZONE          e.g. us-west4-a (required)
  --type TYPE          accelerator type, e.g. v5litepod-64, v4-32, v6e-16 (create; default
                       v5litepod-8)
  --version VERSION    TPU software version (create; default by type: v5litepod ->
                       v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e,
                       else tpu-ubuntu2204-base)
  --spot               create a Spot VM (cheaper, preemptible: see README "Preemption")
  --project PROJECT    gcloud project (default: gcloud's configured one)
  --repo URL [--ref R] copy by `git clone URL` + `git checkout R` on every worker
  --dir DIR            code directory on the workers (default: tokenrl, in the home dir)
  --worker W           worker for `logs` (default 0)
  TRAIN_FLAGS          for `run`/`up`: passed to tokenrl train on every worker, e.g.
                       --config configs/qwen3_8b_v5e64.py:/models/Qwen3-8B --workdir gs://b/r

example
  launch/tpu_pod.sh up --name tokenrl-8b --zone us-west4-a --type v5litepod-64 --spot -- \
    --config configs/qwen3_8b_v5e64.py:/models/Qwen3-8B --workdir gs://BUCKET/runs/q8b
USAGE
  exit 2
}

[ $# -gt 0 ] || usage
action="$1"
shift
case "$action" in create|copy|run|logs|stop|delete|up) ;; -h|--help) usage ;;
  *) echo "tpu_pod.sh: unknown action '$action'" >&2; usage ;; esac

name="" zone="" type="v5litepod-8" version="" spot=0 project="" repo="" ref="" dir="tokenrl"
worker=0
train_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) [ $# -ge 2 ] || usage; name="$2"; shift 2 ;;
    --zone) [ $# -ge 2 ] || usage; zone="$2"; shift 2 ;;
    --type) [ $# -ge 2 ] || usage; type="$2"; shift 2 ;;
    --version) [ $# -ge 2 ] || usage; version="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --project) [ $# -ge 2 ] || usage; project="$2"; shift 2 ;;
    --repo) [ $# -ge 2 ] || usage; repo="$2"; shift 2 ;;
    --ref) [ $# -ge 2 ] || usage; ref="$2"; shift 2 ;;
    --dir) [ $# -ge 2 ] || usage; dir="$2"; shift 2 ;;
    --worker) [ $# -ge 2 ] || usage; worker="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; train_args=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown option '$1'" >&2; usage ;;
  esac
done
[ -n "$name" ] && [ -n "$zone" ] || { echo "tpu_pod.sh: --name and --zone are required" >&2; usage; }

gflags=(--zone="$zone")
[ -z "$project" ] || gflags+=(--project="$project")
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

on_all() {  # run a shell command on every worker
  gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" --worker=all --command="$1"
}

do_create() {
  if [ -z "$version" ]; then
    case "$type" in
      v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v6e-*) version=v2-alpha-tpuv6e ;;
      *) version=tpu-ubuntu2204-base ;;
    esac
  fi
  local extra=()
  [ "$spot" -eq 0 ] || extra+=(--spot)
  gcloud compute tpus tpu-vm create "$name" "${gflags[@]}" --accelerator-type="$type" \
    --version="$version" "${extra[@]}"
}

do_copy() {
  if [ -n "$repo" ]; then
    local q_dir q_repo q_ref
    q_dir=$(printf '%q' "$dir"); q_repo=$(printf '%q' "$repo"); q_ref=$(printf '%q' "${ref:-HEAD}")
    on_all "set -e; [ -d $q_dir/.git ] || git clone -q $q_repo $q_dir; cd $q_dir; git fetch -q origin $q_ref; git checkout -q FETCH_HEAD"
  else
    local tarball
    tarball="$(mktemp -t tokenrl-XXXXXX).tar.gz"
    # Tracked and untracked-but-not-ignored files: what `git status` calls the working tree.
    (cd "$repo_root" && git ls-files -z --cached --others --exclude-standard \
       | tar -czf "$tarball" --null -T -)
    gcloud compute tpus tpu-vm scp "$tarball" "$name:tokenrl.tar.gz" "${gflags[@]}" --worker=all
    rm -f "$tarball"
    local q_dir
    q_dir=$(printf '%q' "$dir")
    on_all "set -e; mkdir -p $q_dir; tar -xzf tokenrl.tar.gz -C $q_dir; rm tokenrl.tar.gz"
  fi
}

do_run() {
  [ "${#train_args[@]}" -gt 0 ] || { echo "tpu_pod.sh: run needs -- TRAIN_FLAGS" >&2; usage; }
  local q_dir q_args
  q_dir=$(printf '%q' "$dir")
  q_args=$(printf '%q ' "${train_args[@]}")
  # Detached: the job survives the ssh session; setsid + exec keep one pid for `stop`.
  on_all "cd $q_dir && nohup setsid launch/bootstrap.sh --extra tpu -- $q_args \
    > ~/tokenrl_train.log 2>&1 < /dev/null & echo \$! > ~/tokenrl_train.pid; echo started on \$(hostname)"
}

do_logs() {
  gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" --worker="$worker" \
    --command="tail -n +1 -F ~/tokenrl_train.log"
}

do_stop() {
  # shellcheck disable=SC2016  # expanded on the workers
  on_all 'pid=$(cat ~/tokenrl_train.pid 2>/dev/null || true); if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; echo "SIGTERM -> $pid on $(hostname)"; fi'
}

do_delete() {
  gcloud compute tpus tpu-vm delete "$name" "${gflags[@]}" --quiet
}

case "$action" in
  create) do_create ;;
  copy) do_copy ;;
  run) do_run ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  up) do_create; do_copy; do_run; do_logs ;;
esac
