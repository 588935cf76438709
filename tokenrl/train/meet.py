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
trainable pytree). No checkpoints or resume: the summary and per-step metrics are written to
WORKDIR/summary.json and WORKDIR/metrics.jsonl.
"""

from __future__ import annotations

import functools
import json
import os
import time
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
from tokenrl.train import batches as batches_lib
from tokenrl.train import steps as steps_lib
from tokenrl.train.setup import build_run, encode_prompts

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


def _adam(learning_rate: float) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=0.0))


def train_meet(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Run MEET (module docstring) for `cfg` (rl.objective='meet') in `workdir`; the summary."""
  start_time = time.time()
  if cfg.rl.objective != "meet":
    raise ValueError(f"train_meet: rl.objective must be 'meet', got {cfg.rl.objective!r}")
  from tokenrl.methods import get_method  # pylint: disable=g-import-not-at-top
  sec = cfg.rl.meet
  get_method("meet").validate(sec, {})
  os.makedirs(workdir, exist_ok=True)
  run = build_run(cfg)
  tok, model = run.tokenizer, run.model
  n_c = sec.n_control_tokens if sec.peft == "prompt" else 0
  T = cfg.sampler.max_new_tokens
  rng = np.random.default_rng(cfg.seed)
  key = jax.random.key(cfg.seed)
  log = open(os.path.join(workdir, "metrics.jsonl"), "w")
  history: list[dict[str, Any]] = []

  def write(phase: str, step: int, metrics: dict[str, Any]) -> None:
    line = {"phase": phase, "step": step, **{k: float(v) for k, v in metrics.items()}}
    log.write(json.dumps(line) + "\n")
    history.append(line)

  # 0. Warm-up SFT: θ0.
  params = run.params
  if cfg.train.sft_steps:
    tx = _adam(cfg.train.sft_learning_rate)
    sft = steps_lib.make_sft_step(tx, config=model, micro_batch_size=cfg.train.micro_batch_size)
    state = steps_lib.create_state(params, tx)
    for s in range(cfg.train.sft_steps):
      ex = [run.train_examples[i] for i in rng.integers(len(run.train_examples),
                                                        size=cfg.train.sft_batch_size)]
      state, m = sft(state, batches_lib.sft_batch(encode_prompts(cfg, tok, ex), ex, tok))
      write("sft", s, m)
    params = state.params
  theta0 = params

  train_pairs = make_preference_pairs(run.train_examples, run.verifier, cfg.seed)
  held = run.eval_examples
  held_ids = encode_prompts(cfg, tok, held)
  eval_rows = [(p, [], c) for c in (GOOD, BAD) for p in held_ids]
  eval_batch, eval_P = control_batch(eval_rows, n_control=n_c, pad_id=tok.pad_id, completion_len=T)
  eval_batch = {k: jnp.asarray(v) for k, v in eval_batch.items()}

  # Controls: soft tokens ~ N(0, 1/D) (the embeddings' scale) or one zero-delta LoRA per control.
  if sec.peft == "prompt":
    controls = {"soft": jax.random.normal(jax.random.fold_in(key, 1),
                                          (NUM_CONTROLS, n_c, model.dim)) * model.dim ** -0.5}
  else:
    per = [lora_lib.init_lora(params, model, jax.random.fold_in(key, 10 + c), rank=sec.lora_rank,
                              alpha=sec.lora_alpha) for c in range(NUM_CONTROLS)]
    controls = {"lora": jax.tree.map(lambda *x: jnp.stack(x), *per)}

  def evaluate(trainable) -> dict[str, float]:
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
    return {"accuracy_good": float(good), "accuracy_bad": float(bad), "control_gap": float(gap)}

  def run_stage(name: str, trainable, steps: int, learning_rate: float):
    tx = _adam(learning_rate)
    state = steps_lib.create_state(trainable, tx)
    fns: dict[int, Any] = {}
    for s in range(steps):
      pairs = [train_pairs[i] for i in rng.integers(len(train_pairs), size=cfg.data.batch_size)]
      b, P = control_batch(_encode_rows(tok, pairs), n_control=n_c, pad_id=tok.pad_id)
      if P not in fns:
        fns[P] = make_meet_step(tx, config=model, prompt_len=P, peft=sec.peft, rank=sec.lora_rank,
                                alpha=sec.lora_alpha,
                                micro_batch_size=cfg.train.micro_batch_size)
      state, m = fns[P](state, b, theta0)
      write(name, s, m)
    return state.params, int(state.skipped)

  summary: dict[str, Any] = {"objective": "meet", "peft": sec.peft, "stage": sec.stage,
                             "n_control_tokens": n_c}
  evals = {"init": evaluate(controls)}
  skipped = 0
  if sec.stage in ("both", "1"):
    controls, k = run_stage("stage1", controls, sec.stage1_steps, sec.stage1_learning_rate)
    skipped += k
    evals["stage1"] = evaluate(controls)
  if sec.stage in ("both", "2"):
    trainable, k = run_stage("stage2", {**controls, "params": jax.tree.map(jnp.copy, theta0)}, sec.stage2_steps,
                             sec.stage2_learning_rate)
    skipped += k
    evals["stage2"] = evaluate(trainable)
  log.close()
  final = evals[list(evals)[-1]]
  summary.update(evals=evals, final_accuracy_good=final["accuracy_good"],
                 final_accuracy_bad=final["accuracy_bad"], final_control_gap=final["control_gap"],
                 steps=len(history), skipped_updates=skipped,
                 final_loss=history[-1]["loss"] if history else None,
                 wall_seconds=time.time() - start_time)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary
