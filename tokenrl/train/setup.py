"""Everything a run builds from its config before the first step: tokenizer, model, examples,
reward functions. Each piece fails with the config key named."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from tokenrl import models
from tokenrl.data import rewards as rewards_lib
from tokenrl.data import tasks as tasks_lib
from tokenrl.data.jsonl import read_jsonl, where_of
from tokenrl.data.prompts import tokenize_prompts
from tokenrl.data.tokenizer import load_tokenizer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Run:
  tokenizer: Any
  model: models.ModelConfig
  params: Any
  train_examples: list[dict[str, Any]]
  eval_examples: list[dict[str, Any]]
  reward_fns: dict[str, Callable[[str, Mapping[str, Any]], float]]
  reward_weights: dict[str, float]
  verifier: Callable[[str, Mapping[str, Any]], float]


def build_tokenizer(cfg: ml_collections.ConfigDict) -> Any:
  spec = cfg.data.tokenizer or cfg.model.hf_path
  if not spec:
    raise ValueError("data.tokenizer is empty and model.hf_path is not set: nothing to load")
  return load_tokenizer(spec)


def build_model(cfg: ml_collections.ConfigDict, tokenizer: Any, rng: jax.Array, mesh: Any = None):
  """(ModelConfig, params) from model.hf_path, or a preset initialised from `rng`.

  With a mesh, params are read or created directly in their shardings (each device computes or
  reads only its own shard; the whole model never sits on one device or host).
  """
  m = cfg.model
  if m.dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {m.dtype!r}")
  dtype = _DTYPES[m.dtype]
  if m.hf_path:
    config, params = models.load_hf(m.hf_path, dtype=dtype, mesh=mesh)
  else:
    if m.preset == "tiny":
      config = models.tiny(m.family, vocab_size=tokenizer.vocab_size, dim=m.dim,
                           num_layers=m.num_layers, num_heads=m.num_heads,
                           num_kv_heads=m.num_kv_heads, mlp_dim=m.mlp_dim,
                           max_seq_len=m.max_seq_len, pad_id=tokenizer.pad_id,
                           bos_id=tokenizer.bos_id, eos_ids=tuple(tokenizer.eos_token_ids))
    else:
      config = models.get_preset(m.preset)
    params = _init_params(config, rng, dtype, mesh)
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                     f"{config.vocab_size} (data.tokenizer vs model.*)")
  attention = m.get("attention", "full")
  if attention != "full":
    from tokenrl.models.config import TokenSelectConfig  # noqa: PLC0415 (kept inside build_model)
    ts = TokenSelectConfig(
        top_k=m.get("tokenselect_top_k", 2048), n_init=m.get("tokenselect_n_init", 128),
        n_local=m.get("tokenselect_n_local", 512),
        chunk_size=m.get("tokenselect_chunk_size", 512),
        threshold=m.get("tokenselect_threshold", 0.9), cache=m.get("tokenselect_cache", True))
    config = config.replace(attention=attention, tokenselect=ts)
  return config, params


def _init_params(config: Any, rng: jax.Array, dtype: Any, mesh: Any) -> Any:
  if mesh is None or mesh.size == 1:
    # One device: no sharding to honour. Eager init keeps the exact values of the unsharded
    # library path (jit may round the normal sampling differently in the last f32 bit, which
    # changes a whole RL trajectory, e.g. the quickstart's documented result).
    return models.init_params(config, rng, dtype=dtype)
  # pylint: disable=g-import-not-at-top
  from tokenrl.train.mesh import param_shardings
  from tokenrl.train.sharded import _replicate_key
  init = jax.jit(lambda key: models.init_params(config, key, dtype=dtype),
                 out_shardings=param_shardings(config, mesh))
  return init(_replicate_key(rng, mesh))


def build_examples(cfg: ml_collections.ConfigDict):
  """(train examples, held-out examples, verifier) for data.task."""
  d = cfg.data
  if d.task == "jsonl":
    if not d.jsonl_path:
      raise ValueError("data.task='jsonl' needs data.jsonl_path")
    examples = read_jsonl(d.jsonl_path)
    split = max(1, min(d.eval_size, len(examples) // 10))
    return examples[split:], examples[:split], rewards_lib.math_answer_reward
  if d.task == "gsm8k":
    from tokenrl.data.tfds_tasks import gsm8k_source
    data_dir = d.tfds_data_dir or None
    train = list(gsm8k_source("train", data_dir=data_dir))
    test = list(gsm8k_source("test", data_dir=data_dir))[:d.eval_size]
    return train, test, rewards_lib.math_answer_reward
  task = tasks_lib.get_task(d.task)
  tiers = d.tiers or task.default_tiers
  train = task.make_examples("train", d.train_size, cfg.seed, tiers=tiers)
  test = task.make_examples("test", d.eval_size, cfg.seed, tiers=tiers)
  return train, test, task.reward_fn


def build_run(cfg: ml_collections.ConfigDict, mesh: Any = None) -> Run:
  tokenizer = build_tokenizer(cfg)
  model_config, params = build_model(cfg, tokenizer, jax.random.fold_in(jax.random.key(cfg.seed), 0),
                                     mesh)
  train, test, verifier = build_examples(cfg)
  # rewards.fns: built-in names ('task' = this data task's verifier) or 'module:function'.
  fns, weights = rewards_lib.load_reward_fns(cfg.rewards.fns or "task", cfg.rewards.weights,
                                             builtins={**rewards_lib.REWARD_FNS, "task": verifier})
  if cfg.rewards.format_weight:
    fns["format"] = rewards_lib.format_reward
    weights["format"] = float(cfg.rewards.format_weight)
  return Run(tokenizer=tokenizer, model=model_config, params=params, train_examples=train,
             eval_examples=test, reward_fns=fns, reward_weights=weights, verifier=verifier)


def encode_prompts(cfg: ml_collections.ConfigDict, tokenizer: Any, examples) -> list[list[int]]:
  """Token ids of each example's prompt; a prompt longer than data.max_prompt_len is an error."""
  # A JSONL example names its file:line in any error; an embedded one its index.
  where = [where_of(ex, f"example {i}") for i, ex in enumerate(examples)]
  ids = tokenize_prompts(tokenizer, [ex["prompt"] for ex in examples],
                         use_chat_template=bool(cfg.data.chat_template), where=where)
  for i, p in enumerate(ids):
    if len(p) > cfg.data.max_prompt_len:
      raise ValueError(f"{where[i]}: prompt has {len(p)} tokens > data.max_prompt_len="
                       f"{cfg.data.max_prompt_len}: {examples[i]['prompt'][:80]!r}")
  return ids
