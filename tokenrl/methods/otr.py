"""`rl.objective=otr`: One-Token Rollout, SFT data trained with a one-step policy gradient (spec §7).

No completions are sampled. `rollout` builds teacher-forced rows (prompt + example answer + EOS,
`teacher_forced_data`, shared with DCO); the loss runs ONE forward over them, draws K candidate
tokens per answer position from π′ = softmax(sg(z)/τ_s) (inverse CDF, per-row keys from the
batch so micro-batching does not change the draw) and applies the REINFORCE loss with reward 1
for the ground-truth token and β otherwise. [reconstructed]: β and τ_s are unverified (required
knobs); the 'exact' estimator and `always_include_gt` are alternatives not in the paper.
The loop's reward/accuracy columns are 0 for this method (nothing is generated); see the
otr_* metrics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from tokenrl.methods.base import LossContext, Method, StepContext, StepData
from tokenrl.methods.registry import register
from tokenrl.models import transformer
from tokenrl.objectives import otr as otr_lib


def teacher_forced_data(ctx: StepContext) -> StepData:
  """StepData of the step's examples with their answers as the completion (teacher forcing).

  tokens [R,P+T]: left-padded prompt (bucketed) + answer ids + EOS, right-padded with pad_id;
  mask [R,T] = 1 on answer and EOS; T = max(ctx.T, longest answer + 1). R = B·G: each example
  is repeated G times (row b·G + g), the loop's N = B·G row layout that the mesh and the
  minibatches split; a per-example mean over rows is unchanged by the copies (OTR copies draw
  independent candidates, DCO copies are identical). Log-probs, entropy, rewards and correctness
  are 0 (nothing was sampled).
  """
  from tokenrl.rollout.sampler import prepare_prompts  # pylint: disable=g-import-not-at-top
  tok, model = ctx.tokenizer, ctx.model
  eos = tok.eos_token_ids[0]
  answers = [tok.encode(str(ex["answer"]), add_special_tokens=False) + [eos] for ex in ctx.examples]
  prompt, prompt_mask = prepare_prompts(ctx.prompt_ids, model.pad_id)             # [B,P]
  b, p = prompt.shape
  t = max(ctx.T, max(len(a) for a in answers))
  if p + t > model.max_seq_len:
    raise ValueError(f"prompt bucket {p} + answer length {t} exceeds the model's max_seq_len "
                     f"{model.max_seq_len} (sampler.max_new_tokens / data.max_prompt_len)")
  comp = np.full((b, t), model.pad_id, np.int32)
  mask = np.zeros((b, t), np.int32)
  for i, a in enumerate(answers):
    comp[i, :len(a)] = a
    mask[i, :len(a)] = 1
  fill = np.repeat(np.arange(b), ctx.G)                          # row b·G + g = example b
  rows = len(fill)
  comp, mask = comp[fill], mask[fill]
  tokens = np.concatenate([prompt[fill], comp], axis=1).astype(np.int32)
  segment_ids = np.concatenate([prompt_mask[fill], np.ones_like(comp)], axis=1).astype(np.int32)
  zeros = np.zeros((rows, t), np.float32)
  examples = [ctx.examples[i] for i in fill]
  return StepData(tokens=tokens, segment_ids=segment_ids, prompt_len=p, mask=mask,
                  sampler_logp=zeros, entropy=zeros.copy(), truncated=np.zeros(rows, bool),
                  rewards=np.zeros(rows, np.float32), correct=np.zeros(rows, np.float32),
                  texts=[str(ex["answer"]) for ex in examples], examples=examples,
                  advantages=np.zeros(rows, np.float32), token_weights=np.ones((rows, t), np.float32))


def teacher_forced_budgets(bctx: Any) -> list[Any]:
  """Budgets of `teacher_forced_data` rows: prompt bucket + max(T, longest answer + EOS); the
  loop's evaluation samples T tokens from the same prompts (inside that width)."""
  from tokenrl.methods.budgets import Budget  # pylint: disable=g-import-not-at-top
  t = max(bctx.T, bctx.answer_tokens)
  return [Budget("teacher-forced rows", bctx.P + t,
                 f"prompt bucket {bctx.P} + max(sampler.max_new_tokens {bctx.T}, longest answer "
                 f"+ EOS {bctx.answer_tokens})", (("sampler.max_new_tokens", 1),))]


def teacher_forced_logits(params: Any, mb: dict[str, jax.Array], lctx: LossContext) -> jax.Array:
  """logits [N,T,V] f32 (temperature 1) predicting the completion tokens tokens[:, P:]."""
  p = lctx.prompt_len
  hidden, _ = transformer.forward(params, mb["tokens"][:, :-1], config=lctx.model,
                                  segment_ids=mb["segment_ids"][:, :-1], return_hidden=True,
                                  remat=lctx.remat)
  return transformer.unembed(params, hidden[:, p - 1:], config=lctx.model)


def _masked_mean(x: jax.Array, m: jax.Array) -> jax.Array:
  return jnp.where(m > 0, x, 0.0).sum() / jnp.maximum(m.sum(), 1.0)


@register
class Otr(Method):
  name = "otr"
  paper = "One-Token Rollout: Guiding SFT of LLMs with Policy Gradient (arXiv 2509.26313)"
  metrics = ("otr_match_fraction", "otr_token_accuracy", "otr_nll")

  def config(self):
    c = ml_collections.ConfigDict()
    c.num_samples = 256                                # K one-token rollouts per position (paper)
    c.temperature = config_dict.placeholder(float)     # τ_s of π′, REQUIRED: paper > 1, value unverified
    c.beta = -0.1                                      # reward of a mismatch (paper: slightly < 0; unverified)
    c.estimator = "mc"                                 # 'mc' (paper) | 'exact' (E over π′, reviewer's)
    c.normalize = "per_sequence"                       # 'per_sequence' (paper) | 'global_token_mean'
    c.always_include_gt = False                        # force candidate 0 = y (not in the paper)
    return c

  def validate(self, section, opts):
    del opts
    if section.temperature is None or not section.temperature > 0:
      raise ValueError("rl.otr.temperature: required, > 0 (τ_s of the sampling copy π′; the "
                       f"paper uses > 1, e.g. sweep 1.0/1.2/1.5), got {section.temperature!r}")
    if section.num_samples < 1:
      raise ValueError(f"rl.otr.num_samples: expected >= 1, got {section.num_samples}")
    if section.estimator not in otr_lib.ESTIMATORS:
      raise ValueError(f"rl.otr.estimator: expected one of {otr_lib.ESTIMATORS}, "
                       f"got {section.estimator!r}")
    if section.normalize not in otr_lib.NORMALIZE:
      raise ValueError(f"rl.otr.normalize: expected one of {otr_lib.NORMALIZE}, "
                       f"got {section.normalize!r}")
    if not section.beta < 1:
      raise ValueError(f"rl.otr.beta: expected < 1 (the mismatch reward), got {section.beta}")

  # rl.otr.temperature is required (no published value); 16 candidates keep the CPU step short.
  quickstart_overrides = {"rl.otr.temperature": 1.2, "rl.otr.num_samples": 16}

  def sequence_budgets(self, bctx):
    return teacher_forced_budgets(bctx)

  def rollout(self, ctx: StepContext) -> StepData:
    return teacher_forced_data(ctx)

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    # Per-row PRNG key data: row i draws its K·T uniforms from its own key (jit-side).
    base = jax.random.fold_in(ctx.rng, 0x07A)
    keys = jax.random.split(base, data.mask.shape[0])
    data.extra["otr_key"] = np.asarray(jax.random.key_data(keys))
    return data

  def denominator(self, batch, lctx):
    return otr_lib.otr_denominator(batch["mask"], lctx.section["normalize"])

  def loss_fn(self, params, mb, lctx):
    sec = lctx.section
    logits = teacher_forced_logits(params, mb, lctx)                              # [N,T,V]
    y = mb["tokens"][:, lctx.prompt_len:]
    n, t, _ = logits.shape
    candidates = None
    if sec["estimator"] == "mc":
      keys = jax.random.wrap_key_data(mb["otr_key"])
      k = sec["num_samples"]
      u = jax.vmap(lambda key: jax.random.uniform(key, (t, k)))(keys)             # [N,T,K]
      candidates = otr_lib.sample_candidates(logits, u, temperature=sec["temperature"])
    tok_loss, match = otr_lib.otr_token_loss(
        logits, y, candidates, beta=sec["beta"], estimator=sec["estimator"],
        temperature=sec["temperature"], always_include_gt=sec["always_include_gt"])
    mask = mb["mask"]
    loss = otr_lib.otr_loss(tok_loss, mask, normalize=sec["normalize"], denominator=lctx.denom)
    sg = jax.lax.stop_gradient(logits)
    lp_y = jnp.take_along_axis(jax.nn.log_softmax(sg, -1), y[..., None], -1)[..., 0]
    metrics = {"otr_match_fraction": _masked_mean(match, mask),
               "otr_token_accuracy": _masked_mean((jnp.argmax(sg, -1) == y).astype(jnp.float32), mask),
               "otr_nll": _masked_mean(-lp_y, mask)}
    return loss, metrics

