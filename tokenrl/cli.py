"""`tokenrl train | eval | sample | export | plan | budget-head` (absl + ml_collections flags).

  tokenrl train --config configs/quickstart.py --workdir runs/quickstart
  tokenrl train --config configs/quickstart.py --config.rl.objective=dapo --workdir runs/x
  tokenrl eval --workdir runs/quickstart [--n 16 --k 1,4,16 --strategies greedy,pass,maj,bom,ffs]
  tokenrl eval --model HF_DIR --task arith_cot --control budget --budget 40 --head head.safetensors
  tokenrl eval --workdir runs/quickstart --control cntp --n 8 --k 1,4   (or soft_thinking)
  tokenrl eval --workdir runs/a,runs/b --out eval/ | --results eval/a.json,eval/b.json (frontier)
  tokenrl sample --model DIR_OR_WORKDIR --prompt "12+7=" [--num_samples 4 --temperature 0.7]
  tokenrl sample --model W --prompt "sort 3142=" --speculative=exact --draft=layers --draft_layers=1
  tokenrl sample --model W --prompt "37*48=" --control=cyclic_reflex [--config F --config.sampler.control.amplitude=5]
  tokenrl export --workdir runs/quickstart --out hf_model/
  tokenrl budget-head --workdir runs/arith_cot [--out F --num_samples 8 --limit 256]
  tokenrl plan --config configs/qwen3_8b_v5e64.py [--devices v5e-64 | --devices 64]
  tokenrl analyze {shapley|af1|control} --model DIR | --workdir W ...   (tokenrl.commands)
  tokenrl audit {coin|palace} ...
  tokenrl train ... --coordinator HOST:PORT --num_processes 4 --process_id 0   (multi-host)
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, summary); "
                               "eval: several, comma-separated")
_MODEL = flags.DEFINE_string("model", None, "HF folder or tokenrl workdir (sample; eval: several, "
                             "comma-separated)")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "prompt text (sample); repeat for several")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None,
                                "tokens to generate, >= 1 (sample; default: the run's sampler "
                                "setting, or for an HF folder 128 capped at the room the longest "
                                "prompt leaves in the model's context)")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy (sample); eval: the sampling "
                                  "temperature, > 0 (default: the run's rl.temperature, else 1)")
_TOP_K = flags.DEFINE_integer("top_k", 0, "top-k (sample; eval default: sampler.top_k)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "top-p (sample; eval default: sampler.top_p)")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "completions per prompt (sample; "
                                    "budget-head: traces per prompt, >= 2)")
_SPECULATIVE = flags.DEFINE_enum(
    "speculative", "none", ["none", "exact", "specdec_pp", "spectr", "del", "skipdecode"],
    "sample: decoder (lossless: exact, specdec_pp, spectr, del; lossy: skipdecode)")
_DRAFT = flags.DEFINE_enum("draft", "ngram", ["ngram", "layers", "model"],
                           "sample --speculative: draft source")
_DRAFT_MODEL = flags.DEFINE_string("draft_model", "", "sample --draft=model: HF folder or workdir")
_DRAFT_LAYERS = flags.DEFINE_integer("draft_layers", 2, "sample --draft=layers: exit layer")
_NUM_DRAFT = flags.DEFINE_integer("num_draft_tokens", 4, "sample --speculative: K per verify pass")
_NUM_DRAFTS = flags.DEFINE_integer("num_drafts", 4, "sample --speculative=spectr: i.i.d. drafts")
_HEAD = flags.DEFINE_string("head", "", "sample --speculative=specdec_pp: acceptance-head workdir; "
                           "eval/sample --control=budget: the budget-head file "
                           "(sampler.control.head)")
_OUT = flags.DEFINE_string("out", None, "output folder (export; eval: results.json/.md, plots)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed (sample, eval)")
# eval (tokenrl.eval.suite; README "Evaluation")
_TASK = flags.DEFINE_string("task", None, "eval: data task to evaluate on (default: the run's "
                            "data.task; required with an HF --model unless --config gives it)")
_STRATEGIES = flags.DEFINE_string("strategies", "greedy,pass,maj,bon,bom,ffs",
                                  "eval: comma-separated subset of greedy,pass,maj,bon,bom,ffs")
_N = flags.DEFINE_integer("n", 16, "eval: samples drawn per problem (every strategy reuses them)")
_K = flags.DEFINE_string("k", "", "eval: comma-separated samples per strategy attempt, each in "
                         "[1, n] (default: 1, 4, 16, ... up to n, and n)")
_ALPHA = flags.DEFINE_float("alpha", 0.2, "eval: Best-of-Majority frequency threshold in [0, 1]")
_SCORE = flags.DEFINE_enum("score", "logprob", ["logprob", "laser", "value"],
                           "eval: verifier-free score ranking bon/bom samples")
_PRICES = flags.DEFINE_string("prices", "in=0.15,out=0.6",
                              "eval: prompt/completion price per 1M tokens for cost-of-pass")
_CONTROL = flags.DEFINE_enum("control", None,
                             ["none", "cyclic_reflex", "budget", "cntp", "soft_thinking"],
                             "eval, sample: test-time control (sets sampler.control.method; "
                             "default: the run's or --config's); cntp / soft_thinking are "
                             "evaluation-only decoders")
_BUDGET = flags.DEFINE_float("budget", None, "eval/sample --control=budget: thinking tokens "
                             "allowed (sets sampler.control.budget)")
_LIMIT = flags.DEFINE_integer("limit", 0, "eval: evaluate the first N held-out problems (0 = all "
                              "data.eval_size)")
_RESULTS = flags.DEFINE_string("results", "", "eval: comma-separated results.json files of earlier "
                               "evals, joined to this one's for the frontier cost-of-pass")
_DEVICES = flags.DEFINE_string("devices", None,
                               "plan: a device count (of the local kind) or kind, e.g. 64, h100-8, "
                               "v5e-64 (default: this job's devices)")
_COORDINATOR = flags.DEFINE_string("coordinator", "",
                                   "train: HOST:PORT of process 0 in a multi-process job "
                                   "(default: $TOKENRL_COORDINATOR, SLURM or TPU-pod detection)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0,
                                      "train: processes in the job (0 = detect)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "train: this process's index (-1 = detect)")

COMMANDS = ("train", "eval", "sample", "export", "plan", "budget-head")


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


def _split(value: str | None) -> list[str]:
  return [v.strip() for v in (value or "").split(",") if v.strip()]


def _eval_ks(n: int) -> list[int]:
  """--k as ints (default 1, 4, 16, ... < n, and n); UsageError naming any k outside [1, n]."""
  from tokenrl.eval import suite
  if _K.value:
    try:
      ks = [int(k) for k in _split(_K.value)]
    except ValueError:
      raise app.UsageError(f"--k: expected comma-separated integers, got {_K.value!r}") from None
  else:
    ks = [4 ** i for i in range(8) if 4 ** i < n] + [n]
  try:
    return suite.check_ks(ks, n)
  except ValueError as e:
    raise app.UsageError(f"--k / --n: {e}".replace("k: every k", "every k")) from None


def _is_workdir(path: str) -> bool:
  """A tokenrl workdir (as `sample` tells them apart): config.json next to checkpoints/."""
  return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
      os.path.join(path, "checkpoints"))


def _eval_model(kind: str, path: str):
  """(cfg or None, ModelConfig, tokenizer, params, run or None) of one --workdir / --model."""
  from tokenrl import models
  from tokenrl.data.tokenizer import load_tokenizer
  flag = "--workdir" if kind == "workdir" else "--model"
  if kind == "workdir" or _is_workdir(path):
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise app.UsageError(f"{flag} {path!r} is not a tokenrl workdir (no config.json)")
    from tokenrl.train.workdir import load_workdir as load
    try:
      cfg, run, params = load(path)
    except FileNotFoundError as e:
      raise app.UsageError(f"{flag} {path!r} has no model to evaluate ({e}): train it first "
                           "(tokenrl train) or pass --model HF_DIR") from None
    return cfg, run.model, run.tokenizer, params, run
  if not os.path.isdir(path):
    raise app.UsageError(f"{flag} {path!r}: no such folder")
  try:
    config, params = models.load_hf(path)
    tok = load_tokenizer(path)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f"{flag} {path!r} holds no model to evaluate: {e}") from None
  return None, config, tok, params, None


def _eval_task(cfg, run, task: str):
  """(examples, verifier) of `task`'s held-out split; UsageError for a task with no verifier."""
  from tokenrl.data import tasks as tasks_lib
  from tokenrl.train.setup import build_examples
  if run is not None and task == cfg.data.task:
    return run.eval_examples, run.verifier
  known = sorted(tasks_lib.TASKS) + ["gsm8k", "jsonl"]
  if task not in known:
    raise app.UsageError(f"--task {task!r} has no verifier (eval needs one to score answers); "
                         f"tasks with a verifier: {known}")
  if task in tasks_lib.TASKS:
    t = tasks_lib.get_task(task)
    # Another task's tiers mean nothing to this one: its defaults unless the config names it.
    tiers = cfg.data.tiers if cfg.data.task == task and cfg.data.tiers else t.default_tiers
    try:
      examples = t.make_examples("test", cfg.data.eval_size, cfg.seed, tiers=tiers)
    except ValueError as e:
      raise app.UsageError(f"--task {task}: {e}") from None
    return examples, t.reward_fn
  c = cfg.copy_and_resolve_references()
  c.data.task = task
  _, examples, verifier = build_examples(c)
  return examples, verifier


def _eval_control(cfg):
  """The sampler.control section: --config's, else the run's; then --control/--budget/--head."""
  section = dict((_CONFIG.value or cfg).sampler.control)
  if _CONTROL.value is not None:
    section["method"] = _CONTROL.value
  if _BUDGET.value is not None:
    section["budget"] = _BUDGET.value
  if flags.FLAGS["head"].present:
    section["head"] = _HEAD.value
  return section


def _eval_one(kind: str, path: str, label: str, opts: dict):
  """Evaluate one --workdir / --model entry with the suite; returns its result dict."""
  import jax
  from tokenrl.config import base_config
  from tokenrl.eval import suite
  from tokenrl.eval.control_build import build_control, build_decoder, describe
  from tokenrl.train.setup import encode_prompts
  run_cfg, config, tok, params, run = _eval_model(kind, path)
  if run_cfg is None and _CONFIG.value is None and not _TASK.value:
    raise app.UsageError(f"--model {path}: an HF folder has no task; pass --task T (or --config)")
  # A workdir's own config; for an HF folder --config (or the defaults). --config never replaces
  # a run's data or sampler settings, only its sampler.control section (`_eval_control`).
  cfg = run_cfg if run_cfg is not None else (_CONFIG.value or base_config())
  task = _TASK.value or cfg.data.task
  examples, verifier = _eval_task(cfg, run, task)
  if _LIMIT.value > 0:
    examples = examples[:_LIMIT.value]
  try:
    prompt_ids = encode_prompts(cfg, tok, examples)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  longest = max(len(p) for p in prompt_ids)
  configured = run_cfg is not None or _CONFIG.value is not None
  if _MAX_NEW.value is not None:
    max_new = _MAX_NEW.value
  else:
    max_new = cfg.sampler.max_new_tokens if configured else default_max_new_tokens(
        config.max_seq_len, longest)
  if longest + max_new > config.max_seq_len:
    raise app.UsageError(f"the longest prompt has {longest} tokens + --max_new_tokens {max_new} = "
                         f"{longest + max_new} > the model's context of {config.max_seq_len}")
  present = lambda name: flags.FLAGS[name].present
  temperature = _TEMPERATURE.value if present("temperature") else (
      float(cfg.rl.temperature) if configured else 1.0)
  top_k = _TOP_K.value if present("top_k") else int(cfg.sampler.top_k)
  top_p = _TOP_P.value if present("top_p") else float(cfg.sampler.top_p)
  section = _eval_control(cfg)
  try:
    proc, state = build_control(section, tok, dim=config.dim, vocab_size=config.vocab_size)
    # cntp / soft_thinking: a decoder of their own in place of `sample` (None: `sample`).
    decoder = build_decoder(section, tok, config=config)
    collect_kw = {} if decoder is None else {"sampler": decoder}
    laser = cfg.rl.get("laser") if opts["score"] == "laser" else None
    score_fn = suite.make_score_fn(
        opts["score"], params, config=config,
        laser_token_id=None if laser is None else _laser_token(laser.token_id, config.vocab_size),
        beta_v=laser.beta_v if laser is not None else 0.1,
        c_ref=laser.c_ref if laser is not None else -23.0)
    if opts["score"] == "laser" and cfg.rl.objective != "laser":
      print(f"tokenrl eval: --score=laser on {path}, which was not trained with "
            "rl.objective=laser: its self-reward is not calibrated", file=sys.stderr)
    return suite.run_suite(
        params, config=config, tokenizer=tok, examples=examples, prompt_ids=prompt_ids,
        reward_fn=verifier, task=task, strategies=opts["strategies"], n=opts["n"], ks=opts["ks"],
        alpha=opts["alpha"], prices=opts["prices"], max_new_tokens=max_new,
        temperature=temperature, top_k=top_k, top_p=top_p, score=opts["score"],
        score_fn=score_fn, logit_processor=proc, processor_state=state,
        control=describe(section), label=label, rng=jax.random.key(_SEED.value),
        reward_timeout_s=float(cfg.rewards.timeout_s), progress=True, **collect_kw)
  except ValueError as e:
    raise app.UsageError(f"{path}: {e}") from None


def _laser_token(token_id: int, vocab_size: int) -> int:
  from tokenrl.methods.laser import resolve_token_id
  return resolve_token_id(int(token_id), vocab_size)


def _cmd_eval() -> None:
  """`tokenrl eval`: the evaluation suite (tokenrl/eval/suite.py) over each --workdir/--model,
  the frontier cost-of-pass when there are several results, --out for JSON/markdown/plots."""
  from tokenrl.eval import report, suite
  from tokenrl.eval.cost import parse_price_table
  sources = ([("workdir", w) for w in _split(_WORKDIR.value)]
             + [("model", m) for m in _split(_MODEL.value)])
  if not sources and not _RESULTS.value:
    raise app.UsageError("eval needs --workdir W[,W2,...] or --model HF_DIR (with --task), or "
                         "--results a.json,b.json for a frontier of earlier evals")
  try:
    strategies = suite.check_strategies(_split(_STRATEGIES.value))
  except ValueError as e:
    raise app.UsageError(f"--{e}") from None
  sampled = [s for s in strategies if s != "greedy"]
  if sampled and _N.value < 1:
    raise app.UsageError(f"--n must be >= 1 for strategies {sampled}, got {_N.value}")
  try:
    prices = parse_price_table(_PRICES.value)
  except ValueError as e:
    raise app.UsageError(f"--prices: {e}") from None
  if not 0.0 <= _ALPHA.value <= 1.0:
    raise app.UsageError(f"--alpha must be a frequency in [0, 1], got {_ALPHA.value}")
  if flags.FLAGS["temperature"].present and sampled and _TEMPERATURE.value <= 0:
    raise app.UsageError(f"--temperature must be > 0 to sample n={_N.value} completions for "
                         f"{sampled}, got {_TEMPERATURE.value}")
  opts = dict(strategies=strategies, n=_N.value, ks=_eval_ks(_N.value) if sampled else [],
              alpha=_ALPHA.value, prices=prices, score=_SCORE.value)
  earlier = []
  for path in _split(_RESULTS.value):
    try:
      earlier += report.load_results(path)
    except (OSError, ValueError, KeyError) as e:
      raise app.UsageError(f"--results {path}: {e}") from None
  labels = {r["label"] for r in earlier}
  results = []
  for kind, path in sources:
    label = os.path.basename(os.path.normpath(path)) or path
    base, i = label, 2
    while label in labels:
      label, i = f"{base}#{i}", i + 1
    labels.add(label)
    results.append(_eval_one(kind, path, label, opts))
  results += earlier
  front = None
  if len(results) > 1:
    try:
      front = suite.frontier(results)
    except ValueError as e:
      raise app.UsageError(f"frontier: {e}") from None
  print(report.markdown(results, front))
  if _OUT.value:
    paths = report.write_report(_OUT.value, results, front)
    print(f"wrote {', '.join(sorted(paths.values()))}", file=sys.stderr)


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
    cfg = None
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
  # sampler.control: a workdir's own (or --config's), then --control/--budget/--head.
  from tokenrl.config import base_config
  from tokenrl.eval.control_build import build_control, build_decoder
  section = _eval_control(cfg if cfg is not None else base_config())
  try:
    proc, state = build_control(section, tok, dim=config.dim, vocab_size=config.vocab_size)
    decoder = build_decoder(section, tok, config=config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if (proc is not None or decoder is not None) and _SPECULATIVE.value != "none":
    raise app.UsageError(f"--control and --speculative cannot be combined (control "
                         f"{section['method']!r}): a draft would need the control at every "
                         "drafted position; drop one of them")
  if decoder is not None:
    out = _control_sample(decoder, params, ids, kw)
  elif _SPECULATIVE.value != "none":
    out = _speculative_sample(params, ids, config, tok, kw)
  else:
    out = sample(params, ids, logit_processor=proc, processor_state=state, **kw)
  texts = decode_completions(tok, np.asarray(out.tokens), np.asarray(out.mask))
  for i, text in enumerate(texts):
    print(f"[{i // _NUM_SAMPLES.value}.{i % _NUM_SAMPLES.value}] {_PROMPT.value[i // _NUM_SAMPLES.value]}{text}")


def _control_sample(decoder, params, ids, kw):
  """`tokenrl sample --control=cntp|soft_thinking`: the decoder, then its counters on stderr."""
  import numpy as np
  try:
    out = decoder(params, ids, **{k: v for k, v in kw.items() if k != "config"})
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  info = decoder.last_info
  if decoder.method == "cntp":
    print(f"[cntp] steps={info.steps}, branch_steps={info.branch_steps}, branch_points="
          f"{info.branch_points}, emitted={info.emitted}, sampled_tokens={info.sampled_tokens} "
          f"({info.sampled_tokens / max(info.emitted, 1):.2f} per emitted token), "
          f"row_forwards={info.row_forwards}", file=sys.stderr)
  else:
    print(f"[soft_thinking] thinking steps per row: "
          f"{np.asarray(info.thinking_steps).tolist()}, closed: "
          f"{np.asarray(info.closed).tolist()}, cold stopped: "
          f"{np.asarray(info.cold_stopped).tolist()}", file=sys.stderr)
  return out


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


def _cmd_budget_head() -> None:
  """Fit budget guidance's remaining-length head on a run's own traces and save it.

  Prompts: the first --limit (0: 256) prompts of the run's TRAINING split (the held-out split is
  what `tokenrl eval` scores); --num_samples traces each at the run's rl.temperature; the think
  delimiter is the run's sampler.control.think_end. Writes --out (default
  WORKDIR/budget_head.safetensors) and prints the fit's held-out numbers.
  """
  import jax
  from tokenrl.eval.control_build import KEY, one_token_id
  from tokenrl.models.budget_head import save_budget_head
  from tokenrl.train.budget_head import fit_budget_head
  from tokenrl.train.setup import encode_prompts
  if not _WORKDIR.value:
    raise app.UsageError("budget-head needs --workdir (a trained run whose traces it learns)")
  if _NUM_SAMPLES.value < 2:
    raise app.UsageError(f"--num_samples must be >= 2 traces per prompt (default 1 is for "
                         f"`sample`; try 8), got {_NUM_SAMPLES.value}")
  cfg, run, params = load_workdir(_WORKDIR.value)
  tok = run.tokenizer
  try:
    think_end = one_token_id(tok, cfg.sampler.control.think_end, "think_end")
  except ValueError as e:
    raise app.UsageError(f"{e} (the run's {KEY}.think_end)") from None
  prompts = encode_prompts(cfg, tok, run.train_examples[:_LIMIT.value or 256])
  try:  # a policy that never writes the delimiter is named by `collect`
    head, info = fit_budget_head(
        params, run.model, prompts, think_end_id=think_end, stop_tokens=tuple(tok.eos_token_ids),
        max_new_tokens=int(cfg.sampler.max_new_tokens), rng=jax.random.key(_SEED.value),
        num_samples=_NUM_SAMPLES.value, temperature=float(cfg.rl.temperature) or 1.0)
  except ValueError as e:
    raise app.UsageError(f"budget-head on {_WORKDIR.value}: {e}") from None
  out = _OUT.value or os.path.join(_WORKDIR.value, "budget_head.safetensors")
  save_budget_head(out, head, {"workdir": os.path.abspath(_WORKDIR.value),
                               "think_end": cfg.sampler.control.think_end})
  print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))
  print(f"wrote {out}")


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
   "plan": _cmd_plan, "budget-head": _cmd_budget_head}[argv[1]]()


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
