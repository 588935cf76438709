"""`tokenrl train | eval | sample | export | plan` (absl + ml_collections config flags).

  tokenrl train --config configs/quickstart.py --workdir runs/quickstart
  tokenrl train --config configs/quickstart.py --config.rl.objective=dapo --workdir runs/x
  tokenrl eval --workdir runs/quickstart
  tokenrl sample --model DIR_OR_WORKDIR --prompt "12+7=" [--num_samples 4 --temperature 0.7]
  tokenrl sample --model W --prompt "sort 3142=" --speculative=exact --draft=layers --draft_layers=1
  tokenrl export --workdir runs/quickstart --out hf_model/
  tokenrl plan --config configs/qwen3_8b_v5e64.py [--devices v5e-64 | --devices 64]
  tokenrl analyze {shapley|af1|control} --model DIR | --workdir W ...   (tokenrl.commands)
  tokenrl audit {coin|palace} ...
  tokenrl train ... --coordinator HOST:PORT --num_processes 4 --process_id 0   (multi-host)
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
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None,
                                "tokens to generate, >= 1 (sample; default: the run's sampler "
                                "setting, or for an HF folder 128 capped at the room the longest "
                                "prompt leaves in the model's context)")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy (sample)")
_TOP_K = flags.DEFINE_integer("top_k", 0, "top-k (sample)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "top-p (sample)")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "completions per prompt (sample)")
_SPECULATIVE = flags.DEFINE_enum(
    "speculative", "none", ["none", "exact", "specdec_pp", "spectr", "del", "skipdecode"],
    "sample: decoder (lossless: exact, specdec_pp, spectr, del; lossy: skipdecode)")
_DRAFT = flags.DEFINE_enum("draft", "ngram", ["ngram", "layers", "model"],
                           "sample --speculative: draft source")
_DRAFT_MODEL = flags.DEFINE_string("draft_model", "", "sample --draft=model: HF folder or workdir")
_DRAFT_LAYERS = flags.DEFINE_integer("draft_layers", 2, "sample --draft=layers: exit layer")
_NUM_DRAFT = flags.DEFINE_integer("num_draft_tokens", 4, "sample --speculative: K per verify pass")
_NUM_DRAFTS = flags.DEFINE_integer("num_drafts", 4, "sample --speculative=spectr: i.i.d. drafts")
_HEAD = flags.DEFINE_string("head", "", "sample --speculative=specdec_pp: acceptance-head workdir")
_OUT = flags.DEFINE_string("out", None, "output folder (export)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed (sample)")
_DEVICES = flags.DEFINE_string("devices", None,
                               "plan: a device count (of the local kind) or kind, e.g. 64, h100-8, "
                               "v5e-64 (default: this job's devices)")
_COORDINATOR = flags.DEFINE_string("coordinator", "",
                                   "train: HOST:PORT of process 0 in a multi-process job "
                                   "(default: $TOKENRL_COORDINATOR, SLURM or TPU-pod detection)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0,
                                      "train: processes in the job (0 = detect)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "train: this process's index (-1 = detect)")

COMMANDS = ("train", "eval", "sample", "export", "plan")


def load_workdir(workdir: str):
  from tokenrl.train.workdir import load_workdir as load
  try:
    return load(workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e


def _cmd_train() -> None:
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("train needs --config and --workdir")
  from tokenrl.train import distributed
  # Before anything touches a device: a multi-host job joins its coordinator here.
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from tokenrl.train.rl_loop import train
  train(_CONFIG.value, _WORKDIR.value)


def _cmd_plan() -> None:
  """Prints the per-device memory table and verdict; exit code 1 when it does not fit or a
  problem (a batch the mesh cannot split, a context too short, ...) stops the run."""
  from tokenrl.train.plan import plan
  if _CONFIG.value is None:
    raise app.UsageError("plan needs --config")
  devices = _DEVICES.value
  try:
    result = plan(_CONFIG.value, int(devices) if devices and devices.isdigit() else devices)
  except ValueError as e:
    print(f"tokenrl plan: {e}", file=sys.stderr)
    sys.exit(1)
  print(result.table())
  print(result.verdict())
  if not result.runs:  # out of memory, or a problem (e.g. a batch the mesh cannot split)
    sys.exit(1)


def _cmd_eval() -> None:
  from tokenrl.eval import evaluate
  from tokenrl.train.setup import encode_prompts
  if not _WORKDIR.value:
    raise app.UsageError("eval needs --workdir")
  cfg, run, params = load_workdir(_WORKDIR.value)
  result = evaluate(params, config=run.model, tokenizer=run.tokenizer, examples=run.eval_examples,
                    prompt_ids=encode_prompts(cfg, run.tokenizer, run.eval_examples),
                    reward_fn=run.verifier, max_new_tokens=cfg.sampler.max_new_tokens,
                    num_samples=max(cfg.train.eval_num_samples, 1), temperature=cfg.rl.temperature)
  print(json.dumps(result, indent=2))


HF_DEFAULT_NEW_TOKENS = 128


def _check_sample_flags() -> None:
  """UsageError naming the flag, its allowed range and the value given."""
  checks = [
      ("max_new_tokens", _MAX_NEW.value is None or _MAX_NEW.value >= 1, ">= 1"),
      ("num_samples", _NUM_SAMPLES.value >= 1, ">= 1"),
      ("temperature", _TEMPERATURE.value >= 0, ">= 0 (0 = greedy)"),
      ("top_k", _TOP_K.value >= 0, ">= 0 (0 = off)"),
      ("top_p", 0 < _TOP_P.value <= 1, "in (0, 1] (1 = off)"),
  ]
  bad = [f"--{name} must be {rule}, got {flags.FLAGS[name].value}" for name, ok, rule in checks
         if not ok]
  if bad:
    raise app.UsageError("; ".join(bad))


def default_max_new_tokens(max_seq_len: int, longest_prompt: int) -> int:
  """An HF folder's default completion length: 128, capped at the room the longest prompt
  leaves in the context (a 64-token model gets 64 - prompt, not 128)."""
  room = max_seq_len - longest_prompt
  if room < 1:
    raise app.UsageError(f"the longest prompt has {longest_prompt} tokens: no room for a "
                         f"completion in the model's context of {max_seq_len} tokens")
  return min(HF_DEFAULT_NEW_TOKENS, room)


def _cmd_sample() -> None:
  import jax
  import numpy as np
  from tokenrl import models
  from tokenrl.data.prompts import decode_completions, tokenize_prompts
  from tokenrl.data.tokenizer import load_tokenizer
  from tokenrl.rollout import sample
  if not _MODEL.value or not _PROMPT.value:
    raise app.UsageError("sample needs --model and at least one --prompt")
  _check_sample_flags()
  if os.path.isfile(os.path.join(_MODEL.value, "config.json")) and os.path.isdir(
      os.path.join(_MODEL.value, "checkpoints")):
    cfg, run, params = load_workdir(_MODEL.value)
    config, tok = run.model, run.tokenizer
    default_new = cfg.sampler.max_new_tokens
  else:
    config, params = models.load_hf(_MODEL.value)
    tok = load_tokenizer(_MODEL.value)
    default_new = None
  ids = tokenize_prompts(tok, _PROMPT.value)
  longest = max(len(x) for x in ids)
  if _MAX_NEW.value is not None:  # 0 is a value, not "unset"
    max_new = _MAX_NEW.value
  elif default_new is not None:
    max_new = default_new
  else:
    max_new = default_max_new_tokens(config.max_seq_len, longest)
  if longest + max_new > config.max_seq_len:
    raise app.UsageError(f"the longest prompt has {longest} tokens + --max_new_tokens {max_new} = "
                         f"{longest + max_new} > the model's context of {config.max_seq_len} "
                         f"tokens: lower --max_new_tokens to {config.max_seq_len - longest} or "
                         "shorten the prompt")
  kw = dict(config=config, rng=jax.random.key(_SEED.value), max_new_tokens=max_new,
            temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
            num_samples=_NUM_SAMPLES.value, stop_tokens=tuple(tok.eos_token_ids))
  out = _speculative_sample(params, ids, config, tok, kw) if _SPECULATIVE.value != "none" else (
      sample(params, ids, **kw))
  texts = decode_completions(tok, np.asarray(out.tokens), np.asarray(out.mask))
  for i, text in enumerate(texts):
    print(f"[{i // _NUM_SAMPLES.value}.{i % _NUM_SAMPLES.value}] {_PROMPT.value[i // _NUM_SAMPLES.value]}{text}")


def _speculative_sample(params, ids, config, tok, kw):
  """`tokenrl sample --speculative=...`: the decoder, then its acceptance on stderr."""
  if _SPECULATIVE.value == "skipdecode":  # lossy: evaluation only, never in training
    from tokenrl.rollout.skipdecode import skip_sample
    out, info = skip_sample(params, ids, **kw)
    print(f"[skipdecode] layers run per position: {list(map(int, info.layers_run))}",
          file=sys.stderr)
    return out
  from tokenrl.config import base_config
  from tokenrl.train.decoding import build_decoder
  cfg = base_config()
  spec = cfg.sampler.speculative
  spec.method, spec.draft, spec.draft_model = _SPECULATIVE.value, _DRAFT.value, _DRAFT_MODEL.value
  spec.draft_layers, spec.num_draft_tokens = _DRAFT_LAYERS.value, _NUM_DRAFT.value
  spec.num_drafts, spec.head = _NUM_DRAFTS.value, _HEAD.value
  try:
    decoder = build_decoder(cfg, config, tok)
  except ValueError as e:
    raise app.UsageError(str(e).replace("sampler.speculative.", "--")) from None
  out = decoder(params, ids, **kw)
  stats = decoder.take_metrics()
  print(f"[{_SPECULATIVE.value}] " + ", ".join(f"{k}={v:.3f}" for k, v in stats.items()),
        file=sys.stderr)
  return out


def _cmd_export() -> None:
  from tokenrl import models
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError("export needs --workdir and --out")
  from tokenrl.train.workdir import model_params
  _, run, params = load_workdir(_WORKDIR.value)
  # A value head or other method-owned params are not part of the HF checkpoint. The run's
  # tokenizer goes with it, so `tokenrl sample --model OUT` (and transformers) can read it.
  models.save_hf(_OUT.value, run.model, model_params(params, run.model), tokenizer=run.tokenizer)
  print(f"wrote {_OUT.value}")


def main(argv) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: tokenrl {{{'|'.join(COMMANDS)}|analyze|audit}} [flags]")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  {"train": _cmd_train, "eval": _cmd_eval, "sample": _cmd_sample, "export": _cmd_export,
   "plan": _cmd_plan}[argv[1]]()


def _tool_command(argv: list[str]) -> int:
  """`tokenrl analyze TOOL ...` / `tokenrl audit TOOL ...`: argparse subcommands (own flags)."""
  import importlib
  from tokenrl import commands
  table = commands.ANALYZE if argv[1] == "analyze" else commands.AUDIT
  if len(argv) < 3 or argv[2] not in table:
    print(f"usage: tokenrl {argv[1]} {{{'|'.join(table)}}} [flags]  (--help for a tool's flags)",
          file=sys.stderr)
    return 2
  return importlib.import_module(table[argv[2]]).run(argv[3:])


def run() -> None:
  if len(sys.argv) > 1 and sys.argv[1] in ("analyze", "audit"):
    sys.exit(_tool_command(sys.argv))
  app.run(main)


if __name__ == "__main__":
  run()
