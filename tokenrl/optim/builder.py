"""The optimizer section of the config and the optax chain built from it.

`optimizer_config()` is the locked `optimizer` section of the base config (every field, its
default, one comment each). `build_optimizer(cfg, total_steps)` turns it into

  chain(clip_by_global_norm(grad_clip_norm)   [absent when grad_clip_norm == 0],
        <name>(learning_rate = build_schedule(cfg, total_steps), ...))

Defaults are those of RL fine-tuning of small LMs (TRL GRPOConfig / verl actor): AdamW,
lr 1e-6 constant, weight decay 0.01, gradient clip 1.0.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from tokenrl.optim.lion_kappa import GROUPINGS, KAPPAS, lion_kappa

PyTree = Any

NAMES = ("adamw", "lion", "lion_kappa", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
DECAY_MASKS = ("all", "matrices")


def optimizer_config() -> ml_collections.ConfigDict:
  """The locked `optimizer` config section with its defaults (misspelled keys then fail)."""
  cfg = ml_collections.ConfigDict()
  cfg.name = "adamw"  # 'adamw' | 'lion' | 'lion_kappa' | 'sgd'
  cfg.learning_rate = 1e-6  # peak η. RL fine-tuning default (TRL GRPO, verl); Lion: ~3-10x smaller
  cfg.schedule = "constant"  # 'constant' | 'cosine' | 'linear' decay after warmup, over total_steps
  cfg.warmup_steps = 0  # linear warmup 0 -> learning_rate over this many optimizer steps
  cfg.min_lr_ratio = 0.0  # final lr / peak lr for 'cosine' and 'linear' (verl's name)
  cfg.b1 = 0.9  # AdamW β1; Lion β1 (update interpolation). SGD uses `momentum` instead
  cfg.b2 = 0.999  # AdamW β2 (0.999); for lion / lion_kappa set 0.99 (the Lion default)
  cfg.eps = 1e-8  # AdamW ε added to √v̂
  cfg.weight_decay = 0.01  # λ, decoupled (×lr) for adamw/lion; 1/λ = Lion's box radius; sgd: L2
  cfg.weight_decay_mask = "matrices"  # 'all' | 'matrices' (only ndim ≥ 2 leaves: no bias/norm)
  cfg.momentum = 0.0  # SGD heavy-ball momentum (0 = plain SGD)
  cfg.mu_dtype = ""  # first-moment dtype, e.g. 'bfloat16'; '' = same as the gradients
  cfg.kappa = "l1"  # lion_kappa ∇κ name (tokenrl.optim.KAPPAS); 'l1' = Lion
  cfg.kappa_grouping = "leaf"  # 'leaf' | 'global': the vector a non-separable κ (l2, lp, ...) sees
  cfg.kappa_p = 1.5  # p ≥ 1 of kappa='lp' (constraint ‖λx‖_q ≤ 1, 1/p + 1/q = 1)
  cfg.kappa_delta = 1.0  # Huber width δ of kappa='huber' (1 = optax mode 'refined')
  cfg.kappa_beta = 1.0  # sharpness β of kappa='logcosh' (optax smooth_beta)
  cfg.kappa_c = 1.0  # rest mass c of kappa='relativistic'
  cfg.kappa_threshold = 0.0  # dead zone τ of kappa='deadzone', in momentum units
  cfg.kappa_rescale = False  # multiply non-separable κ directions by √(group size) (Lion-like lr)
  cfg.grad_clip_norm = 1.0  # clip by global ℓ2 norm before the optimizer; 0 = off
  cfg.lock()
  return cfg


def _choice(cfg: ml_collections.ConfigDict, field: str, allowed: tuple[str, ...]) -> str:
  value = cfg[field]
  if value not in allowed:
    raise ValueError(f"optimizer.{field} must be one of {list(allowed)}, got {value!r}")
  return value


def _nonneg(cfg: ml_collections.ConfigDict, field: str) -> float:
  value = cfg[field]
  if not value >= 0:
    raise ValueError(f"optimizer.{field} must be >= 0, got {value!r}")
  return value


def clamp_warmup(warmup: int, total_steps: int, *, total_key: str = "total_steps") -> int:
  """warmup, or total_steps // 10 when warmup > total_steps (logged as a warning).

  A short run (`--config.train.max_steps=3`, the first thing anyone tries) must not stop on a
  warm-up sized for the full run. total // 10 keeps the usual ~10% warm-up fraction, so the run
  still spends most of its steps at the peak rate (and a decay schedule still decays); clamping
  to `total` instead would train the whole short run below the configured learning rate.
  """
  if warmup <= total_steps:
    return warmup
  new = max(0, total_steps // 10)
  logging.warning("optimizer.warmup_steps=%d > %s=%d: clamped to %d (total // 10) for this run",
                  warmup, total_key, total_steps, new)
  return new


def build_schedule(cfg: ml_collections.ConfigDict, total_steps: int, *,
                   total_key: str = "total_steps") -> optax.Schedule:
  """η(step): linear warmup 0 -> lr over warmup_steps, then constant / cosine / linear decay.

  For 'cosine' and 'linear' the decay runs from lr at step warmup_steps to lr·min_lr_ratio at
  step total_steps and stays there. Always a schedule (never a float), so the optimizer state
  has the same structure for every setting.

  Args:
    cfg: the `optimizer` section (see `optimizer_config`).
    total_steps: number of optimizer steps of the run, > 0; a larger warmup_steps is clamped
      (`clamp_warmup`).
    total_key: the config key total_steps comes from, for the clamp warning.

  Returns:
    An optax schedule: int32 step count -> f32 learning rate.
  """
  kind = _choice(cfg, "schedule", SCHEDULES)
  lr = cfg.learning_rate
  if not lr > 0:
    raise ValueError(f"optimizer.learning_rate must be > 0, got {lr!r}")
  warmup = int(cfg.warmup_steps)
  if warmup < 0:
    raise ValueError(f"optimizer.warmup_steps must be >= 0, got {warmup}")
  if not (isinstance(total_steps, int) and total_steps > 0):
    raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
  warmup = clamp_warmup(warmup, total_steps, total_key=total_key)
  ratio = cfg.min_lr_ratio
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"optimizer.min_lr_ratio must be in [0, 1], got {ratio!r}")

  decay_steps = total_steps - warmup
  if kind == "constant" or decay_steps == 0:
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=ratio)
  else:
    main = optax.linear_schedule(lr, lr * ratio, decay_steps)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(kind: str) -> Callable[[PyTree], PyTree] | None:
  if kind == "all":
    return None
  # Biases and norm scales (ndim < 2) are not decayed, as in HF Trainer / big_vision.
  return lambda params: jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def build_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, *,
                    key: str = "total_steps") -> optax.GradientTransformationExtraArgs:
  """The training loop's optax chain: global-norm clip -> optimizer(schedule).

  Args:
    cfg: the `optimizer` section (see `optimizer_config`).
    total_steps: number of optimizer steps of the run (for the schedule).
    key: the config key total_steps comes from (named when the warm-up is clamped).

  Returns:
    An optax transformation; `update(grads, state, params)` needs params (weight decay).

  Raises:
    ValueError: naming the `optimizer.<field>` that is unknown or out of range.
  """
  name = _choice(cfg, "name", NAMES)
  mask = _decay_mask(_choice(cfg, "weight_decay_mask", DECAY_MASKS))
  schedule = build_schedule(cfg, total_steps, total_key=key)
  weight_decay = _nonneg(cfg, "weight_decay")
  clip = _nonneg(cfg, "grad_clip_norm")
  try:
    mu_dtype = jnp.dtype(cfg.mu_dtype) if cfg.mu_dtype else None
  except TypeError as e:
    raise ValueError(f"optimizer.mu_dtype must be '' or a dtype name, got {cfg.mu_dtype!r}") from e
  for field in ("b1", "b2"):
    if not 0.0 <= cfg[field] <= 1.0:
      raise ValueError(f"optimizer.{field} must be in [0, 1], got {cfg[field]!r}")

  if name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=mu_dtype,
                      weight_decay=weight_decay, mask=mask)
  elif name == "lion":
    opt = optax.lion(schedule, b1=cfg.b1, b2=cfg.b2, mu_dtype=mu_dtype,
                     weight_decay=weight_decay, mask=mask)
  elif name == "lion_kappa":
    kappa = _choice(cfg, "kappa", tuple(sorted(KAPPAS)))
    grouping = _choice(cfg, "kappa_grouping", GROUPINGS)
    try:
      opt = lion_kappa(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=weight_decay, kappa=kappa,
                       mu_dtype=mu_dtype, mask=mask, grouping=grouping, p=cfg.kappa_p,
                       delta=cfg.kappa_delta, beta=cfg.kappa_beta, c=cfg.kappa_c,
                       threshold=cfg.kappa_threshold, rescale=cfg.kappa_rescale)
    except ValueError as e:  # name the config field, not the keyword argument
      raise ValueError(f"optimizer.kappa_*: {e}") from e
  else:
    momentum = _nonneg(cfg, "momentum")
    # torch.optim.SGD semantics: weight decay is an L2 term added to the gradient (coupled).
    opt = optax.chain(optax.add_decayed_weights(weight_decay, mask),
                      optax.sgd(schedule, momentum=momentum or None, accumulator_dtype=mu_dtype))
  if clip == 0:
    return opt
  return optax.chain(optax.clip_by_global_norm(clip), opt)
