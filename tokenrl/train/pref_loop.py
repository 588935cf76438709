"""The preference job: optional SFT warm-up on the chosen completions, then a pairwise objective
(DPO family, TGDPO, cDPO) against a frozen reference, with evaluation, checkpoints and metrics.
`train_preference(config, workdir)` is what `tokenrl train` runs when rl.objective names a
method with `pairwise = True`.

Phases of the run skeleton (tokenrl/train/skeleton.py): 'sft' then 'pref'. Global step g
counts SFT steps then preference steps (cfg.train.sft_steps, cfg.train.max_steps;
cfg.data.batch_size pairs per step, cfg.optimizer for the preference phase). The reference is
the policy at the start of the preference phase (after SFT): frozen, saved once under
WORKDIR/reference so a resumed run uses the same one. Data order comes from checkpointed grain
iterators, so a resumed run continues exactly (CPU).

Evaluation (at the start of the preference phase, every train.eval_every steps and at the end):
held-out greedy accuracy on the verifiable task (`tokenrl.eval.evaluate`) when the pairs are
verifiable, and on the held-out pairs: preference accuracy of the implicit reward (R^w > R^l),
reward margins, and how often the policy's own likelihood ranks chosen first (logp_accuracy,
also for the reference: the win-rate baseline).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tokenrl.data.pipeline import make_dataset
from tokenrl.data.preference import build_preference_data, completion_sft_batch, preference_batch
from tokenrl.eval import evaluate
from tokenrl.methods import get_method
from tokenrl.methods.config import resolve_objective
from tokenrl.methods.base import section_dict
from tokenrl.methods.budgets import longest_prompt
from tokenrl.objectives.dpo import credit_map, token_rewards
from tokenrl.optim import build_optimizer
from tokenrl.train import pairwise as pairwise_lib
from tokenrl.train import steps as steps_lib
from tokenrl.train import workdir as workdir_lib
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.phases import sft_optimizer
from tokenrl.train.setup import build_run, encode_prompts
from tokenrl.train.skeleton import Phase, RunSpec, run_job


class _Frozen:
  """One frozen params pytree saved under WORKDIR/<name> (the reference, cDPO's models)."""

  def __init__(self, workdir: str, name: str):
    self._ckpt = Checkpointer(os.path.join(workdir, name), keep=1, async_save=False)

  def load(self, like: Any) -> Any | None:
    if self._ckpt.latest_step() is None:
      return None
    return self._ckpt.restore(like)[0]

  def save(self, params: Any) -> None:
    self._ckpt.save(0, params, {}, force=True)
    self._ckpt.wait()

  def close(self) -> None:
    self._ckpt.close()


def load_or_train(workdir: str, name: str, like: Any, train_fn) -> Any:
  """Frozen params WORKDIR/<name> if saved, else train_fn() saved there (resumes reuse them)."""
  frozen = _Frozen(workdir, name)
  try:
    params = frozen.load(like)
    if params is None:
      params = train_fn()
      frozen.save(params)
    return params
  finally:
    frozen.close()


PREF_SHOW = ("loss", "preference_accuracy", "reward_margin", "grad_norm")


def train_preference(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Run the preference job described by `cfg` in `workdir` (resuming if it holds a checkpoint)."""
  method = get_method(resolve_objective(cfg.rl)["objective"])
  if not getattr(method, "pairwise", False):
    raise ValueError(f"rl.objective={cfg.rl.objective!r} is not a pairwise method; use "
                     "tokenrl.train.rl_loop.train")
  return run_job(cfg, workdir, build_preference)


def build_preference(cfg: ml_collections.ConfigDict, workdir: str) -> RunSpec:
  """The phases of the preference job: 'sft' on the chosen completions, then 'pref'."""
  opts = resolve_objective(cfg.rl)
  method = get_method(opts["objective"])
  section = cfg.rl[method.name]
  sec = section_dict(section)
  run = build_run(cfg)
  tok, model = run.tokenizer, run.model
  train_pairs, eval_pairs, verifier = build_preference_data(cfg, run)
  chat = bool(cfg.data.chat_template)
  encode = lambda pairs: preference_batch(tok, pairs, use_chat_template=chat,
                                          max_prompt_len=cfg.data.max_prompt_len)

  sft_steps, pref_steps = cfg.train.sft_steps, cfg.train.max_steps
  sft_tx = sft_optimizer(cfg)
  pref_tx = (build_optimizer(cfg.optimizer, pref_steps, key="train.max_steps") if pref_steps
             else sft_tx)
  sft_it = make_dataset(train_pairs, batch_size=cfg.train.sft_batch_size, seed=cfg.seed)
  pref_it = make_dataset(train_pairs, batch_size=cfg.data.batch_size, seed=cfg.seed + 1)
  T_new = cfg.sampler.max_new_tokens
  eval_examples = [p for p in eval_pairs if "answer" in p] if verifier else []
  eval_prompts = encode_prompts(cfg, tok, eval_examples) if eval_examples else []
  eval_batches = [encode(eval_pairs[i:i + 64]) for i in range(0, len(eval_pairs), 64)]
  sft_step = steps_lib.make_sft_step(sft_tx, config=model, micro_batch_size=cfg.train.micro_batch_size,
                                     remat=cfg.model.remat)
  pair_steps: dict[int, Any] = {}
  logprob_fns: dict[int, Any] = {}
  base_key = jax.random.key(cfg.seed)
  ref: dict[str, Any] = {"params": None, "eval_logp": None, "pctx": None}

  def logprobs(params, batch, P):
    if P not in logprob_fns:
      logprob_fns[P] = pairwise_lib.make_pair_logprob_fn(config=model, prompt_len=P)
    return np.asarray(logprob_fns[P](params, batch["tokens"], batch["segment_ids"]))

  def sft_params(params, pairs, which, steps, learning_rate, seed):
    """`steps` SFT steps on completion `which` of `pairs`, from `params` (a copy)."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=0.0))
    fn = steps_lib.make_sft_step(tx, config=model, micro_batch_size=cfg.train.micro_batch_size)
    st = steps_lib.create_state(jax.tree.map(jnp.copy, params), tx)
    it = make_dataset(pairs, batch_size=cfg.train.sft_batch_size, seed=seed)
    for _ in range(steps):
      b, P = encode(next(it))
      st, _ = fn(st, completion_sft_batch(b, P, which))
    return st.params

  def pref_start(state):
    """The reference is the policy entering the phase, saved once (a resume reloads it)."""
    ref["params"] = load_or_train(workdir, "reference", state.params,
                                  lambda: jax.tree.map(jnp.copy, state.params))
    ref["pctx"] = pairwise_lib.PrefContext(cfg=cfg, run=run, section=section, workdir=workdir,
                                           ref_params=ref["params"], train_pairs=train_pairs,
                                           logprobs=logprobs, sft=sft_params,
                                           load_or_train=load_or_train,
                                           load_params=workdir_lib.load_params)
    method.prepare(ref["pctx"])

  def sft_phase_step(state, g, s):
    del g, s
    b, P = encode(next(sft_it))
    state, m = sft_step(state, completion_sft_batch(b, P, 0))
    return state, {k: float(v) for k, v in m.items()}

  def pref_step(state, g, s):
    del g, s
    batch, P = encode(next(pref_it))
    batch["ref_logp"] = logprobs(ref["params"], batch, P)
    batch.update(method.extras(ref["pctx"], batch, P))
    if P not in pair_steps:
      pair_steps[P] = pairwise_lib.make_pairwise_step(
          pref_tx, config=model, prompt_len=P, method=method, section=sec,
          micro_batch_size=cfg.train.micro_batch_size, remat=cfg.model.remat)
    state, m = pair_steps[P](state, batch)
    return state, {k: float(v) for k, v in m.items()}

  def run_eval(state, g, when):
    del when
    result: dict[str, Any] = {}
    if eval_examples:
      result.update(evaluate(state.params, config=model, tokenizer=tok, examples=eval_examples,
                             prompt_ids=eval_prompts, reward_fn=verifier, max_new_tokens=T_new,
                             num_samples=cfg.train.eval_num_samples,
                             temperature=opts["temperature"],
                             rng=jax.random.fold_in(base_key, 2 ** 30 + g)))
    if ref["eval_logp"] is None:
      ref["eval_logp"] = [logprobs(ref["params"], b, P) for b, P in eval_batches]
    stats = []
    for (b, P), ref_lp in zip(eval_batches, ref["eval_logp"]):
      lp = logprobs(state.params, b, P)
      s = pairwise_lib.pair_summary(lp, ref_lp, b["mask"], sec["beta"])
      s["ref_logp_accuracy"] = pairwise_lib.pair_summary(ref_lp, ref_lp, b["mask"],
                                                         sec["beta"])["logp_accuracy"]
      stats.append({k: np.asarray(v) for k, v in s.items()})
    for k in ("preference_accuracy", "reward_margin", "reward_chosen", "reward_rejected",
              "logp_accuracy", "ref_logp_accuracy"):
      result[f"pair_{k}"] = float(np.concatenate([s[k] for s in stats]).mean())
    (b, P), ref_lp = eval_batches[0], ref["eval_logp"][0]
    r = np.asarray(token_rewards(logprobs(state.params, b, P)[0], ref_lp[0], b["mask"][0],
                                 beta=sec["beta"]))
    ids = b["tokens"][0, :, P:]
    result["credit_map"] = {
        name: credit_map([tok.decode([int(i)]) for i in ids[j]], r[j], b["mask"][0, j])
        for j, name in enumerate(("chosen", "rejected"))}
    return result

  def summarize(state, meta, g):
    base, final = meta["evals"][0], meta["evals"][-1]
    summary: dict[str, Any] = {}
    if "accuracy" in final:
      summary.update(baseline_accuracy=base["accuracy"], final_accuracy=final["accuracy"],
                     accuracy_gain=final["accuracy"] - base["accuracy"])
    summary.update({f"final_{k}": v for k, v in final.items()
                    if k not in ("accuracy", "step", "credit_map")})
    summary.update(
        baseline_pair_logp_accuracy=base["pair_logp_accuracy"],
        credit_map=final["credit_map"], steps=g, sft_steps=sft_steps, pref_steps=pref_steps,
        objective=opts["objective"], skipped_updates=int(state.skipped), evals=meta["evals"])
    return summary

  phases = [Phase("sft", sft_steps, lambda _: steps_lib.create_state(run.params, sft_tx),
                  sft_phase_step)] if sft_steps else []
  # The preference phase starts from the warm-up params with a fresh optimizer.
  phases.append(Phase(
      "pref", pref_steps,
      lambda prev: steps_lib.create_state(run.params if prev is None else prev.params, pref_tx),
      pref_step, start=pref_start, evaluate=run_eval, eval_at_start=True, eval_at_end=True,
      eval_every=cfg.train.eval_every, show=PREF_SHOW))
  examples = train_pairs + eval_pairs
  return RunSpec(phases=phases, model=model, prompt_len=longest_prompt(cfg, tok, examples),
                 summarize=summarize, iterators={"sft_iterator": sft_it, "pref_iterator": pref_it},
                 plot=bool(eval_examples))
