"""The target and draft models of benchmarks/speculative.py, trained on CPU with `tokenrl train`.

  python benchmarks/speculative_models.py --task sort    # ~10 min on 2 cores
  python benchmarks/speculative_models.py --task copy

Both are Qwen2-style decoders with the char tokenizer (same vocabulary, same EOS), trained by
the SFT warm-up only (`train.max_steps=0`) on one embedded task with long inputs (TASKS:
`sort` with 12-24 digits, completions of 13-25 tokens; `copy` with 16-32 letters and digits,
completions of 17-33 tokens: the decode-bound regime speculative decoding is for), into
<work>/<task>/{target,draft,head}:

  target  L=8, D=128, 4 query / 2 KV heads, F=384   (~1.6 M layer parameters)
  draft   L=2, same widths                          (a quarter of the target's layer FLOPs)
  head    the SpecDec++ acceptance head of the draft for the target (configs/specdec_pp.py,
          200 head steps on the same task).

A model is trained only when its workdir lacks a finished summary.json for the same arguments
(the stamp file), so rerunning the benchmark reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart.py")


def tokenrl_command() -> list[str]:
  exe = os.path.join(os.path.dirname(sys.executable), "tokenrl")
  return [exe] if os.path.exists(exe) else [sys.executable, "-m", "tokenrl.cli"]


# task -> its tiers, the models' context length and the completion budget (the longest answer
# + EOS), shared by the training runs and benchmarks/speculative.py.
TASKS = {
    "sort": {"tiers": "len:12-24", "max_seq_len": 64, "new_tokens": 26, "steps": 400},
    "copy": {"tiers": "len:16-32", "max_seq_len": 100, "new_tokens": 34, "max_prompt_len": 40,
             "steps": 1200},
}


def _task_args(task: str) -> list[str]:
  t = TASKS[task]
  return [f"--config.data.task={task}", f"--config.data.tiers={t['tiers']}",
          f"--config.model.max_seq_len={t['max_seq_len']}",
          f"--config.sampler.max_new_tokens={t['new_tokens']}",
          *([f"--config.data.max_prompt_len={t['max_prompt_len']}"] if "max_prompt_len" in t else [])]


def model_args(task: str, num_layers: int, sft_steps: int) -> list[str]:
  """`tokenrl train` flags of one model (quickstart config, SFT only, on `task`)."""
  return [f"--config={CONFIG}", *_task_args(task), "--config.model.dim=128",
          f"--config.model.num_layers={num_layers}",
          "--config.train.max_steps=0", f"--config.train.sft_steps={sft_steps}",
          "--config.train.sft_target_accuracy=0.0", "--config.train.sft_learning_rate=2e-3",
          "--config.train.sft_batch_size=32",
          "--config.data.dev_size=0", "--config.data.eval_size=64",
          "--config.train.checkpoint_every=100000", "--config.seed=0"]


def train(workdir: str, args: list[str]) -> str:
  """Run `tokenrl train` into workdir unless a finished run with the same args is there."""
  stamp = os.path.join(workdir, "bench_args.json")
  summary = os.path.join(workdir, "summary.json")
  if os.path.exists(stamp) and os.path.exists(summary):
    with open(stamp) as f:
      if json.load(f) == args:
        return workdir
  subprocess.run(["rm", "-rf", workdir], check=True)
  os.makedirs(workdir)
  subprocess.run([*tokenrl_command(), "train", *args, f"--workdir={workdir}"], check=True,
                 cwd=REPO)
  with open(stamp, "w") as f:
    json.dump(args, f)
  return workdir


def head_args(task: str, target: str, draft: str, head_steps: int) -> list[str]:
  """`tokenrl train` flags of the SpecDec++ acceptance head of `draft` for `target`."""
  return [f"--config={os.path.join(REPO, 'configs', 'specdec_pp.py')}", *_task_args(task),
          "--config.model.dim=128", "--config.model.num_layers=8",
          f"--config.model.init_workdir={target}", "--config.train.sft_steps=0",
          f"--config.sampler.speculative.draft_model={draft}",
          "--config.rl.specdec_pp.draft_sft_steps=0",
          f"--config.train.max_steps={head_steps}", "--config.train.checkpoint_every=100000",
          "--config.train.eval_every=0", "--config.optimizer.warmup_steps=6", "--config.seed=0"]


def build(work: str, task: str = "sort", *, target_steps: int | None = None,
          draft_steps: int | None = None, head_steps: int = 200) -> dict[str, str]:
  """{'target', 'draft', 'head'}: workdirs under <work>/<task> (trained if missing); SFT steps
  default to the task's (copy needs more for a confident target: temperature-1 acceptance
  depends on how peaked both models are)."""
  if task not in TASKS:
    raise ValueError(f"--task must be one of {sorted(TASKS)}, got {task!r}")
  target_steps = target_steps or TASKS[task]["steps"]
  draft_steps = draft_steps or TASKS[task]["steps"]
  work = os.path.join(work, task)
  out = {"target": train(os.path.join(work, "target"), model_args(task, 8, target_steps)),
         "draft": train(os.path.join(work, "draft"), model_args(task, 2, draft_steps))}
  out["head"] = train(os.path.join(work, "head"), head_args(task, out["target"], out["draft"],
                                                            head_steps))
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--work", default=os.path.join(REPO, "runs", "spec_models"))
  ap.add_argument("--task", default="sort", choices=sorted(TASKS))
  ap.add_argument("--target_steps", type=int, default=None, help="default: the task's")
  ap.add_argument("--draft_steps", type=int, default=None, help="default: the task's")
  ap.add_argument("--head_steps", type=int, default=200)
  a = ap.parse_args()
  print(json.dumps(build(a.work, a.task, target_steps=a.target_steps, draft_steps=a.draft_steps,
                         head_steps=a.head_steps)))


if __name__ == "__main__":
  main()
