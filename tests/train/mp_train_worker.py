"""One worker of a multi-process `train` on CPU, for tests/train/test_multiprocess_train.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python -m tests.train.mp_train_worker --process_id 0 --num_processes 2 --port 12355 \
        --workdir DIR

The same command on every worker (as on a TPU pod); `--num_processes 1` runs the single-process
reference on however many local devices XLA_FLAGS gives.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def smoke_config():
  spec = importlib.util.spec_from_file_location(
      "quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.train.sft_steps = 4
  c.train.max_steps = 4
  c.train.checkpoint_every = 2
  c.train.async_checkpoint = False
  c.data.batch_size = 4   # N = 4 prompts x 4 samples = 16 rows over 8 devices
  c.data.eval_size = 16
  c.train.eval_num_samples = 2
  return c


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  from tokenrl.train import distributed  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    assert distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
  from tokenrl.train.rl_loop import train  # pylint: disable=g-import-not-at-top
  summary = train(smoke_config(), args.workdir)
  with open(os.path.join(args.workdir, f"done{args.process_id}.json"), "w") as f:
    json.dump({"steps": summary.get("steps"), "preempted": bool(summary.get("preempted"))}, f)


if __name__ == "__main__":
  main()
