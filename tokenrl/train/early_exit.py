"""LayerSkip early-exit trainer (spec decoding-and-test-time §6): `rl.objective=early_exit`.

`train_early_exit(cfg, workdir)` is what `tokenrl train` runs for `rl.objective=early_exit`: it
fine-tunes the run's model (a preset, model.hf_path or model.init_workdir) so that its first
layers + its own final norm and unembedding become a usable drafter (sampler.speculative
draft='layers', DEL). Phases of the run skeleton (checkpointed, resumable):

  sft         train.sft_steps plain SFT steps (a preset trained from scratch; 0 for a zoo model).
  early_exit  train.max_steps steps of train.sft_batch_size (prompt, answer) sequences with the
              early-exit loss J = Σ_ℓ ẽ_ℓ(t)·CE_ℓ at every layer and per-row layer dropout
              p_ℓ(t) (tokenrl/objectives/early_exit.py; rl.early_exit.* picks the scales, the
              curriculum and the dropout), optimizer = the `optimizer` section.
Evaluated at the start and the end of the early_exit phase on the held-out examples (teacher
forced, no dropout): per exit ℓ the CE, the token accuracy and the agreement of its greedy token
with the full model's (the greedy acceptance rate of an ℓ-layer self-drafter). The checkpoint's
params are the whole model, as for any run (`tokenrl export|sample|eval --workdir`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.objectives import early_exit as ee
from tokenrl.optim import build_optimizer
from tokenrl.train import batches as batches_lib
from tokenrl.train import steps as steps_lib
from tokenrl.train import workdir as workdir_lib
from tokenrl.train.phases import sampled_sft_batch, sft_optimizer
from tokenrl.train.setup import build_run, encode_prompts
from tokenrl.train.skeleton import NumpyRng, Phase, RunSpec, run_job


def make_early_exit_step(tx, *, config, dropout: bool, micro_batch_size: int = 0,
                         remat: bool = False):
  """jitted step(state, batch, scales [L], rates [L], key) -> (state, metrics).

  batch: an SFT batch (tokens, segment_ids, loss_mask [N,S]). scales ẽ(t) and rates p(t) are
  arguments (their schedules never recompile); dropout=False ignores rates (one ordinary
  forward). Each micro-batch divides by the whole minibatch's token count, so accumulation
  equals one batch; the dropout draws use fold_in(key, micro-batch row offset) per micro-batch.
  metrics: loss, ce_<ℓ>, agreement_<ℓ> (ℓ = 1..L) and the optimizer's.
  """
  L = config.num_layers

  def step(state, batch, scales, rates, key):
    denom = jnp.maximum(batch["loss_mask"][:, 1:].sum().astype(jnp.float32), 1.0)
    n = batch["tokens"].shape[0]

    def loss_fn(params, mb):
      # A different key per micro-batch: its first row id (strided split, see steps._split).
      k = jax.random.fold_in(key, mb["row"][0])
      # Per-token sums / the minibatch's count: micro-batch losses and metrics add up to means.
      loss, stats = ee.model_early_exit_loss(
          params, mb["tokens"], mb["segment_ids"], mb["loss_mask"], config=config, scales=scales,
          drop_rates=rates if dropout else None, rng=k, remat=remat, denominator=denom)
      metrics = {**{f"ce_{l + 1}": stats["ce"][l] for l in range(L)},
                 **{f"agreement_{l + 1}": stats["agreement"][l] for l in range(L)}}
      return loss, metrics

    batch = {**batch, "row": jnp.arange(n, dtype=jnp.int32)}
    loss, metrics, grads = steps_lib._accumulate(loss_fn, state.params, batch, micro_batch_size)  # pylint: disable=protected-access
    return steps_lib._apply(state, tx, loss, grads, metrics)  # pylint: disable=protected-access

  return jax.jit(step, donate_argnums=0)


def train_early_exit(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Optional SFT, then early-exit training (module docstring)."""
  if cfg.rl.objective != "early_exit":
    raise ValueError(f"train_early_exit: rl.objective must be 'early_exit', got "
                     f"{cfg.rl.objective!r}")
  return run_job(cfg, workdir, build_early_exit)


def build_early_exit(cfg: ml_collections.ConfigDict, workdir: str) -> RunSpec:
  """Phases 'sft' (train.sft_steps > 0) and 'early_exit' (train.max_steps, evaluated at its
  start and end)."""
  del workdir
  sec = cfg.rl.early_exit
  run = build_run(cfg)
  tok, model = run.tokenizer, run.model
  params = run.params
  if cfg.model.init_workdir:
    other, loaded = workdir_lib.load_params(cfg.model.init_workdir)
    workdir_lib.check_init_model(cfg.model.init_workdir, other, model)
    params = workdir_lib.model_params(loaded, model)
  L, T = model.num_layers, cfg.train.max_steps
  rng = NumpyRng(cfg.seed)
  key = jax.random.key(cfg.seed)
  sft_tx = sft_optimizer(cfg)
  sft = steps_lib.make_sft_step(sft_tx, config=model, micro_batch_size=cfg.train.micro_batch_size,
                                remat=cfg.model.remat)
  tx = build_optimizer(cfg.optimizer, max(T, 1), key="train.max_steps")
  dropout = sec.layer_dropout > 0
  ee_step = make_early_exit_step(tx, config=model, dropout=dropout,
                                 micro_batch_size=cfg.train.micro_batch_size, remat=cfg.model.remat)
  B = cfg.train.sft_batch_size
  held = run.eval_examples
  held_ids = encode_prompts(cfg, tok, held)
  # Held-out batches of B sequences (the last padded with repeats and masked out): one compile.
  eval_batches = []
  for i in range(0, len(held), B):
    part, ids = held[i:i + B], held_ids[i:i + B]
    pad = B - len(part)
    b = batches_lib.sft_batch(ids + [ids[-1]] * pad, part + [part[-1]] * pad, tok)
    b["loss_mask"][len(part):] = 0
    eval_batches.append(b)

  @jax.jit
  def eval_sums(p, batch):
    m = batch["loss_mask"][:, 1:]
    _, stats = ee.model_early_exit_loss(p, batch["tokens"], batch["segment_ids"],
                                        batch["loss_mask"], config=model, scales=jnp.ones(L),
                                        denominator=1.0)
    return stats, m.sum()

  def schedules(s):
    on = ee.curriculum(L, s, kind=sec.curriculum, rotation=sec.rotation, total_steps=max(T, 1),
                       fraction=sec.gradual_fraction)
    scales = ee.layer_loss_scales(L, scale=sec.loss_scale, e_scale=sec.e_scale, enabled=on)
    rates = ee.layer_dropout_rates(L, sec.layer_dropout, scale=sec.dropout_scale,
                                   schedule=sec.dropout_schedule, step=s, total_steps=max(T, 1))
    return scales, rates

  def sft_step(state, g, s):
    del g, s
    return sft(state, sampled_sft_batch(cfg, tok, run.train_examples, rng.rng, B))

  def step(state, g, s):
    scales, rates = schedules(s)
    batch = sampled_sft_batch(cfg, tok, run.train_examples, rng.rng, B)
    state, m = ee_step(state, batch, jnp.asarray(scales), jnp.asarray(rates),
                       jax.random.fold_in(key, g))
    return state, {k: float(v) for k, v in m.items()}

  def evaluate(state, g, when):
    del g
    totals, count = None, 0.0
    for b in eval_batches:
      stats, n = eval_sums(state.params, b)
      stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
      totals = stats if totals is None else {k: totals[k] + stats[k] for k in stats}
      count += float(n)
    out: dict[str, Any] = {"when": when}
    for name, v in totals.items():
      for l in range(L):
        out[f"{name}_{l + 1}"] = float(v[l] / max(count, 1.0))
    return out

  def summarize(state, meta, g):
    evals = [e for e in meta["evals"] if "ce_1" in e]
    first, last = evals[0], evals[-1]
    out: dict[str, Any] = {"objective": "early_exit", "steps": g, "early_exit_steps": T,
                           "skipped_updates": int(state.skipped)}
    for name in ("agreement", "accuracy", "ce"):
      for l in range(1, L + 1):
        out[f"{name}_{l}_start"] = first[f"{name}_{l}"]
        out[f"{name}_{l}"] = last[f"{name}_{l}"]
    return out

  phases = []
  if cfg.train.sft_steps:
    phases.append(Phase("sft", cfg.train.sft_steps,
                        lambda prev: steps_lib.create_state(params, sft_tx), sft_step))
  phases.append(Phase("early_exit", T,
                      lambda prev: steps_lib.create_state(params if prev is None else prev.params,
                                                          tx),
                      step, evaluate=evaluate, eval_at_start=True, eval_at_end=True,
                      eval_every=cfg.train.eval_every,
                      show=("loss", "ce_1", f"ce_{L}", "agreement_1")))
  prompt_len = max(len(p) for p in encode_prompts(cfg, tok, run.train_examples) + held_ids)
  return RunSpec(phases=phases, model=model, prompt_len=prompt_len, summarize=summarize,
                 iterators={"rng": rng}, plot=False)
