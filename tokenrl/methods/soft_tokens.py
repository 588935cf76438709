"""`rl.objective=soft_tokens`: Soft Tokens, Hard Truths (arXiv 2509.19170, spec §13).

CoT/answer split for the embedded tasks: the completion is `cot_steps` (T_c) soft CoT inputs
followed by the hard answer (at most sampler.max_new_tokens tokens, EOS-terminated); only the
answer text is scored. The soft steps have no text: the row's CoT token ids are the argmax of
each mixture (for logs and padding/positions only; the model reads the stored inputs h̃).

Rows: tokens [N, P + T_c + T] = prompt ⊕ CoT argmax ids ⊕ answer; mask is 0 on the CoT
positions; StepData.extra holds cot_inputs f32 [N,T_c,D] (h̃, what the rollout fed) and
cot_sigma f32 [N]. The loss teacher-forces the stored h̃ (prompt and answer as E[token]),
recomputes μ_t(θ) = softmax(logits_{t−1}/τ)ᵀE from the outputs, and minimises
−Σ_i A_i·Λ_i / denominator with Λ_i = Σ_t log N(h̃_t; μ_t(θ), σ²I) + Σ_answer logp and RLOO A.

Train soft, infer hard: the run's evaluation (tokenrl eval, the loop's evals) is unchanged hard
decoding. `hard_accuracy` logs the paper's inference mode on each step's prompts: T_c greedy
hard CoT tokens, then the greedy answer (`soft_sample(hard_cot=True, temperature=0)`).
With cot_steps = 0 there is no CoT and the loop's eval reads the same answer format.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl import objectives as obj
from tokenrl.methods.base import LossContext, Method, StepContext, StepData, completion_forward
from tokenrl.methods.registry import register
from tokenrl.objectives import soft_tokens as st
from tokenrl.rollout.soft_sampler import soft_sample


def soft_batch(out: Any) -> dict[str, np.ndarray]:
  """Training-row arrays of a SoftRollout: tokens/segment_ids [N,P+T_c+T], mask/sampler_logp/
  entropy [N,T_c+T] (mask 0 and the Gaussian log-density on the CoT positions), cot_inputs."""
  prompt, pmask = np.asarray(out.prompt_tokens), np.asarray(out.prompt_mask)
  cot_tok, ans = np.asarray(out.cot_tokens), np.asarray(out.tokens)
  n, tc = cot_tok.shape
  return {
      "tokens": np.concatenate([prompt, cot_tok, ans], axis=1).astype(np.int32),
      "segment_ids": np.concatenate([pmask, np.ones((n, tc + ans.shape[1]), np.int32)], axis=1),
      "mask": np.concatenate([np.zeros((n, tc), np.int32), np.asarray(out.mask, np.int32)], 1),
      "sampler_logp": np.concatenate([np.asarray(out.cot_logp), np.asarray(out.logprobs)],
                                     axis=1).astype(np.float32),
      "entropy": np.concatenate([np.asarray(out.cot_entropy), np.asarray(out.entropy)],
                                axis=1).astype(np.float32),
      "cot_inputs": np.asarray(out.cot_inputs, np.float32),
  }


def teacher_forced_logprobs(params: Any, tokens: jax.Array, segment_ids: jax.Array,
                            cot_inputs: jax.Array, cot_sigma: jax.Array, lctx: LossContext,
                            *, mixture_temperature: float):
  """(cot_logp [N,T_c], answer logp [N,T_c+T], entropy) at `params`, the stored h̃ fed back.

  Inputs: E[tokens] on the prompt and answer, h̃ = cot_inputs [N,T_c,D] (constants) on the CoT
  positions P..P+T_c−1. μ_t(θ) comes from the logits of the position before each CoT input.
  """
  from tokenrl.models import transformer  # pylint: disable=g-import-not-at-top
  P, tc = lctx.prompt_len, cot_inputs.shape[1]
  emb = params["embed"][tokens]                                    # [N,S,D]
  if tc:
    emb = emb.at[:, P:P + tc].set(jax.lax.stop_gradient(cot_inputs).astype(emb.dtype))
  logp, entropy, hidden = completion_forward(params, tokens, segment_ids, lctx,
                                             input_embeddings=emb)
  if not tc:
    return jnp.zeros((tokens.shape[0], 0), jnp.float32), logp, entropy
  logits = transformer.unembed(params, hidden[:, :tc], config=lctx.model)   # [N,T_c,V]
  mu = st.mixture_embedding(logits, params["embed"], mixture_temperature)
  return st.gaussian_logprob(cot_inputs, mu, jax.lax.stop_gradient(cot_sigma)), logp, entropy


@register
class SoftTokens(Method):
  name = "soft_tokens"
  paper = "Soft Tokens, Hard Truths (arXiv 2509.19170)"
  preset = dict(advantage_estimator="rloo", loss_agg_mode="seq-mean-token-sum", beta=0.0)
  metrics = ("soft_noise_norm", "soft_sigma", "cot_logp", "mixture_entropy", "hard_accuracy",
             "seq_logp")

  def config(self):
    c = ml_collections.ConfigDict()
    c.cot_steps = 128                 # T_c: soft CoT inputs before the hard answer (GSM8K: 128)
    c.mixture_temperature = 0.5       # τ of softmax(logits/τ)ᵀE: soft 0.5, fuzzy 1e-4
    c.noise_scale = 0.33              # γ: σ = γ·RMS(E) (or γ with noise_scale_mode='absolute')
    c.noise_scale_mode = "rms_entries"  # 'rms_entries' (RMS over all entries of E) | 'absolute'
    c.correct_reward = 100.0          # reward of a correct answer (paper: 100)
    c.wrong_reward = 10.0             # wrong but extractable (non-empty, EOS-ended) answer: 10
    c.prompt_agg = "mean"             # batch aggregation over prompts: 'mean' | 'sum'
    c.log_hard_accuracy = True        # also decode "infer hard" (greedy) each step: hard_accuracy
    return c

  def validate(self, section, opts):
    s = section
    if s.cot_steps < 0:
      raise ValueError(f"rl.soft_tokens.cot_steps must be >= 0, got {s.cot_steps}")
    if s.mixture_temperature <= 0:
      raise ValueError(f"rl.soft_tokens.mixture_temperature must be > 0, got {s.mixture_temperature}")
    if s.noise_scale <= 0:
      raise ValueError(f"rl.soft_tokens.noise_scale must be > 0 (the Gaussian density needs "
                       f"σ > 0), got {s.noise_scale}")
    if s.noise_scale_mode not in st.NOISE_SCALE_MODES:
      raise ValueError(f"rl.soft_tokens.noise_scale_mode must be one of {st.NOISE_SCALE_MODES}, "
                       f"got {s.noise_scale_mode!r}")
    if s.prompt_agg not in st.PROMPT_AGGREGATIONS:
      raise ValueError(f"rl.soft_tokens.prompt_agg must be one of {st.PROMPT_AGGREGATIONS}, "
                       f"got {s.prompt_agg!r}")
    if opts["num_generations"] < 2:
      raise ValueError("rl.objective=soft_tokens uses the RLOO baseline: rl.num_generations "
                       f"must be >= 2, got {opts['num_generations']}")
    if opts["num_iterations"] != 1 or opts["beta"]:
      raise ValueError("rl.objective=soft_tokens is on-policy REINFORCE without a KL term: "
                       "rl.num_iterations must be 1 and rl.beta 0")

  # 2 soft CoT steps fit the quickstart's max_seq_len 64 (128 do not); rewards on the tiny run's
  # learning-rate scale (the paper's 100/10 would be a 100x larger step).
  quickstart_overrides = {"rl.soft_tokens.cot_steps": 2, "rl.soft_tokens.correct_reward": 1.0,
                          "rl.soft_tokens.wrong_reward": 0.1}

  def sequence_budgets(self, bctx):
    """prompt bucket + T_c soft CoT steps + T answer tokens (the soft and the hard-CoT decode
    and the training rows); plus the evaluation rollout."""
    from tokenrl.methods.budgets import Budget, rollout_budget  # pylint: disable=g-import-not-at-top
    P, tc, T = bctx.P, bctx.section.cot_steps, bctx.T
    return [rollout_budget(bctx, "evaluation rollout"),
            Budget("soft_tokens rollout", P + tc + T,
                   f"prompt bucket {P} + rl.soft_tokens.cot_steps {tc} + sampler.max_new_tokens {T}",
                   (("rl.soft_tokens.cot_steps", 0), ("sampler.max_new_tokens", 1)))]

  def benchmark_overrides(self, cfg: ml_collections.ConfigDict) -> None:
    """benchmarks/objectives.py on the quickstart task: 8 soft CoT steps (the 128 default does
    not fit max_seq_len 64) and rewards on the other objectives' 0-1 scale (100/10 would be a
    100x larger step at the same learning rate)."""
    cfg.rl.soft_tokens.cot_steps = 8
    cfg.rl.soft_tokens.correct_reward = 1.0
    cfg.rl.soft_tokens.wrong_reward = 0.1

  # ---- host hooks ------------------------------------------------------------------------
  def rollout(self, ctx: StepContext) -> StepData:
    from tokenrl.data.prompts import decode_completions  # pylint: disable=g-import-not-at-top
    sec, tok, G = ctx.section, ctx.tokenizer, ctx.G
    eos = tuple(int(e) for e in tok.eos_token_ids)
    sigma = float(st.noise_scale(ctx.params["embed"], sec.noise_scale, sec.noise_scale_mode))
    out = soft_sample(ctx.params, ctx.prompt_ids, config=ctx.model, rng=ctx.rng,
                      cot_steps=sec.cot_steps, max_new_tokens=ctx.T,
                      mixture_temperature=sec.mixture_temperature, sigma=sigma,
                      temperature=ctx.opts["temperature"], num_samples=G, stop_tokens=eos)
    arrays = soft_batch(out)
    ans, ans_mask = np.asarray(out.tokens), np.asarray(out.mask)
    n = ans.shape[0]
    texts = decode_completions(tok, ans, ans_mask)
    examples = [ex for ex in ctx.examples for _ in range(G)]
    res = ctx.score(texts, examples)
    correct = (np.asarray(res.per_fn["task"]) >= 1).astype(np.float32)
    truncated = np.asarray(out.truncated)
    extractable = np.array([bool(t.strip()) for t in texts]) & ~truncated
    rewards = correct * sec.correct_reward + (1 - correct) * extractable * sec.wrong_reward
    data = StepData(
        tokens=arrays["tokens"], segment_ids=arrays["segment_ids"],
        prompt_len=np.asarray(out.prompt_tokens).shape[1], mask=arrays["mask"],
        sampler_logp=arrays["sampler_logp"], entropy=arrays["entropy"], truncated=truncated,
        rewards=rewards.astype(np.float32), correct=correct, texts=list(texts),
        examples=examples)
    data.extra.update(cot_inputs=arrays["cot_inputs"],
                      cot_sigma=np.full((n,), sigma, np.float32),
                      group_size=np.full((n,), G, np.float32))
    # ||h̃ − μ|| from the density: ||h̃ − μ||² = −2σ²·(log π + (D/2)·log 2πσ²).
    d = arrays["cot_inputs"].shape[-1]
    lp = np.asarray(out.cot_logp, np.float64)
    sq = np.maximum(-2 * sigma ** 2 * (lp + 0.5 * d * np.log(2 * np.pi * sigma ** 2)), 0.0)
    tc = sec.cot_steps
    data.metrics.update(
        soft_sigma=sigma, soft_noise_norm=float(np.sqrt(sq).mean()) if tc else 0.0,
        cot_logp=float(lp.mean()) if tc else 0.0,
        mixture_entropy=float(np.asarray(out.cot_entropy).mean()) if tc else 0.0,
        reward_errors=float(res.stats["reward_errors"]),
        reward_timeouts=float(res.stats["reward_timeouts"]))
    if sec.log_hard_accuracy:
      data.metrics["hard_accuracy"] = self._hard_accuracy(ctx)
    return data

  def _hard_accuracy(self, ctx: StepContext) -> float:
    """Greedy "infer hard" accuracy on this step's prompts (T_c hard CoT tokens, then the answer)."""
    from tokenrl.data.prompts import decode_completions  # pylint: disable=g-import-not-at-top
    sec = ctx.section
    out = soft_sample(ctx.params, ctx.prompt_ids, config=ctx.model, rng=ctx.rng,
                      cot_steps=sec.cot_steps, max_new_tokens=ctx.T, temperature=0.0,
                      stop_tokens=tuple(ctx.tokenizer.eos_token_ids), hard_cot=True)
    texts = decode_completions(ctx.tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
    return float((np.asarray(ctx.score(texts, ctx.examples).per_fn["task"]) >= 1).mean())

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    data.advantages = np.asarray(obj.rloo_advantages(jnp.asarray(data.rewards), ctx.G), np.float32)
    data.token_weights = np.ones(data.mask.shape, np.float32)
    data.metrics["kept_groups"] = float(len(ctx.examples))
    return data

  # ---- jitted loss -------------------------------------------------------------------------
  def denominator(self, batch: dict[str, jax.Array], lctx: LossContext) -> jax.Array:
    """N rows ('mean': average over prompts of (1/G)Σ) or G ('sum' over prompts)."""
    if lctx.section["prompt_agg"] == "sum":
      return batch["group_size"][0]
    return jnp.asarray(batch["mask"].shape[0], jnp.float32)

  def loss_fn(self, params: Any, mb: dict[str, jax.Array], lctx: LossContext):
    sec = lctx.section
    cot_lp, logp, _ = teacher_forced_logprobs(
        params, mb["tokens"], mb["segment_ids"], mb["cot_inputs"], mb["cot_sigma"], lctx,
        mixture_temperature=sec["mixture_temperature"])
    mask = mb["mask"] * mb["token_weights"]
    lam = st.sequence_logprob(cot_lp, logp, mask)
    loss = st.reinforce_loss(lam, mb["advantages"], lctx.denom)
    sg = jax.lax.stop_gradient
    metrics = {"seq_logp": sg(lam).mean(),
               "answer_logp": sg((logp * mask).sum(1)).mean(),
               "pg_loss": sg(loss)}
    return loss, metrics
