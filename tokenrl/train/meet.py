"""MEET two-stage trainer (spec §9): controls by PEFT with the LLM frozen, then full fine-tuning.

`train_meet(cfg, workdir)` is what `tokenrl train` runs for `rl.objective=meet`:

  0. warm-up: cfg.train.sft_steps SFT steps on the task answers (the "pretrained LLM" θ0 of
     the tiny CPU models; 0 with a real checkpoint in model.hf_path).
  1. stage 1: rl.meet.stage1_steps steps of the controlled CE (tokenrl.objectives.meet) over
     the control parameters only: soft tokens E [C,n_c,D] (peft='prompt') or one LoRA per
     control (peft='lora', tokenrl.models.lora), θ0 frozen.
  2. stage 2: rl.meet.stage2_steps steps over θ and the controls, from θ0 and the stage-1
     controls.
  Data: the embedded preference pairs (tokenrl.data.preference): chosen -> control 0 'good',
  rejected -> control 1 'bad'; each step takes data.batch_size pairs (2·batch_size rows).
  Evaluation: held-out greedy accuracy conditioned on each control; the method's metric is the
  gap acc_good − acc_bad. stage='2' alone is the baseline MEET argues against (controls
  trained jointly from random init); stage='1' alone is PEFT only.

Steps are jitted (`steps._accumulate` / `steps._apply` with a TrainState whose params are the
trainable pytree). The stages are phases of the run skeleton (tokenrl/train/skeleton.py): a
stage's state is {'train': TrainState of the trainable tree, 'theta0': θ0}, the data draws come
from a checkpointed numpy Generator, so a killed run resumes exactly.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tokenrl.data.preference import encode_pair, make_preference_pairs
from tokenrl.data.prompts import bucket_length
from tokenrl.models import lora as lora_lib
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.objectives import token_logprobs
from tokenrl.objectives.meet import control_gap, controlled_nll, soft_prompt_embeddings
from tokenrl.train import steps as steps_lib
from tokenrl.train.phases import adam, sampled_sft_batch
from tokenrl.train.setup import build_run, encode_prompts
from tokenrl.train.skeleton import NumpyRng, Phase, RunSpec, run_job

GOOD, BAD = 0, 1
NUM_CONTROLS = 2


def control_batch(rows: Sequence[tuple[Sequence[int], Sequence[int], int]], *, n_control: int,
                  pad_id: int, completion_len: int | None = None) -> tuple[dict[str, np.ndarray], int]:
  """(batch, P) of rows (prompt ids, completion ids, control): [pad…, c×n_c, prompt | completion].

  batch: tokens, segment_ids, slots int32 [N,P+T] (slots = j at the j-th control position,
  -1 elsewhere; control positions hold pad_id, replaced by the soft tokens), mask int32 [N,T]
  (1 on completion tokens), control int32 [N]. P (prompt + controls) and T are bucketed;
  `completion_len` fixes T (generation buffers).
  """
  if not rows:
    raise ValueError("control_batch: rows is empty")
  P = bucket_length(max(len(p) + n_control for p, _, _ in rows))
  T = completion_len or bucket_length(max(len(c) for _, c, _ in rows), min_bucket=8)
  n = len(rows)
  tokens = np.full((n, P + T), pad_id, np.int32)
  segment_ids = np.zeros((n, P + T), np.int32)
  slots = np.full((n, P + T), -1, np.int32)
  mask = np.zeros((n, T), np.int32)
  control = np.zeros((n,), np.int32)
  for i, (prompt, completion, c) in enumerate(rows):
    if len(completion) > T:
      raise ValueError(f"control_batch: completion {i} has {len(completion)} tokens > T={T}")
    start = P - len(prompt) - n_control
    tokens[i, P - len(prompt):P] = prompt
    tokens[i, P:P + len(completion)] = completion
    slots[i, start:start + n_control] = np.arange(n_control)
    segment_ids[i, start:] = 1
    mask[i, :len(completion)] = 1
    control[i] = c
  return {"tokens": tokens, "segment_ids": segment_ids, "slots": slots, "mask": mask,
          "control": control}, P


def _completion_logp(params, soft, batch, *, config: ModelConfig, prompt_len: int):
  """logp [N,T] of tokens[:, P:] with the soft controls (soft None: plain embeddings)."""
  tokens, seg = batch["tokens"], batch["segment_ids"]
  emb = None
  if soft is not None:
    emb = soft_prompt_embeddings(params["embed"], tokens, batch["slots"], soft, batch["control"])
    emb = emb[:, :-1]
  hidden, _ = transformer.forward(params, tokens[:, :-1], config=config, segment_ids=seg[:, :-1],
                                  return_hidden=True, input_embeddings=emb)
  logits = transformer.unembed(params, hidden[:, prompt_len - 1:], config=config)
  return token_logprobs(logits, tokens[:, prompt_len:])[0]


def meet_logp(trainable: dict[str, Any], frozen: Any, batch: dict[str, jax.Array], *,
              config: ModelConfig, prompt_len: int, peft: str, rank: int, alpha: float):
  """Completion log-probs [N,T] under each row's control.

  trainable: {'soft': [C,n_c,D]} or {'lora': LoRA params with a leading C axis}, plus
  'params' (θ) in stage 2; `frozen` is θ0 when 'params' is absent (stage 1).
  peft='lora' runs the C adapted models on every row and keeps each row's own control.
  """
  params = trainable["params"] if "params" in trainable else frozen
  if peft == "prompt":
    return _completion_logp(params, trainable["soft"], batch, config=config, prompt_len=prompt_len)
  out = None
  for c in range(NUM_CONTROLS):
    lo = jax.tree.map(lambda x, c=c: x[c], trainable["lora"])
    p_c = lora_lib.apply_lora(params, lo, alpha=alpha, rank=rank, freeze_base=False)
    lp = _completion_logp(p_c, None, batch, config=config, prompt_len=prompt_len)
    out = lp if out is None else jnp.where((batch["control"] == c)[:, None], lp, out)
  return out


def make_meet_step(tx: optax.GradientTransformation, *, config: ModelConfig, prompt_len: int,
                   peft: str, rank: int, alpha: float, micro_batch_size: int = 0):
  """jitted step(state, batch, frozen) -> (state, metrics); state.params = the trainable tree.

  loss = controlled_nll over the whole minibatch (micro-batches share its denominator Σ m).
  """
  logp_fn = functools.partial(meet_logp, config=config, prompt_len=prompt_len, peft=peft,
                              rank=rank, alpha=alpha)

  def step(state, batch, frozen):
    denom = jnp.maximum(batch["mask"].sum().astype(jnp.float32), 1.0)

    def loss_fn(trainable, mb):
      lp = logp_fn(trainable, frozen, mb)
      m = mb["mask"].astype(jnp.float32)
      good = (mb["control"] == GOOD)[:, None] * m
      return controlled_nll(lp, mb["mask"], denom), {
          "nll_good": -(lp * good).sum() / denom, "nll_bad": -(lp * (m - good)).sum() / denom}

    loss, metrics, grads = steps_lib._accumulate(loss_fn, state.params, batch, micro_batch_size)  # pylint: disable=protected-access
    return steps_lib._apply(state, tx, loss, grads, metrics)  # pylint: disable=protected-access

  return jax.jit(step, donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("config", "prompt_len"))
def greedy_generate(params, soft, batch, *, config: ModelConfig, prompt_len: int):
  """Greedy completion tokens [N,T] after tokens[:, :P] (with the soft controls, if any).

  No KV cache: each of the T steps reruns the model on the whole [N,P+T] buffer (causal
  attention keeps the unwritten tail from affecting position P+t−1); fine for the short
  completions of the embedded tasks.
  """
  tokens = batch["tokens"]
  T = tokens.shape[1] - prompt_len

  def body(t, tokens):
    b = {**batch, "tokens": tokens}
    emb = (None if soft is None else
           soft_prompt_embeddings(params["embed"], tokens, b["slots"], soft, b["control"]))
    hidden, _ = transformer.forward(params, tokens, config=config, segment_ids=b["segment_ids"],
                                    return_hidden=True, input_embeddings=emb)
    h = jax.lax.dynamic_index_in_dim(hidden, prompt_len + t - 1, axis=1, keepdims=False)
    nxt = jnp.argmax(transformer.unembed(params, h, config=config), axis=-1).astype(tokens.dtype)
    return jax.lax.dynamic_update_index_in_dim(tokens, nxt, prompt_len + t, axis=1)

  return jax.lax.fori_loop(0, T, body, tokens)[:, prompt_len:]


def completion_texts(tokenizer: Any, completions: np.ndarray) -> list[str]:
  """Text of each row [N,T] up to (excluding) its first stop token."""
  stops = set(tokenizer.eos_token_ids)
  out = []
  for row in np.asarray(completions).tolist():
    cut = next((i for i, t in enumerate(row) if t in stops), len(row))
    out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
  return out


def _encode_rows(tok: Any, pairs: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int], int]]:
  rows = []
  for pair in pairs:
    prompt, chosen, rejected = encode_pair(tok, pair)
    rows += [(prompt, chosen, GOOD), (prompt, rejected, BAD)]
  return rows


def train_meet(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Run MEET (module docstring) for `cfg` (rl.objective='meet') in `workdir`; the summary."""
  if cfg.rl.objective != "meet":
    raise ValueError(f"train_meet: rl.objective must be 'meet', got {cfg.rl.objective!r}")
  return run_job(cfg, workdir, build_meet)


def build_meet(cfg: ml_collections.ConfigDict, workdir: str) -> RunSpec:
  """Phases 'sft' (train.sft_steps > 0), 'stage1' and/or 'stage2' (rl.meet.stage)."""
  del workdir
  sec = cfg.rl.meet
  run = build_run(cfg)
  tok, model = run.tokenizer, run.model
  n_c = sec.n_control_tokens if sec.peft == "prompt" else 0
  T = cfg.sampler.max_new_tokens
  rng = NumpyRng(cfg.seed)
  key = jax.random.key(cfg.seed)
  train_pairs = make_preference_pairs(run.train_examples, run.verifier, cfg.seed)
  held = run.eval_examples
  held_ids = encode_prompts(cfg, tok, held)
  eval_rows = [(p, [], c) for c in (GOOD, BAD) for p in held_ids]
  eval_batch, eval_P = control_batch(eval_rows, n_control=n_c, pad_id=tok.pad_id, completion_len=T)
  eval_batch = {k: jnp.asarray(v) for k, v in eval_batch.items()}
  aux: dict[str, Any] = {"final_loss": None}
  fns: dict[tuple[str, int], Any] = {}
  sft_tx = adam(cfg.train.sft_learning_rate)
  sft_fn = steps_lib.make_sft_step(sft_tx, config=model, micro_batch_size=cfg.train.micro_batch_size)

  def init_controls(theta0):
    # Soft tokens ~ N(0, 1/D) (the embeddings' scale) or one zero-delta LoRA per control.
    if sec.peft == "prompt":
      return {"soft": jax.random.normal(jax.random.fold_in(key, 1),
                                        (NUM_CONTROLS, n_c, model.dim)) * model.dim ** -0.5}
    per = [lora_lib.init_lora(theta0, model, jax.random.fold_in(key, 10 + c), rank=sec.lora_rank,
                              alpha=sec.lora_alpha) for c in range(NUM_CONTROLS)]
    return {"lora": jax.tree.map(lambda *x: jnp.stack(x), *per)}

  def theta0_of(prev):
    if prev is None:
      return run.params
    return prev["theta0"] if isinstance(prev, dict) else prev.params

  def stage1_init(prev):
    theta0 = theta0_of(prev)
    return {"train": steps_lib.create_state(init_controls(theta0), stage_tx["stage1"]),
            "theta0": theta0}

  def stage2_init(prev):
    theta0 = theta0_of(prev)
    controls = (prev["train"].params if isinstance(prev, dict) else init_controls(theta0))
    trainable = {**controls, "params": jax.tree.map(jnp.copy, theta0)}
    return {"train": steps_lib.create_state(trainable, stage_tx["stage2"]), "theta0": theta0}

  stage_tx = {"stage1": adam(sec.stage1_learning_rate), "stage2": adam(sec.stage2_learning_rate)}

  def sft_step(state, g, s):
    del g, s
    state, m = sft_fn(state, sampled_sft_batch(cfg, tok, run.train_examples, rng.rng,
                                               cfg.train.sft_batch_size))
    aux["final_loss"] = float(m["loss"])
    return state, m

  def stage_step(name):
    def step(state, g, s):
      del g, s
      pairs = [train_pairs[i] for i in rng.rng.integers(len(train_pairs), size=cfg.data.batch_size)]
      b, P = control_batch(_encode_rows(tok, pairs), n_control=n_c, pad_id=tok.pad_id)
      if (name, P) not in fns:
        fns[name, P] = make_meet_step(stage_tx[name], config=model, prompt_len=P, peft=sec.peft,
                                      rank=sec.lora_rank, alpha=sec.lora_alpha,
                                      micro_batch_size=cfg.train.micro_batch_size)
      train, m = fns[name, P](state["train"], b, state["theta0"])
      aux["final_loss"] = float(m["loss"])
      aux[f"skipped_{name}"] = int(m["skipped_updates"])  # cumulative within the stage
      return {"train": train, "theta0": state["theta0"]}, m
    return step

  def evaluate(state, g, when):
    del g
    trainable, theta0 = state["train"].params, state["theta0"]
    p = trainable.get("params", theta0)
    if sec.peft == "prompt":
      comp = np.asarray(greedy_generate(p, trainable["soft"], eval_batch, config=model,
                                        prompt_len=eval_P))
    else:
      comp = np.zeros((len(eval_rows), T), np.int32)
      for c in range(NUM_CONTROLS):
        lo = jax.tree.map(lambda x, c=c: x[c], trainable["lora"])
        pc = lora_lib.merge_lora(p, lo, alpha=sec.lora_alpha, rank=sec.lora_rank)
        rows = np.asarray(eval_batch["control"]) == c
        comp[rows] = np.asarray(greedy_generate(pc, None, eval_batch, config=model,
                                                prompt_len=eval_P))[rows]
    texts = completion_texts(tok, comp)
    correct = np.asarray([float(run.verifier(t, held[i % len(held)]) >= 1.0)
                          for i, t in enumerate(texts)], np.float32)
    good, bad, gap = control_gap(jnp.asarray(correct), eval_batch["control"])
    return {"name": when, "accuracy_good": float(good), "accuracy_bad": float(bad),
            "control_gap": float(gap)}

  def stage_eval(name):
    return lambda state, g, when: {**evaluate(state, g, when),
                                   "name": "init" if when == "start" else name}

  def summarize(state, meta, g):
    del state
    evals = {e["name"]: {k: v for k, v in e.items() if k not in ("name", "step")}
             for e in meta["evals"]}
    final = evals[meta["evals"][-1]["name"]]
    return {"objective": "meet", "peft": sec.peft, "stage": sec.stage, "n_control_tokens": n_c,
            "evals": evals, "final_accuracy_good": final["accuracy_good"],
            "final_accuracy_bad": final["accuracy_bad"], "final_control_gap": final["control_gap"],
            "steps": g,
            "skipped_updates": sum(v for k, v in meta["aux"].items() if k.startswith("skipped_")),
            "final_loss": meta["aux"]["final_loss"]}

  phases = [Phase("sft", cfg.train.sft_steps,
                  lambda _: steps_lib.create_state(run.params, sft_tx), sft_step)] \
      if cfg.train.sft_steps else []
  stages = [n for n in ("stage1", "stage2") if sec.stage in ("both", n[-1])]
  for i, name in enumerate(stages):
    phases.append(Phase(
        name, sec[f"{name}_steps"], stage1_init if name == "stage1" else stage2_init,
        stage_step(name), evaluate=stage_eval(name), eval_at_start=i == 0, eval_at_end=True,
        params_path=("theta0",) if name == "stage1" else ("train", "params", "params")))
  prompt_len = max(len(p) for p in held_ids + encode_prompts(cfg, tok, run.train_examples))
  return RunSpec(phases=phases, model=model, prompt_len=prompt_len, summarize=summarize,
                 iterators={"rng": rng}, aux=aux, plot=False)
