"""`rl.objective=cdpo`: token-weighted DPO with critical tokens found by contrastive
estimation (spec §4).

Positive / negative models: fine-tuned from the reference (the paper: two LoRA adapters on the
same base) on the chosen (correct) and rejected (incorrect) completions of the training pairs
for `ce_steps` steps each, once, at the start of the preference phase, and saved under
WORKDIR/cdpo_positive and WORKDIR/cdpo_negative (a resumed run reuses them); or the final
policies of two finished tokenrl runs given as `positive_workdir` / `negative_workdir`.
The scores are computed on exactly the training token ids (no tokenization alignment fudge).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from tokenrl.methods.dpo import PAIR_METRICS, PairwiseMethod
from tokenrl.methods.forward import make_hidden_fn
from tokenrl.methods.registry import register
from tokenrl.objectives.cdpo import cdpo_weights, contrastive_scores


@functools.lru_cache(maxsize=16)
def _score_fn(model, prompt_len: int, beta_ce: float):
  """jitted (pos, neg, tokens [N,2,S], segment_ids) -> s [N,2,T] (contrastive scores)."""
  logits_of = make_hidden_fn(config=model, prompt_len=prompt_len, jit=False)

  def fn(pos, neg, tokens, segment_ids):
    n = tokens.shape[0]
    flat = lambda x: jnp.concatenate([x[:, 0], x[:, 1]], axis=0)       # [2N,S]
    t, s = flat(tokens), flat(segment_ids)
    score = contrastive_scores(logits_of(pos, t, s)[1], logits_of(neg, t, s)[1],
                               t[:, prompt_len:], beta_ce=beta_ce)     # [2N,T]
    return jnp.stack([score[:n], score[n:]], axis=1)

  return jax.jit(fn)


@register
class Cdpo(PairwiseMethod):
  name = "cdpo"
  paper = "Critical Tokens Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning (arXiv 2411.19943)"
  metrics = PAIR_METRICS + ("weight_chosen", "weight_rejected")

  def frozen_models(self, section):
    del section
    return {"reference (post-SFT policy)": 1.0, "positive model": 1.0, "negative model": 1.0}

  def config(self):
    c = ml_collections.ConfigDict()
    c.beta = 0.1                # β of the DPO loss (train_config.py)
    c.beta_ce = 1.0             # β_ce: s = softmax((1+β_ce) z⁺ − β_ce z⁻)[y] (code: 2z⁺ − z⁻)
    c.only_neg = True           # True: chosen weights 1; False: chosen weights s^w
    c.label_smoothing = 0.0     # ε (conservative DPO); 0 = off
    c.positive_workdir = ""     # finished run = π⁺; "" = fine-tune the reference on chosen
    c.negative_workdir = ""     # finished run = π⁻; "" = fine-tune the reference on rejected
    c.ce_steps = 100            # SFT steps of each in-loop positive / negative model
    c.ce_learning_rate = 3e-4   # their AdamW learning rate (spec: CE-model lr 3e-4)
    return c

  def validate(self, section, opts):
    super().validate(section, opts)
    if section.beta_ce < 0:
      raise ValueError(f"rl.cdpo.beta_ce: expected >= 0, got {section.beta_ce}")
    if bool(section.positive_workdir) != bool(section.negative_workdir):
      raise ValueError("rl.cdpo.positive_workdir / negative_workdir: give both or neither")
    if not section.positive_workdir and (section.ce_steps < 1 or section.ce_learning_rate <= 0):
      raise ValueError(f"rl.cdpo.ce_steps / ce_learning_rate: expected >= 1 and > 0, got "
                       f"{section.ce_steps}, {section.ce_learning_rate}")

  def prepare(self, pctx):
    sec = pctx.section
    if sec.positive_workdir:
      for key, path in (("positive", sec.positive_workdir), ("negative", sec.negative_workdir)):
        model, params = pctx.load_params(path)
        if model != pctx.run.model:
          raise ValueError(f"rl.cdpo.{key}_workdir={path!r}: its model differs from this run's")
        pctx.aux[key] = params
      return
    for which, key in enumerate(("positive", "negative")):
      train = functools.partial(pctx.sft, pctx.ref_params, pctx.train_pairs, which, sec.ce_steps,
                                sec.ce_learning_rate, pctx.cfg.seed + 101 + which)
      pctx.aux[key] = pctx.load_or_train(pctx.workdir, f"cdpo_{key}", pctx.ref_params, train)

  def extras(self, pctx, batch, prompt_len):
    fn = _score_fn(pctx.run.model, prompt_len, float(pctx.section.beta_ce))
    return {"score": fn(pctx.aux["positive"], pctx.aux["negative"], batch["tokens"],
                        batch["segment_ids"])}

  def coefficients(self, mb, section):
    s, m = mb["score"], mb["mask"]
    w_w, w_l = cdpo_weights(s[:, 0], s[:, 1], m[:, 0], m[:, 1], only_neg=section["only_neg"])
    return section["beta"] * w_w, section["beta"] * w_l

  def pair_loss(self, logp, mb, section):
    losses, _ = super().pair_loss(logp, mb, section)
    c_w, c_l = self.coefficients(mb, section)
    m = mb["mask"] > 0
    mean = lambda x, k: x.sum(-1) / jnp.maximum(k.sum(-1), 1)
    return losses, {"weight_chosen": mean(c_w / section["beta"], m[:, 0]),
                    "weight_rejected": mean(c_l / section["beta"], m[:, 1])}
