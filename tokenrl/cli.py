"""`tokenrl train | eval | sample | export` (absl + ml_collections config flags).

  tokenrl train --config configs/quickstart.py --workdir runs/quickstart
  tokenrl train --config configs/quickstart.py --config.rl.objective=dapo --workdir runs/x
  tokenrl eval --workdir runs/quickstart
  tokenrl sample --model DIR_OR_WORKDIR --prompt "12+7=" [--num_samples 4 --temperature 0.7]
  tokenrl export --workdir runs/quickstart --out hf_model/
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, summary)")
_MODEL = flags.DEFINE_string("model", None, "HF folder or tokenrl workdir (sample)")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "prompt text (sample); repeat for several")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate (sample)")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy (sample)")
_TOP_K = flags.DEFINE_integer("top_k", 0, "top-k (sample)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "top-p (sample)")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "completions per prompt (sample)")
_OUT = flags.DEFINE_string("out", None, "output folder (export)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed (sample)")

COMMANDS = ("train", "eval", "sample", "export")


def _load_workdir(workdir: str):
  """(config, run, params) of the latest checkpoint in a tokenrl workdir."""
  import ml_collections
  from tokenrl.train import steps as steps_lib
  from tokenrl.train.checkpoint import Checkpointer
  from tokenrl.train.setup import build_run
  from tokenrl.optim import build_optimizer
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise app.UsageError(f"{workdir!r} is not a tokenrl workdir (no config.json)")
  with open(path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  run = build_run(cfg)
  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise app.UsageError(f"no checkpoint in {workdir}/checkpoints")
  meta = ckpt.restore_meta(step)
  from tokenrl.train.rl_loop import _sft_tx
  tx = _sft_tx(cfg) if meta["state_kind"] == "sft" else build_optimizer(cfg.optimizer, cfg.train.max_steps)
  state, _ = ckpt.restore(steps_lib.create_state(run.params, tx))
  ckpt.close()
  return cfg, run, state.params


def _cmd_train() -> None:
  from tokenrl.train.rl_loop import train
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("train needs --config and --workdir")
  train(_CONFIG.value, _WORKDIR.value)


def _cmd_eval() -> None:
  from tokenrl.eval import evaluate
  from tokenrl.train.setup import encode_prompts
  if not _WORKDIR.value:
    raise app.UsageError("eval needs --workdir")
  cfg, run, params = _load_workdir(_WORKDIR.value)
  result = evaluate(params, config=run.model, tokenizer=run.tokenizer, examples=run.eval_examples,
                    prompt_ids=encode_prompts(cfg, run.tokenizer, run.eval_examples),
                    reward_fn=run.verifier, max_new_tokens=cfg.sampler.max_new_tokens,
                    num_samples=max(cfg.train.eval_num_samples, 1), temperature=cfg.rl.temperature)
  print(json.dumps(result, indent=2))


def _cmd_sample() -> None:
  import jax
  import numpy as np
  from tokenrl import models
  from tokenrl.data.prompts import decode_completions, tokenize_prompts
  from tokenrl.data.tokenizer import load_tokenizer
  from tokenrl.rollout import sample
  if not _MODEL.value or not _PROMPT.value:
    raise app.UsageError("sample needs --model and at least one --prompt")
  if os.path.isfile(os.path.join(_MODEL.value, "config.json")) and os.path.isdir(
      os.path.join(_MODEL.value, "checkpoints")):
    _, run, params = _load_workdir(_MODEL.value)
    config, tok = run.model, run.tokenizer
  else:
    config, params = models.load_hf(_MODEL.value)
    tok = load_tokenizer(_MODEL.value)
  ids = tokenize_prompts(tok, _PROMPT.value)
  out = sample(params, ids, config=config, rng=jax.random.key(_SEED.value),
               max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
               top_p=_TOP_P.value, num_samples=_NUM_SAMPLES.value,
               stop_tokens=tuple(tok.eos_token_ids))
  texts = decode_completions(tok, np.asarray(out.tokens), np.asarray(out.mask))
  for i, text in enumerate(texts):
    print(f"[{i // _NUM_SAMPLES.value}.{i % _NUM_SAMPLES.value}] {_PROMPT.value[i // _NUM_SAMPLES.value]}{text}")


def _cmd_export() -> None:
  from tokenrl import models
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError("export needs --workdir and --out")
  _, run, params = _load_workdir(_WORKDIR.value)
  models.save_hf(_OUT.value, run.model, params)
  print(f"wrote {_OUT.value}")


def main(argv) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: tokenrl {{{'|'.join(COMMANDS)}}} [flags]")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  {"train": _cmd_train, "eval": _cmd_eval, "sample": _cmd_sample, "export": _cmd_export}[argv[1]]()


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
