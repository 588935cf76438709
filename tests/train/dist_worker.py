"""One process of a 2-process CPU job for tests/train/test_distributed.py.

    TOKENRL_COORDINATOR=127.0.0.1:12355 TOKENRL_NUM_PROCESSES=2 TOKENRL_PROCESS_ID=0 \
      JAX_PLATFORMS=cpu python -m tests.train.dist_worker --out result.json

Joins the job through `tokenrl.train.distributed.initialize()` (the TOKENRL_* variables, no
arguments, as `tokenrl train` on a worker would), then records what every process sees from
`any_process` when only process 1 raises its flag (a SIGTERM on one worker of a pod).
"""

from __future__ import annotations

import argparse
import json

import jax

from tokenrl.train import distributed


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  initialized = distributed.initialize()
  pid = jax.process_index()
  result = {
      "initialized": initialized,
      "process_index": pid,
      "process_count": jax.process_count(),
      "is_main": distributed.is_main(),
      "any_one_set": distributed.any_process(pid == 1),  # only process 1 is "preempted"
      "any_none_set": distributed.any_process(False),
      "any_all_set": distributed.any_process(True),
  }
  with open(args.out, "w") as f:
    json.dump(result, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
