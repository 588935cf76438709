"""Start-up validation of the plain config fields: every bad value is reported before any work.

`validate_config(cfg)` checks the ranges that no later stage checks early enough (a zero batch,
a negative step count, a head count that leaves head_dim = 0, a zero reward timeout, ...) and
raises ONE ValueError listing every problem, each as

    <key> = <actual>: <allowed range> (<why>); fix: --config.<key>=<value>

so a user fixes all of them in one go. It is pure (reads the config, touches nothing) and runs
first in the run skeleton's start-up validation, before the workdir lock, the tokenizer or the
model are built. Method options (`rl.*`) are validated by the method itself
(`tokenrl.methods.config.resolve_objective`), sequence budgets by `check_budgets` once the model
is known.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections

from tokenrl.config import (CONTROL_METHODS, EVAL_ONLY_CONTROLS, LOSSLESS_SPECULATIVE,
                            LOSSY_SPECULATIVE, SPECULATIVE_DRAFTS)
from tokenrl.data.tasks import TASKS
from tokenrl.models.config import ATTENTIONS, FAMILIES
from tokenrl.models.presets import PRESETS

# data.task values handled by tokenrl.train.setup.build_examples besides the embedded TASKS.
EXTERNAL_TASKS = ("gsm8k", "jsonl")
DTYPES = ("float32", "bfloat16")


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _problems(cfg: ml_collections.ConfigDict) -> list[str]:
  out: list[str] = []

  def need(key: str, ok: Callable[[Any], bool], allowed: str, fix: str, why: str = "") -> None:
    value = cfg
    for part in key.split("."):
      value = value[part]
    try:
      good = ok(value)
    except TypeError:  # e.g. a string where a number belongs
      good = False
    if not good:
      reason = f" ({why})" if why else ""
      out.append(f"{key} = {value!r}: must be {allowed}{reason}; fix: --config.{key}={fix}")

  int_ge = lambda lo: (lambda v: _is_int(v) and v >= lo)

  # train.*
  need("train.max_steps", int_ge(0), "an integer >= 0", "200", "RL steps; 0 = SFT only")
  need("train.sft_steps", int_ge(0), "an integer >= 0", "0", "SFT warm-up steps; 0 = off")
  need("train.sft_batch_size", int_ge(1), "an integer >= 1", "64", "sequences per SFT step")
  need("train.micro_batch_size", int_ge(0), "an integer >= 0", "0", "0 = the whole minibatch")
  need("train.mini_batches", int_ge(1), "an integer >= 1", "1", "optimizer steps per rollout batch")
  need("train.log_every", int_ge(1), "an integer >= 1", "10")
  need("train.eval_every", int_ge(0), "an integer >= 0", "0", "0 = start and end only")
  need("train.eval_num_samples", int_ge(0), "an integer >= 0", "4", "k of pass@k; 0 = greedy accuracy only")
  need("train.checkpoint_every", int_ge(0), "an integer >= 0", "50", "0 = only at the end")
  need("train.keep_checkpoints", int_ge(1), "an integer >= 1", "2",
       "0 would delete every checkpoint, the final one included")
  need("train.sft_learning_rate", lambda v: _is_real(v) and v > 0, "a finite number > 0", "3e-3")

  # data.*
  tasks = sorted(TASKS) + list(EXTERNAL_TASKS)
  need("data.task", lambda v: v in tasks, f"one of {tasks}", "arith")
  if cfg.data.task == "jsonl":
    need("data.jsonl_path", lambda v: isinstance(v, str) and v != "",
         "a {prompt, answer} JSONL file when data.task='jsonl'", "path/to/train.jsonl")
  need("data.batch_size", int_ge(1), "an integer >= 1", "16", "prompts per RL step")
  need("data.train_size", int_ge(1), "an integer >= 1", "20000")
  need("data.eval_size", int_ge(1), "an integer >= 1", "256",
       "held-out examples; 0 leaves the accuracy undefined (NaN)")
  need("data.max_prompt_len", int_ge(1), "an integer >= 1", "32")

  # sampler.*
  need("sampler.max_new_tokens", int_ge(1), "an integer >= 1", "8", "completion tokens per rollout")
  need("sampler.top_k", int_ge(0), "an integer >= 0", "0", "0 = off")
  need("sampler.top_p", lambda v: _is_real(v) and 0 < v <= 1, "in (0, 1]", "1.0", "1.0 = off")
  spec = cfg.sampler.speculative
  need("sampler.speculative.method", lambda v: v in LOSSLESS_SPECULATIVE,
       f"one of {list(LOSSLESS_SPECULATIVE)} for training",
       "exact", f"{list(LOSSY_SPECULATIVE)} change the sampled law (lossy): use them with "
       "`tokenrl eval` / `tokenrl sample`, never for RL rollouts" if spec.method in
       LOSSY_SPECULATIVE else "the lossless speculative decoders")
  if spec.method != "none":
    need("sampler.speculative.draft", lambda v: v in SPECULATIVE_DRAFTS,
         f"one of {list(SPECULATIVE_DRAFTS)}", "ngram")
    need("sampler.speculative.num_draft_tokens", int_ge(0), "an integer >= 0", "4",
         "drafted tokens per verify pass; 0 = plain decoding through the speculative engine")
    need("sampler.speculative.ngram", int_ge(2), "an integer >= 2", "3")
    need("sampler.speculative.draft_layers", int_ge(1), "an integer >= 1", "2")
    need("sampler.speculative.num_drafts", int_ge(1), "an integer >= 1", "4")
    need("sampler.speculative.threshold", lambda v: _is_real(v) and 0 < v < 1, "in (0, 1)",
         "0.3")
    need("sampler.speculative.min_draft_tokens", int_ge(1), "an integer >= 1", "2")
    if spec.draft == "model" and spec.method in ("exact", "specdec_pp", "spectr"):
      need("sampler.speculative.draft_model", lambda v: isinstance(v, str) and v != "",
           "an HF folder or tokenrl workdir when sampler.speculative.draft='model'",
           "path/to/draft")
    if spec.method == "specdec_pp":
      need("sampler.speculative.head", lambda v: isinstance(v, str) and v != "",
           "the acceptance-head workdir when method='specdec_pp'", "runs/specdec_pp",
           "train one with configs/specdec_pp.py")

  # sampler.control.* (single-token strings are checked once the tokenizer exists)
  ctl = cfg.sampler.control
  trainable = [m for m in CONTROL_METHODS if m not in EVAL_ONLY_CONTROLS]
  if ctl.method in EVAL_ONLY_CONTROLS:
    # CNTP keeps the lowest-perplexity of several trials (the output law is not π and its
    # log-probs are π's, not the trajectory law's); a Soft Thinking concept token has no
    # log-prob at all. Neither gives behaviour log-probs an RL update could use.
    need("sampler.control.method", lambda v: v not in EVAL_ONLY_CONTROLS,
         f"one of {trainable} for training", "none",
         f"{list(EVAL_ONLY_CONTROLS)} are evaluation-only decoders with no log-prob of the law "
         "they sample: use them with `tokenrl eval` / `tokenrl sample`, never for RL rollouts")
  else:
    need("sampler.control.method", lambda v: v in trainable, f"one of {trainable} for training",
         "none", f"{list(EVAL_ONLY_CONTROLS)}: `tokenrl eval` / `tokenrl sample` only")
  if ctl.method == "cyclic_reflex":
    need("sampler.control.period", lambda v: _is_real(v) and v > 0, "a number of tokens > 0",
         "100")
    need("sampler.control.amplitude", _is_real, "a finite number (logits)", "3.0")
    need("sampler.control.shift", _is_real, "a finite number (fraction of a period)", "0.0")
    need("sampler.control.reflection", lambda v: isinstance(v, str) and v.strip(",") != "",
         "comma-separated reflection strings", "'?'")
  if ctl.method != "none":
    need("sampler.speculative.method", lambda v: v == "none",
         "'none' when sampler.control.method is set", "none",
         "a draft would need the control at every drafted position")
  if ctl.method == "cntp":
    # (punctuation, a string, is parsed and checked once the tokenizer exists)
    need("sampler.control.max_trials", int_ge(1), "an integer >= 1", "10",
         "N_max trials at a maximal-entropy step; 1 never branches")
    need("sampler.control.max_trial_tokens", int_ge(1), "an integer >= 1", "16",
         "the most tokens per trial")
    need("sampler.control.h_lo", _is_real, "a finite number of nats", "0.01")
    if _is_real(ctl.h_lo):
      need("sampler.control.h_hi", lambda v: _is_real(v) and v > ctl.h_lo,
           f"a finite number of nats > sampler.control.h_lo={ctl.h_lo}", "1.5",
           "the trial count rises from 1 at h_lo to max_trials at h_hi")
  if ctl.method == "soft_thinking":
    need("sampler.control.think_end", lambda v: isinstance(v, str) and v != "",
         "the end-of-thinking string (one token) when method='soft_thinking'", "'#'",
         "it closes the thought; decoding is discrete after it")
    need("sampler.control.max_topk", int_ge(1), "an integer >= 1", "10",
         "tokens mixed per concept token; 1 = greedy thinking")
    need("sampler.control.min_p", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)", "0.001",
         "0 = off")
    need("sampler.control.cold_stop_entropy", lambda v: _is_real(v) and v >= 0,
         "a finite number of nats >= 0", "0.01", "0 = Cold Stop off")
    need("sampler.control.cold_stop_length", int_ge(1), "an integer >= 1", "256",
         "consecutive low-entropy thinking steps before Cold Stop")
  if ctl.method == "budget":
    need("sampler.control.head", lambda v: isinstance(v, str) and v != "",
         "the budget head file when method='budget'", "runs/x/budget_head.safetensors",
         "fit one with tokenrl.train.budget_head.fit_budget_head")
    need("sampler.control.budget", _is_real, "a number of thinking tokens (<= 0: unguided)", "64")
    for key, default in (("min_rate", "10.0"), ("min_alpha", "1.0"), ("min_mode", "0.9")):
      need(f"sampler.control.{key}", lambda v: _is_real(v) and v >= 0,
           "a finite number >= 0 (0: that part of the validity mask is off)", default)

  # rewards.*
  need("rewards.timeout_s", lambda v: _is_real(v) and v > 0, "a finite number of seconds > 0",
       "5.0", "every reward call would time out and score 0")
  need("rewards.max_workers", int_ge(1), "an integer >= 1", "2", "reward worker processes")
  need("rewards.format_weight", _is_real, "a finite number", "0.0")

  # model.*
  m = cfg.model
  need("model.dtype", lambda v: v in DTYPES, f"one of {list(DTYPES)}", "float32")
  need("model.attention", lambda v: v in ATTENTIONS, f"one of {list(ATTENTIONS)}", "full")
  need("model.max_seq_len", int_ge(2), "an integer >= 2", "256",
       "longest prompt + completion, at least one token of each")
  if not m.hf_path:
    presets = sorted(PRESETS)
    need("model.preset", lambda v: v in PRESETS, f"one of {presets} (or set model.hf_path)",
         "tiny")
  if not m.hf_path and m.preset == "tiny":  # the shape fields build the model
    need("model.family", lambda v: v in FAMILIES, f"one of {list(FAMILIES)}", "qwen2")
    need("model.dim", int_ge(1), "an integer >= 1", "128", "the model width D")
    need("model.num_layers", int_ge(1), "an integer >= 1", "2")
    need("model.mlp_dim", int_ge(1), "an integer >= 1", "384")
    need("model.num_kv_heads", int_ge(1), "an integer >= 1", "2")
    need("model.num_heads", int_ge(1), "an integer >= 1", "4")
    if _is_int(m.dim) and _is_int(m.num_heads) and m.dim >= 1 and m.num_heads >= 1:
      divisors = [h for h in range(1, min(m.dim, 64) + 1) if m.dim % h == 0]
      need("model.num_heads", lambda v: v <= m.dim and m.dim % v == 0,
           f"a divisor of model.dim={m.dim}, e.g. one of {divisors[-6:]}",
           str(next((h for h in reversed(divisors) if h <= 8), 1)),
           f"head_dim = model.dim / model.num_heads = {m.dim}/{m.num_heads}")
    if (_is_int(m.num_heads) and _is_int(m.num_kv_heads) and m.num_heads >= 1
        and m.num_kv_heads >= 1):
      need("model.num_kv_heads", lambda v: m.num_heads % v == 0,
           f"a divisor of model.num_heads={m.num_heads}", "1",
           "each key/value head serves a whole group of query heads")

  # mesh.*
  need("mesh.data", lambda v: _is_int(v) and (v == -1 or v >= 1), "-1 or an integer >= 1", "-1",
       "-1 = all remaining devices")
  need("mesh.fsdp", int_ge(1), "an integer >= 1", "1")
  need("mesh.tensor", int_ge(1), "an integer >= 1", "1")
  return out


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raise ValueError listing every out-of-range field of `cfg` (see the module docstring)."""
  problems = _problems(cfg)
  if problems:
    raise ValueError(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  "
                     + "\n  ".join(problems))
