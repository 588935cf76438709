"""The main job: optional SFT warm-up, then token-level RL, with evaluation, checkpoints and
metrics. `train(config, workdir)` is what `tokenrl train` runs.

Global step g counts SFT steps then RL steps. Sampling at RL step s uses
fold_in(key(seed), s), data order comes from checkpointed grain iterators, and the rewards are
deterministic, so a run resumed from a checkpoint continues bitwise identically (on CPU).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from tokenrl import objectives as obj
from tokenrl.data.pipeline import make_dataset
from tokenrl.data.reward_runner import RewardRunner
from tokenrl.methods import get_method
from tokenrl.methods.config import resolve_objective
from tokenrl.methods.base import StepContext, section_dict
from tokenrl.eval import evaluate
from tokenrl.optim import build_optimizer
from tokenrl.train import batches
from tokenrl.train import distributed
from tokenrl.train import steps as steps_lib
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.mesh import make_mesh
from tokenrl.train.metrics import MetricsWriter, plot_curves
from tokenrl.train.placement import Placement
from tokenrl.train.plan import check_fits
from tokenrl.train.setup import build_run, encode_prompts


class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint at the end of the step and exits."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def sft_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  warmup = max(1, cfg.train.sft_steps // 10)
  lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.train.sft_learning_rate, warmup),
                             optax.constant_schedule(cfg.train.sft_learning_rate)], [warmup])
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.0))


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Run the job described by `cfg` in `workdir` (resuming if it holds a checkpoint)."""
  start_time = time.time()
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  opts = resolve_objective(cfg.rl)
  loss_options = {k: opts[k] for k in obj.POLICY_LOSS_OPTIONS}
  method = get_method(opts["objective"])
  trainer = _own_trainer(method)
  if trainer is not None:  # pairwise (DPO family) or staged methods run their own loop
    return trainer(cfg, workdir)
  if cfg.train.check_memory:
    check_fits(cfg)  # fail fast with "does not fit: ... try: ..." before any allocation
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  run = build_run(cfg, mesh)  # params created / loaded straight into their shardings
  tok, model = run.tokenizer, run.model
  if cfg.model.init_workdir:
    run = dataclasses.replace(run, params=_init_from_workdir(cfg.model.init_workdir, model))
  place = Placement(mesh, model)
  place.check_rows(cfg.train.sft_batch_size, "train.sft_batch_size")
  place.check_rows(cfg.data.batch_size * opts["num_generations"] // max(cfg.train.mini_batches, 1),
                   "data.batch_size x rl.num_generations / train.mini_batches")
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))

  sft_steps, rl_steps = cfg.train.sft_steps, cfg.train.max_steps
  total = sft_steps + rl_steps
  T = cfg.sampler.max_new_tokens
  sft_tx = sft_optimizer(cfg)
  # With no RL steps (an SFT-only run) the RL optimizer is never used.
  rl_tx = build_optimizer(cfg.optimizer, rl_steps) if rl_steps else sft_tx
  # Each process reads its stride of the example stream (batch / process_count examples) and
  # the global batch is gathered from all of them (Placement.gather_examples).
  procs = jax.process_count()
  for key, size in (("train.sft_batch_size", cfg.train.sft_batch_size),
                    ("data.batch_size", cfg.data.batch_size)):
    if size % procs:
      raise ValueError(f"{key}={size} must be a multiple of the {procs} processes")
  sft_it = make_dataset(run.train_examples, batch_size=cfg.train.sft_batch_size // procs,
                        seed=cfg.seed)
  rl_it = make_dataset(run.train_examples, batch_size=cfg.data.batch_size // procs,
                       seed=cfg.seed + 1)
  eval_prompts = encode_prompts(cfg, tok, run.eval_examples)

  ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpoint)
  meta: dict[str, Any] = {"evals": [], "baseline": None, "method_state": {}}
  step = 0
  phase_of = lambda g: "sft" if g < sft_steps else "rl"
  # state_kind: which optimizer the state holds ('sft' until the RL phase starts).
  state_kind = "sft" if sft_steps else "rl"
  if ckpt.latest_step() is not None:
    step = ckpt.latest_step()
    state_kind = ckpt.restore_meta(step)["state_kind"]
  # Method-owned trainable params (a value head, ...) join the policy params at the RL phase.
  rl_params = lambda p: method.init_params(p, model, jax.random.fold_in(jax.random.key(cfg.seed), 7))
  state, shardings = (place.state(run.params, sft_tx) if state_kind == "sft"
                      else place.state(rl_params(run.params), rl_tx))
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    meta.setdefault("method_state", {})
    sft_it.set_state(meta["sft_iterator"])
    rl_it.set_state(meta["rl_iterator"])
    logging.info("resumed from %s at step %d", ckpt.directory, step)

  writer = MetricsWriter(workdir, total_steps=total, initial_step=step, enabled=is_main)
  runner = RewardRunner(run.reward_fns, run.reward_weights, timeout_s=cfg.rewards.timeout_s,
                        max_workers=cfg.rewards.max_workers)
  preempt = _Preemption()
  sft_step = None
  pg_steps: dict[int, Any] = {}
  logprob_fns: dict[int, Any] = {}
  ref_params = None
  base_key = jax.random.key(cfg.seed)

  def run_eval(g: int) -> dict[str, float]:
    dparams = place.decode_params(state.params)
    result = evaluate(state.params, config=model, tokenizer=tok, examples=run.eval_examples,
                      prompt_ids=eval_prompts, reward_fn=run.verifier, max_new_tokens=T,
                      num_samples=cfg.train.eval_num_samples, temperature=opts["temperature"],
                      rng=jax.random.fold_in(base_key, 2 ** 30 + g),
                      sampler=lambda p, ids, **kw: place.sample(p, ids, decode_params=dparams, **kw))
    result["step"] = g
    meta["evals"].append(result)
    writer.log(f"eval @ step {g}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items() if k != "step"))
    return result

  def save(g: int, force: bool = False) -> None:
    meta.update(sft_iterator=sft_it.get_state(), rl_iterator=rl_it.get_state(),
                state_kind=state_kind)
    ckpt.save(g, state, json.loads(json.dumps(meta, default=_jsonable)), force=force)

  try:
    while step < total:
      t0 = time.time()
      if step >= sft_steps and state_kind == "sft":
        # The RL phase starts from the warm-up params with a fresh RL optimizer.
        (state, shardings), state_kind = place.state(rl_params(state.params), rl_tx), "rl"
      if step == sft_steps and meta["baseline"] is None:
        meta["baseline"] = run_eval(step)
      if phase_of(step) == "sft":
        examples = place.gather_examples(next(sft_it))
        batch = batches.sft_batch(encode_prompts(cfg, tok, examples), examples, tok)
        if sft_step is None:
          sft_step = place.step(steps_lib.make_sft_step(
              sft_tx, config=model, micro_batch_size=cfg.train.micro_batch_size,
              remat=cfg.model.remat, jit=False), shardings)
        state, m = sft_step(state, place.put(batch))
        metrics = {k: float(v) for k, v in m.items()}
      else:
        if opts["beta"] > 0 and ref_params is None:
          # The KL reference is the policy at the start of the RL phase. It is not checkpointed:
          # a run resumed mid-RL with beta > 0 uses the resumed params as its reference.
          ref_params = jax.tree.map(jnp.copy, state.params)
        state, metrics = _rl_step(cfg, opts, loss_options, method, state, shardings, place,
                                  rl_it, run, runner, pg_steps, logprob_fns, ref_params, rl_tx,
                                  jax.random.fold_in(base_key, step), T, step - sft_steps,
                                  meta["method_state"])
      metrics["step_seconds"] = time.time() - t0
      writer.write(step, metrics, phase=phase_of(step))
      step += 1
      every = cfg.train.checkpoint_every
      # Any worker's SIGTERM stops every worker at the same step (a collective checkpoint).
      if distributed.any_process(preempt.requested):
        writer.log(f"SIGTERM: saving checkpoint at step {step} and exiting")
        save(step, force=True)
        ckpt.wait()
        return {"preempted": True, "steps": step}
      if every and step % every == 0 and step < total:
        save(step)
      if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total and step > sft_steps:
        run_eval(step)
    if meta["baseline"] is None:
      meta["baseline"] = run_eval(step)
    done_before = meta["evals"] and meta["evals"][-1]["step"] == step and step > sft_steps
    final = meta["evals"][-1] if done_before else run_eval(step)  # a rerun of a finished run
    save(step, force=True)
    ckpt.wait()
  finally:
    preempt.restore()
    runner.close()
    writer.close()
    ckpt.close()

  summary = {
      "baseline_accuracy": meta["baseline"]["accuracy"],
      "final_accuracy": final["accuracy"],
      "accuracy_gain": final["accuracy"] - meta["baseline"]["accuracy"],
      **{f"final_{k}": v for k, v in final.items() if k not in ("accuracy", "step")},
      "wall_seconds": time.time() - start_time,
      "steps": step,
      "sft_steps": sft_steps,
      "rl_steps": rl_steps,
      "objective": opts["objective"],
      "skipped_updates": int(state.skipped),
      "evals": meta["evals"],
  }
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    plot_curves(workdir, meta["evals"])
    _print_summary(summary)
  return summary


def _own_trainer(method: Any):
  """`train(cfg, workdir)` of a method that does not run the RL loop, or None.

  A Method names it as `trainer = "module:function"`; `pairwise = True` without one means the
  preference loop (tokenrl.train.pref_loop.train_preference).
  """
  spec = getattr(method, "trainer", None)
  if spec:
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)
  if getattr(method, "pairwise", False):
    from tokenrl.train.pref_loop import train_preference  # pylint: disable=g-import-not-at-top
    return train_preference
  return None


def _init_from_workdir(path: str, model: Any) -> Any:
  """The decoder params of another run's latest checkpoint (e.g. a shared SFT warm-up)."""
  from tokenrl.train.workdir import load_workdir, model_params  # pylint: disable=g-import-not-at-top
  _, other, params = load_workdir(path)
  if other.model != model:
    raise ValueError(f"model.init_workdir={path!r} holds a different model: {other.model} vs "
                     f"this config's {model}")
  return model_params(params, model)


def _jsonable(x: Any) -> Any:
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, bytes):
    return x.decode()
  raise TypeError(f"cannot store {type(x).__name__} in checkpoint metadata")


def _rl_step(cfg, opts, loss_options, method, state, shardings, place, rl_it, run, runner,
             pg_steps, logprob_fns, ref_params, tx, key, T, rl_step, method_state):
  """One rollout + reward + `num_iterations` policy updates; returns (state, metrics)."""
  tok, model = run.tokenizer, run.model
  G = opts["num_generations"]
  section = cfg.rl[method.name] if method.name in cfg.rl else None
  t0 = time.time()
  examples = place.gather_examples(next(rl_it))
  params = state.params

  def fns(P):
    if P not in logprob_fns:
      logprob_fns[P] = (
          place.rows_fn(steps_lib.make_logprob_fn(config=model, prompt_len=P,
                                                  temperature=opts["temperature"])),
          place.rows_fn(steps_lib.make_hidden_fn(config=model, prompt_len=P)))
    return logprob_fns[P]

  decode_cache: dict[str, Any] = {}

  def sample_fn(prompts, *, num_samples=G, max_new_tokens=T, temperature=None,
                logit_processor=None, rng=None, stop_tokens=None, processor_state=None):
    if "decode" not in decode_cache:
      decode_cache["decode"] = place.decode_params(params)
    return place.sample(
        params, prompts, decode_params=decode_cache["decode"], rng=key if rng is None else rng,
        max_new_tokens=max_new_tokens,
        temperature=opts["temperature"] if temperature is None else temperature,
        top_k=cfg.sampler.top_k, top_p=cfg.sampler.top_p, num_samples=num_samples,
        stop_tokens=tuple(tok.eos_token_ids) if stop_tokens is None else stop_tokens,
        logit_processor=logit_processor, processor_state=processor_state)

  def logprobs_fn(tokens, segment_ids, prompt_len, params_=None):
    return fns(prompt_len)[0](params if params_ is None else params_, tokens, segment_ids)

  def hidden_fn(tokens, segment_ids, prompt_len, params_=None):
    return fns(prompt_len)[1](params if params_ is None else params_, tokens, segment_ids)

  ctx = StepContext(cfg=cfg, opts=opts, section=section, run=run, params=params, step=rl_step,
                    rng=key, examples=list(examples), prompt_ids=encode_prompts(cfg, tok, examples),
                    G=G, T=T, state=method_state, sample=sample_fn, score=runner,
                    logprobs=logprobs_fn, hidden=hidden_fn)
  data = method.rollout(ctx)
  t_rollout = time.time() - t0
  data = method.shape(ctx, data)
  batch = data.batch()
  P = data.prompt_len
  if P not in pg_steps:
    pg_steps[P] = place.step(steps_lib.make_pg_step(
        tx, config=model, prompt_len=P, loss_options=loss_options,
        temperature=opts["temperature"], micro_batch_size=cfg.train.micro_batch_size,
        remat=cfg.model.remat, method=method, section=section_dict(section), options=opts,
        jit=False), shardings)
  multi_update = opts["num_iterations"] > 1 or cfg.train.mini_batches > 1
  if multi_update or method.needs_old_logp(opts):
    batch["old_logp"] = logprobs_fn(batch["tokens"], batch["segment_ids"], P)[0]
  if ref_params is not None:
    batch["ref_logp"] = logprobs_fn(batch["tokens"], batch["segment_ids"], P, ref_params)[0]
  t1 = time.time()
  metrics: dict[str, float] = {}
  n = batch["mask"].shape[0]
  for _ in range(opts["num_iterations"]):
    for rows in batches.group_minibatches(n, G, cfg.train.mini_batches):
      state, m = pg_steps[P](state, place.put({k: v[rows] for k, v in batch.items()}))
  metrics.update({k: float(v) for k, v in m.items()})
  mask = data.mask
  valid = mask.sum()
  lengths = data.lengths
  metrics.update(
      reward=float(data.rewards.mean()), accuracy=float(data.correct.mean()),
      reward_std=float(data.rewards.std()), completion_length=float(lengths.mean()),
      truncated_fraction=float(np.asarray(data.truncated).mean()),
      sampler_entropy=float((data.entropy * mask).sum() / max(valid, 1)),
      rollout_seconds=t_rollout, update_seconds=time.time() - t1,
      tokens_per_second=float(lengths.sum()) / max(t_rollout, 1e-9))
  metrics.update({k: float(v) for k, v in data.metrics.items()})
  return state, metrics


def _print_summary(summary: dict[str, Any]) -> None:
  rows = [(k, v) for k, v in summary.items() if not isinstance(v, (list, dict))]
  width = max(len(k) for k, _ in rows)
  print("\n" + "=" * (width + 16))
  for k, v in rows:
    print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
  print("=" * (width + 16))
