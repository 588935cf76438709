#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv from this repo's files on first use.
#   ./dev.sh train   the main job: configs/quickstart.py into runs/quickstart
#   ./dev.sh test    the test suite (what CI runs)
#   ./dev.sh env     only create/update the environment
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
stamp=.venv/.tokenrl-installed
want=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)  # the files the install reads
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[dev.sh] creating .venv (CPU JAX, CPU torch for the parity tests)" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # A CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[test,parity]"
  echo "$want" > "$stamp"
fi
cmd=${1:-test}
shift || true
case "$cmd" in
  env) ;;
  train) exec .venv/bin/tokenrl train --config configs/quickstart.py --workdir "${WORKDIR:-runs/quickstart}" "$@" ;;
  # Two pytest workers, each test file on one worker (module fixtures built once): on 2 cores
  # most of the suite is single-threaded XLA compilation, so two at a time use both cores.
  # TOKENRL_TEST_WORKERS=0 runs in one process.
  test) exec .venv/bin/python -m pytest -q -n "${TOKENRL_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  *) echo "usage: ./dev.sh {train|test|env}" >&2; exit 2 ;;
esac
