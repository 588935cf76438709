"""The main job: optional SFT warm-up, then token-level RL, as phases of the run skeleton
(tokenrl/train/skeleton.py). `train(config, workdir)` is what `tokenrl train` runs; a method with
its own trainer (pairwise DPO family, MEET, refusal tokens, rectification) is dispatched to it.

Global step g counts SFT steps then RL steps. Sampling at RL step s uses
fold_in(key(seed), s), data order comes from checkpointed grain iterators, and the rewards are
deterministic, so a run resumed from a checkpoint continues bitwise identically (on CPU).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from tokenrl import objectives as obj
from tokenrl.config import EVAL_ONLY_CONTROLS
from tokenrl.data.pipeline import make_dataset
from tokenrl.data.reward_runner import RewardRunner
from tokenrl.eval import evaluate
from tokenrl.eval.control_build import build_control
from tokenrl.methods import get_method
from tokenrl.methods.base import StepContext, group_minibatches, section_dict
from tokenrl.methods.budgets import longest_prompt
from tokenrl.methods.config import resolve_objective
from tokenrl.optim import build_optimizer
from tokenrl.train import batches
from tokenrl.train import steps as steps_lib
from tokenrl.train import workdir as workdir_lib
from tokenrl.train.decoding import build_decoder
from tokenrl.train.mesh import make_mesh
from tokenrl.train.phases import sft_optimizer
from tokenrl.train.placement import Placement
from tokenrl.train.plan import check_fits
from tokenrl.train.setup import build_run, encode_prompts
from tokenrl.train.skeleton import Phase, RunSpec, run_job

# What the progress bar shows during RL: what moves (the GRPO loss is ~0, see the README).
RL_SHOW = ("reward", "accuracy", "kl", "clipfrac", "entropy", "grad_norm")


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Run the job described by `cfg` in `workdir` (resuming if it holds a checkpoint)."""
  method = get_method(resolve_objective(cfg.rl)["objective"])
  trainer = _own_trainer(method)
  if trainer is not None:  # pairwise (DPO family) or staged methods: their own phases
    return trainer(cfg, workdir)
  return run_job(cfg, workdir, build_rl)


def build_rl(cfg: ml_collections.ConfigDict, workdir: str) -> RunSpec:
  """The phases of the main job: 'sft' (train.sft_steps > 0), then 'rl' (train.max_steps)."""
  del workdir
  # validate_config refuses the evaluation-only decoders at start-up; a direct caller of
  # build_rl is refused here too (build_control would give them no processor: plain sampling).
  if cfg.sampler.control.method in EVAL_ONLY_CONTROLS:
    raise ValueError(f"sampler.control.method={cfg.sampler.control.method!r} is an evaluation-"
                     "only decoder: use it with `tokenrl eval` / `tokenrl sample`, not training")
  opts = resolve_objective(cfg.rl)
  loss_options = {k: opts[k] for k in obj.POLICY_LOSS_OPTIONS}
  method = get_method(opts["objective"])
  if cfg.train.check_memory:
    check_fits(cfg)  # fail fast with "does not fit: ... try: ..." before any allocation
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  run = build_run(cfg, mesh)  # params created / loaded straight into their shardings
  method.check_examples(cfg, run.train_examples)  # e.g. a task without the fields it scores
  tok, model = run.tokenizer, run.model
  if cfg.model.init_workdir:
    run = dataclasses.replace(run, params=_init_from_workdir(cfg.model.init_workdir, model))
  # sampler.speculative: a lossless speculative decoder for rollouts and evaluations (None =
  # plain `sample`); a bad draft, tokenizer or head fails here, before any step.
  decoder = build_decoder(cfg, model, tok)
  # sampler.control: a test-time logit control on every rollout and evaluation; a string that
  # is not one token or a missing/ill-fitting budget head fails here, naming the key.
  control = build_control(cfg.sampler.control, tok, dim=model.dim, vocab_size=model.vocab_size)
  if control[0] is not None and cfg.train.max_steps and not opts["tis_imp_ratio_cap"]:
    logging.warning(
        "sampler.control.method=%r samples RL rollouts from the controlled law, not the "
        "policy's: the update is off-policy for the policy (the sampler log-probs are of the "
        "controlled law). Set --config.rl.tis_imp_ratio_cap=2 to reweight by policy/sampler "
        "(truncated importance sampling)", cfg.sampler.control.method)
  place = Placement(mesh, model, sampler=decoder, control=control)
  place.check_rows(cfg.train.sft_batch_size, "train.sft_batch_size")
  place.check_rows(cfg.data.batch_size * opts["num_generations"] // max(cfg.train.mini_batches, 1),
                   "data.batch_size x rl.num_generations / train.mini_batches")
  sft_steps, rl_steps = cfg.train.sft_steps, cfg.train.max_steps
  T = cfg.sampler.max_new_tokens
  sft_tx = sft_optimizer(cfg)
  # With no RL steps (an SFT-only run) the RL optimizer is never used.
  rl_tx = build_optimizer(cfg.optimizer, rl_steps, key="train.max_steps") if rl_steps else sft_tx
  # Each process reads its stride of the example stream (batch / process_count examples) and
  # the global batch is gathered from all of them (Placement.gather_examples).
  procs = jax.process_count()
  for key, size in (("train.sft_batch_size", cfg.train.sft_batch_size),
                    ("data.batch_size", cfg.data.batch_size)):
    if size % procs:
      raise ValueError(f"{key}={size} must be a multiple of the {procs} processes")
  if not 0.0 <= cfg.train.sft_target_accuracy <= 1.0:
    raise ValueError(f"train.sft_target_accuracy={cfg.train.sft_target_accuracy} must be in [0, 1]")
  if cfg.train.sft_target_accuracy > 0 and (cfg.data.dev_size < 1 or cfg.train.sft_check_every < 1):
    raise ValueError(
        f"train.sft_target_accuracy={cfg.train.sft_target_accuracy} needs data.dev_size >= 1 "
        f"(got {cfg.data.dev_size}) and train.sft_check_every >= 1 (got "
        f"{cfg.train.sft_check_every}); fix: --config.data.dev_size=512")
  dev, train_examples = split_dev(run.train_examples, cfg.data.dev_size)
  sft_it = make_dataset(train_examples, batch_size=cfg.train.sft_batch_size // procs,
                        seed=cfg.seed)
  rl_it = make_dataset(train_examples, batch_size=cfg.data.batch_size // procs,
                       seed=cfg.seed + 1)
  eval_prompts = encode_prompts(cfg, tok, run.eval_examples)
  runner = RewardRunner(run.reward_fns, run.reward_weights, timeout_s=cfg.rewards.timeout_s,
                        max_workers=cfg.rewards.max_workers)
  # Evaluation scores with the task's verifier alone, in its own long-lived timed workers.
  eval_runner = RewardRunner({"verifier": run.verifier}, timeout_s=cfg.rewards.timeout_s,
                             max_workers=cfg.rewards.max_workers)
  base_key = jax.random.key(cfg.seed)
  aux: dict[str, Any] = {"method_state": {}}
  cache: dict[str, Any] = {"sft_step": None, "pg_steps": {}, "logprob_fns": {}, "ref": None,
                           "shardings": None}

  def sft_init(_):
    state, cache["shardings"] = place.state(run.params, sft_tx)
    return state

  def sft_step(state, g, s):
    del g, s
    examples = place.gather_examples(next(sft_it))
    batch = batches.sft_batch(encode_prompts(cfg, tok, examples), examples, tok)
    if cache["sft_step"] is None:
      cache["sft_step"] = place.step(steps_lib.make_sft_step(
          sft_tx, config=model, micro_batch_size=cfg.train.micro_batch_size,
          remat=cfg.model.remat, jit=False), cache["shardings"])
    state, m = cache["sft_step"](state, place.put(batch))
    return state, {k: float(v) for k, v in m.items()}

  def rl_init(prev):
    # The RL phase starts from the warm-up params with a fresh RL optimizer; method-owned
    # trainable params (a value head, ...) join the policy params here.
    params = run.params if prev is None else prev.params
    params = method.init_params(params, model, jax.random.fold_in(base_key, 7))
    state, cache["shardings"] = place.state(params, rl_tx)
    return state

  def rl_start(state):
    if opts["beta"] > 0:
      # The KL reference is the policy at the start of the RL phase. It is not checkpointed:
      # a run resumed mid-RL with beta > 0 uses the resumed params as its reference.
      cache["ref"] = jax.tree.map(jnp.copy, state.params)

  def rl_step(state, g, s):
    if decoder is not None:
      decoder.take_metrics()  # drop the counts of evaluations run since the last step
    state, metrics = _rl_step(cfg, opts, loss_options, method, state, cache["shardings"], place,
                              rl_it, run, runner, cache["pg_steps"], cache["logprob_fns"],
                              cache["ref"], rl_tx, jax.random.fold_in(base_key, g), T, s,
                              aux["method_state"])
    if decoder is not None:  # acceptance of this step's rollouts (evaluations excluded)
      metrics.update(decoder.take_metrics())
    return state, metrics

  def run_eval(state, g, when, examples=run.eval_examples, prompts=eval_prompts, num_samples=None):
    del when
    dparams = place.decode_params(state.params)
    return evaluate(state.params, config=model, tokenizer=tok, examples=examples,
                    prompt_ids=prompts, reward_fn=run.verifier, max_new_tokens=T,
                    num_samples=cfg.train.eval_num_samples if num_samples is None else num_samples,
                    temperature=opts["temperature"], rng=jax.random.fold_in(base_key, 2 ** 30 + g),
                    sampler=lambda p, ids, **kw: place.sample(p, ids, decode_params=dparams, **kw),
                    scorer=eval_runner)

  dev_prompts = encode_prompts(cfg, tok, dev)

  def sft_done(state, g, s):
    # Greedy accuracy on the dev examples (training split, never trained on): the warm-up ends
    # once the policy is partly right, whatever the seed's SFT speed (never the held-out split).
    del s
    acc = run_eval(state, g, "dev", examples=dev, prompts=dev_prompts, num_samples=0)["accuracy"]
    return acc >= cfg.train.sft_target_accuracy, {"dev_accuracy": acc}

  def summarize(state, meta, g):
    baseline, final = meta["evals"][0], meta["evals"][-1]
    return {
        "baseline_accuracy": baseline["accuracy"],
        "final_accuracy": final["accuracy"],
        "accuracy_gain": final["accuracy"] - baseline["accuracy"],
        **{f"final_{k}": v for k, v in final.items() if k not in ("accuracy", "step")},
        "steps": g, "sft_steps": meta["starts"][-1] if sft_steps else 0, "rl_steps": rl_steps,
        "objective": opts["objective"], "skipped_updates": int(state.skipped),
        "evals": meta["evals"]}

  early = cfg.train.sft_target_accuracy > 0
  phases = [Phase("sft", sft_steps, sft_init, sft_step, done=sft_done if early else None,
                  done_every=cfg.train.sft_check_every)] if sft_steps else []
  phases.append(Phase("rl", rl_steps, rl_init, rl_step, start=rl_start, evaluate=run_eval,
                      eval_at_start=True, eval_at_end=True, eval_every=cfg.train.eval_every,
                      show=RL_SHOW))
  return RunSpec(phases=phases, model=model,
                 prompt_len=longest_prompt(cfg, tok, run.train_examples + run.eval_examples),
                 summarize=summarize, iterators={"sft_iterator": sft_it, "rl_iterator": rl_it},
                 aux=aux, close=lambda: (runner.close(), eval_runner.close()))


def split_dev(examples: list[Any], size: int) -> tuple[list[Any], list[Any]]:
  """(dev, train): the first `size` training examples, and the rest minus any example whose
  prompt is also a dev prompt (training draws repeat problems; a dev problem seen in training
  would measure memory, not skill). size 0: ([], examples)."""
  if size <= 0:
    return [], examples
  if size >= len(examples):
    raise ValueError(f"data.dev_size={size} must be smaller than the {len(examples)} training "
                     f"examples (data.train_size)")
  dev = examples[:size]
  held = {ex["prompt"] for ex in dev}
  return dev, [ex for ex in examples[size:] if ex["prompt"] not in held]


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
  from tokenrl.train.workdir import check_init_model, load_workdir, model_params  # pylint: disable=g-import-not-at-top
  _, other, params = load_workdir(path)
  check_init_model(path, other.model, model)
  return model_params(params, model)


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
                    logprobs=logprobs_fn, hidden=hidden_fn,
                    encode_prompts=lambda ex: encode_prompts(cfg, tok, ex),
                    load_params=workdir_lib.load_params)
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
    for rows in group_minibatches(n, G, cfg.train.mini_batches):
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
