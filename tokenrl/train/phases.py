"""Pieces several trainers' phases share: the SFT warm-up optimizer and its sampled batches."""

from __future__ import annotations

from typing import Any

import ml_collections
import optax

from tokenrl.train import batches as batches_lib
from tokenrl.train.setup import encode_prompts


def sft_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW at train.sft_learning_rate, linear warm-up over the first 10% of train.sft_steps."""
  warmup = max(1, cfg.train.sft_steps // 10)
  lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.train.sft_learning_rate, warmup),
                             optax.constant_schedule(cfg.train.sft_learning_rate)], [warmup])
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.0))


def adam(learning_rate: float) -> optax.GradientTransformation:
  """Clipped AdamW at a constant rate (the staged methods' warm-up and stage optimizers)."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=0.0))


def sampled_sft_batch(cfg: ml_collections.ConfigDict, tokenizer: Any, examples, rng, size: int):
  """An SFT batch of `size` examples drawn with replacement by the numpy Generator `rng`."""
  ex = [examples[i] for i in rng.integers(len(examples), size=size)]
  return batches_lib.sft_batch(encode_prompts(cfg, tokenizer, ex), ex, tokenizer)
