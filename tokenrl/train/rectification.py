"""Dead-end rectification trainer (spec §11): learn Q_D on the embedded task, decode with the cap.

`train_rectification(cfg, workdir)` is what `tokenrl train` runs for `rl.objective=rectification`:

  0. warm-up: cfg.train.sft_steps SFT steps of the LM (the policy that is then left untouched).
  1. Q_D: rl.rectification.q_steps TD(0) steps (tokenrl.objectives.rectification.sarsa_targets /
     td_loss, Polyak target head). Each step samples rl.rectification.samples_per_prompt
     continuations of data.batch_size training prompts from the frozen LM at temperature 1;
     a dead end is a completion the task verifier rejects (R = −1), else R = 0.
     Q_D(s, ·) = q_head(h(s)) on the frozen LM's final hidden state h(s) (the reference trains
     a separate GPT-2 backbone + head; here only the head, so Q_D shares the LM's tokenizer).
  2. evaluation: held-out accuracy of sampled (temperature rl.rectification.eval_temperature)
     completions, plain and rectified (`rectified_generate`, same random draws).
Phases 'sft' and 'q' of the run skeleton (checkpointed, resumable: the q state is {'train': the
online head's TrainState, 'target': the Polyak head, 'lm': the frozen LM}); the evaluation is
the end of the 'q' phase.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.objectives import rectification as rect
from tokenrl.rollout.sampler import prepare_prompts, sample
from tokenrl.train import steps as steps_lib
from tokenrl.train.meet import completion_texts
from tokenrl.train.phases import adam, sampled_sft_batch
from tokenrl.train.setup import build_run, encode_prompts
from tokenrl.train.skeleton import NumpyRng, Phase, RunSpec, run_job


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "rectify", "epsilon",
                                             "p_min", "p_max", "iterations"))
def rectified_generate(params, head, prompt_tokens, prompt_mask, rng, temperature, *,
                       config: ModelConfig, max_new_tokens: int, rectify: bool = True,
                       epsilon: float = 0.0, p_min: float = 1e-7, p_max: float = 1.0,
                       iterations: int = 2) -> jax.Array:
  """Completion tokens [N,T]: sampling (temperature > 0, else greedy) from the LM with the
  dead-end cap `rectify_logits(z, q_head(head, h))` at every step (rectify=False: plain).

  prompt_tokens/prompt_mask [N,P] left-padded. No KV cache: each step reruns the model on the
  [N,P+T] buffer (causal attention keeps the unwritten tail out); fine for short completions.
  """
  n, P = prompt_tokens.shape
  T = max_new_tokens
  tokens = jnp.concatenate([prompt_tokens, jnp.full((n, T), config.pad_id, jnp.int32)], axis=1)
  seg = jnp.concatenate([prompt_mask, jnp.ones((n, T), prompt_mask.dtype)], axis=1)

  def body(t, tokens):
    hidden, _ = transformer.forward(params, tokens, config=config, segment_ids=seg,
                                    return_hidden=True)
    h = jax.lax.dynamic_index_in_dim(hidden, P + t - 1, axis=1, keepdims=False)   # [N,D]
    z = transformer.unembed(params, h, config=config) / jnp.maximum(temperature, 1e-6)
    if rectify:
      z = rect.rectify_logits(z, rect.q_head(head, h), epsilon=epsilon, p_min=p_min,
                              p_max=p_max, iterations=iterations)
    drawn = jax.random.categorical(jax.random.fold_in(rng, t), z, axis=-1)
    nxt = jnp.where(temperature > 0, drawn, jnp.argmax(z, axis=-1)).astype(jnp.int32)
    return jax.lax.dynamic_update_index_in_dim(tokens, nxt, P + t, axis=1)

  return jax.lax.fori_loop(0, T, body, tokens)[:, P:]


def make_td_step(tx: optax.GradientTransformation, *, gamma: float, q_min: float, q_max: float,
                 polyak_alpha: float):
  """jitted step(state, target_head, batch) -> (state, target_head, metrics).

  batch: hidden f32 [N,T,D] (frozen LM states predicting completion token t), actions int
  [N,T], mask [N,T], reward f32 [N]. state.params = the online Q head.
  """

  def step(state, target_head, batch):
    a = batch["actions"][..., None]
    q_tgt = jnp.take_along_axis(rect.q_head(target_head, batch["hidden"]), a, axis=-1)[..., 0]
    y = rect.sarsa_targets(q_tgt, batch["mask"], batch["reward"], gamma=gamma, q_min=q_min,
                           q_max=q_max)

    def loss_fn(head, mb):
      q = jnp.take_along_axis(rect.q_head(head, mb["hidden"]), a, axis=-1)[..., 0]
      m = mb["mask"].astype(jnp.float32)
      return rect.td_loss(q, y, mb["mask"]), {
          "q_mean": (q * m).sum() / jnp.maximum(m.sum(), 1.0)}

    loss, metrics, grads = steps_lib._accumulate(loss_fn, state.params, batch, 0)  # pylint: disable=protected-access
    state, metrics = steps_lib._apply(state, tx, loss, grads, metrics)  # pylint: disable=protected-access
    return state, rect.polyak(state.params, target_head, polyak_alpha), metrics

  return jax.jit(step, donate_argnums=0)


def train_rectification(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Warm-up, Q_D by TD(0), then plain vs rectified held-out accuracy (module docstring)."""
  if cfg.rl.objective != "rectification":
    raise ValueError(f"train_rectification: rl.objective must be 'rectification', got "
                     f"{cfg.rl.objective!r}")
  return run_job(cfg, workdir, build_rectification)


def build_rectification(cfg: ml_collections.ConfigDict, workdir: str) -> RunSpec:
  """Phases 'sft' (train.sft_steps > 0) and 'q' (rl.rectification.q_steps, evaluated at its end)."""
  del workdir
  sec = cfg.rl.rectification
  run = build_run(cfg)
  tok, model = run.tokenizer, run.model
  rng = NumpyRng(cfg.seed)
  key = jax.random.key(cfg.seed)
  T, G = cfg.sampler.max_new_tokens, sec.samples_per_prompt
  sft_tx = adam(cfg.train.sft_learning_rate)
  sft = steps_lib.make_sft_step(sft_tx, config=model, micro_batch_size=cfg.train.micro_batch_size)
  q_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sec.learning_rate))
  td = make_td_step(q_tx, gamma=sec.gamma, q_min=sec.q_min, q_max=sec.q_max,
                    polyak_alpha=sec.polyak_alpha)
  hidden_fns: dict[int, Any] = {}
  aux: dict[str, Any] = {"dead_end_rate_first": None}

  def sft_step(state, g, s):
    del g, s
    return sft(state, sampled_sft_batch(cfg, tok, run.train_examples, rng.rng,
                                        cfg.train.sft_batch_size))

  def q_init(prev):
    head = rect.init_q_head(jax.random.fold_in(key, 3), model.dim, model.vocab_size)
    return {"train": steps_lib.create_state(head, q_tx), "target": jax.tree.map(jnp.copy, head),
            "lm": run.params if prev is None else prev.params}

  def q_step(state, g, s):
    del g
    params = state["lm"]
    ex = [run.train_examples[i] for i in rng.rng.integers(len(run.train_examples),
                                                          size=cfg.data.batch_size)]
    ro = sample(params, encode_prompts(cfg, tok, ex), config=model,
                rng=jax.random.fold_in(key, 100 + s), max_new_tokens=T, temperature=1.0,
                num_samples=G)
    comp, mask = np.asarray(ro.tokens), np.asarray(ro.mask)
    texts = completion_texts(tok, np.where(mask > 0, comp, tok.eos_token_ids[0]))
    reps = [e for e in ex for _ in range(G)]
    reward = -np.asarray([float(run.verifier(t, e) < 1.0) for t, e in zip(texts, reps)], np.float32)
    P = ro.prompt_tokens.shape[1]
    if P not in hidden_fns:
      hidden_fns[P] = steps_lib.make_hidden_fn(config=model, prompt_len=P)
    full = jnp.concatenate([ro.prompt_tokens, ro.tokens], axis=1)
    seg = jnp.concatenate([ro.prompt_mask, jnp.ones_like(ro.tokens)], axis=1)
    hidden, _ = hidden_fns[P](params, full, seg)
    batch = {"hidden": hidden, "actions": ro.tokens, "mask": ro.mask, "reward": jnp.asarray(reward)}
    qstate, target, m = td(state["train"], state["target"], batch)
    dead = float(-reward.mean())
    if s == 0:
      aux["dead_end_rate_first"] = dead
    return {"train": qstate, "target": target, "lm": params}, {**m, "dead_end_rate": dead}

  def evaluate(state, g, when):
    del g, when
    held = run.eval_examples
    ptok, pmask = prepare_prompts(encode_prompts(cfg, tok, held), tok.pad_id)
    ptok, pmask = np.repeat(ptok, G, axis=0), np.repeat(pmask, G, axis=0)
    reps = [e for e in held for _ in range(G)]
    gen = functools.partial(rectified_generate, state["lm"], state["train"].params,
                            jnp.asarray(ptok), jnp.asarray(pmask), jax.random.fold_in(key, 2 ** 20),
                            jnp.float32(sec.eval_temperature), config=model, max_new_tokens=T,
                            epsilon=sec.epsilon, p_min=sec.p_min, p_max=sec.p_max,
                            iterations=sec.iterations)
    acc = {}
    for name, on in (("plain", False), ("rectified", True)):
      texts = completion_texts(tok, np.asarray(gen(rectify=on)))
      acc[name] = float(np.mean([run.verifier(t, e) >= 1.0 for t, e in zip(texts, reps)]))
    return {"accuracy_plain": acc["plain"], "accuracy_rectified": acc["rectified"]}

  def summarize(state, meta, g):
    final = meta["evals"][-1]
    return {"objective": "rectification", "accuracy_plain": final["accuracy_plain"],
            "accuracy_rectified": final["accuracy_rectified"],
            "rectification_gain": final["accuracy_rectified"] - final["accuracy_plain"],
            "train_dead_end_rate_first": meta["aux"]["dead_end_rate_first"],
            "q_steps": sec.q_steps, "sft_steps": cfg.train.sft_steps, "steps": g,
            "skipped_updates": int(state["train"].skipped)}

  phases = [Phase("sft", cfg.train.sft_steps, lambda _: steps_lib.create_state(run.params, sft_tx),
                  sft_step)] if cfg.train.sft_steps else []
  phases.append(Phase("q", sec.q_steps, q_init, q_step, evaluate=evaluate, eval_at_end=True,
                      show=("loss", "q_mean", "dead_end_rate"), params_path=("lm",)))
  prompt_len = max(len(p) for p in encode_prompts(cfg, tok, run.train_examples + run.eval_examples))
  return RunSpec(phases=phases, model=model, prompt_len=prompt_len, summarize=summarize,
                 iterators={"rng": rng}, aux=aux, plot=False)
