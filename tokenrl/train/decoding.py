"""The rollout decoder a run samples with: plain `sample`, or a lossless speculative decoder.

    decoder = build_decoder(cfg, model, tokenizer)      # None when sampler.speculative.method='none'
    place = Placement(mesh, model, sampler=decoder)     # rollouts and evaluations then use it
    metrics.update(decoder.take_metrics())              # acceptance etc. since the last call

`sampler.speculative.method` (tokenrl/config.py `speculative_config`):
  exact       Leviathan/Chen accept-reject with the draft `sampler.speculative.draft`:
              ngram (prompt lookup; no second model, never stale), layers (the policy's own first
              `draft_layers` layers: self-speculation, always the current policy) or model (a
              separate draft loaded once from `draft_model`; stale as the policy trains, still
              lossless: staleness lowers the acceptance, never changes the law).
  specdec_pp  exact, with the draft length chosen by a trained SpecDec++ acceptance head
              (`head`: a workdir of configs/specdec_pp.py) on a layers/model draft.
  spectr      SpecTr: `num_drafts` i.i.d. drafts (layers/model) verified together by K-SEQ.
  del         DEL dynamic-exit self-speculation.
All of them sample the policy's own law (tests/rollout/test_speculative.py), so the policy
gradient is unchanged; only the rollout time differs. Lossy decoders (skipdecode, r2r) are
refused for training by `validate_config` and are not built here.

Everything that can be wrong (the draft's vocabulary, tokenizer, EOS ids, a missing head) fails
here, at start-up, naming the config key. A method whose rollouts use a logit processor (a
temperature schedule or a token mask) cannot be decoded speculatively as is: that is refused at
the first rollout with the method's name and the key to change.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from tokenrl.models.config import ModelConfig

# Strings whose token ids must agree between the target's and the draft's tokenizers.
_PROBE_TEXTS = ("0123456789 +-*/=()", "sort 3142=1234", "The quick brown fox jumps over 12 dogs.",
                "Answer: <think>ok</think> é ü 中文")


def _key(name: str) -> str:
  return f"sampler.speculative.{name}"


class SpeculativeDecoder:
  """A `tokenrl.rollout.sample`-compatible callable over a speculative decoder (see module doc).

  Called as `sample` is (by `Placement.sample`); returns the Rollout and keeps the counters of
  every call since the last `take_metrics()`.
  """

  def __init__(self, spec: ml_collections.ConfigDict, model: ModelConfig, draft: Any,
               head: tuple[Any, int] | None):
    self.spec, self.model, self.draft, self.head = spec, model, draft, head
    self._placed = False
    self._counts = np.zeros(3)  # drafted, accepted, rounds·rows (tokens per verify pass)
    self._emitted = 0

  def __call__(self, params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
               max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, num_samples: int = 1, stop_tokens: Sequence[int] | None = None,
               logit_processor: Any = None, processor_state: Any = None,
               prompt_sharding: Any = None, **unused: Any) -> Any:
    if logit_processor is not None or processor_state is not None:
      raise ValueError(
          f"sampler.speculative.method={self.spec.method!r} cannot decode rollouts that use a "
          "logit processor (this RL method edits the logits while sampling): the draft would "
          "need the same processor at every drafted position. Set "
          "--config.sampler.speculative.method=none for this method")
    del unused
    self._place_like(params)
    # The rows split over the mesh like `sample`'s (data-parallel decode; the draft and head
    # are replicated there by _place_like).
    kw = dict(config=config, rng=rng, max_new_tokens=max_new_tokens, temperature=temperature,
              top_k=top_k, top_p=top_p, num_samples=num_samples, stop_tokens=stop_tokens,
              prompt_sharding=prompt_sharding)
    method = self.spec.method
    if method == "del":
      from tokenrl.rollout.dynamic_exit import del_sample  # pylint: disable=g-import-not-at-top
      out, info = del_sample(params, prompts, **kw)
      self._add(int(np.asarray(info.drafted).sum()), int(np.asarray(info.accepted).sum()),
                int(np.asarray(info.num_rounds)) * int(np.asarray(out.mask).shape[0]),
                int(np.asarray(out.mask).sum()))
      return out
    if method == "spectr":
      from tokenrl.rollout.spectr import spectr_sample  # pylint: disable=g-import-not-at-top
      out, stats = spectr_sample(params, prompts, draft=self.draft,
                                 num_drafts=int(self.spec.num_drafts),
                                 num_draft_tokens=int(self.spec.num_draft_tokens), **kw)
      self._add(stats.drafted, stats.accepted, stats.row_rounds, stats.emitted)
      return out
    from tokenrl.rollout.speculative import speculative_sample  # pylint: disable=g-import-not-at-top
    extra = {}
    if method == "specdec_pp":
      extra = dict(accept_head=self.head, stop_threshold=float(self.spec.threshold),
                   min_draft_tokens=int(self.spec.min_draft_tokens))
    out, stats = speculative_sample(params, prompts, draft=self.draft,
                                    num_draft_tokens=int(self.spec.num_draft_tokens), **kw, **extra)
    self._add(stats.drafted, stats.accepted, stats.row_rounds, stats.emitted)
    return out

  def _place_like(self, params: Any) -> None:
    """Put the draft model's and the head's arrays where the policy's are (once).

    A draft restored from a workdir sits on one device; the policy on a mesh spans all of them,
    and one jitted decode cannot take both. Replicated on the policy's mesh, like the decode
    layout of the policy's own weights (every weight read once per token)."""
    if self._placed:
      return
    self._placed = True
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding):
      return
    rep = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    from tokenrl.rollout import drafts  # pylint: disable=g-import-not-at-top
    if isinstance(self.draft, drafts.ModelDraft):
      self.draft = dataclasses.replace(self.draft, params=jax.device_put(self.draft.params, rep))
    if self.head is not None:
      self.head = (jax.device_put(self.head[0], rep), self.head[1])

  def _add(self, drafted: int, accepted: int, row_rounds: int, emitted: int) -> None:
    self._counts += (drafted, accepted, row_rounds)
    self._emitted += emitted

  def take_metrics(self) -> dict[str, float]:
    """{'spec_acceptance', 'spec_tokens_per_pass'} since the last call ({} when no call)."""
    drafted, accepted, row_rounds = self._counts
    out = {}
    if drafted:
      out["spec_acceptance"] = float(accepted / drafted)
    if row_rounds:
      out["spec_tokens_per_pass"] = float(self._emitted / row_rounds)
    self._counts[:] = 0
    self._emitted = 0
    return out


def _check_tokenizers(target: Any, draft: Any, path: str) -> None:
  """ValueError naming both when the draft's tokenizer is not the target's."""
  if target is None or draft is None:
    return
  if draft.vocab_size != target.vocab_size:
    raise ValueError(f"{_key('draft_model')}={path!r}: its tokenizer has {draft.vocab_size} ids, "
                     f"the policy's has {target.vocab_size}; a draft must share the tokenizer")
  if list(draft.eos_token_ids) != list(target.eos_token_ids):
    raise ValueError(f"{_key('draft_model')}={path!r}: EOS ids {list(draft.eos_token_ids)} vs "
                     f"the policy's {list(target.eos_token_ids)}; a draft must share the tokenizer")
  for text in _PROBE_TEXTS:
    try:
      a = target.encode(text, add_special_tokens=False)
    except ValueError:  # e.g. a character-level vocabulary without these characters
      continue
    try:
      b = draft.encode(text, add_special_tokens=False)
    except ValueError as e:
      raise ValueError(f"{_key('draft_model')}={path!r}: its tokenizer cannot encode {text!r} "
                       f"({e}), the policy's can; a draft must share the tokenizer") from None
    if a != b:
      raise ValueError(f"{_key('draft_model')}={path!r}: its tokenizer encodes {text!r} as {b[:12]}"
                       f"…, the policy's as {a[:12]}…; a draft must share the tokenizer")


def load_draft_model(path: str, target_tokenizer: Any = None) -> tuple[ModelConfig, Any]:
  """(config, params) of a draft from an HF folder or a tokenrl workdir, tokenizer checked."""
  from tokenrl import models  # pylint: disable=g-import-not-at-top
  from tokenrl.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise ValueError(f"{_key('draft_model')}={path!r}: no such folder (an HF model folder or a "
                     "tokenrl workdir)")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    from tokenrl.train.workdir import load_workdir  # pylint: disable=g-import-not-at-top
    _, run, params = load_workdir(path)
    config, tok = run.model, run.tokenizer
  else:
    config, params = models.load_hf(path)
    tok = load_tokenizer(path)
  _check_tokenizers(target_tokenizer, tok, path)
  return config, params


def load_head(path: str) -> tuple[Any, int]:
  """(head_params, num_blocks) of a SpecDec++ acceptance head trained by configs/specdec_pp.py."""
  from tokenrl.train import specdec_pp  # pylint: disable=g-import-not-at-top
  try:
    head, info = specdec_pp.load_accept_head(path)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"{_key('head')}={path!r}: {e}") from None
  return head, int(info["num_blocks"])


def build_decoder(cfg: ml_collections.ConfigDict, model: ModelConfig,
                  tokenizer: Any = None) -> SpeculativeDecoder | None:
  """The run's speculative decoder, or None for plain `sample`; every check at start-up."""
  spec = cfg.sampler.speculative
  if spec.method == "none":
    return None
  if jax.process_count() > 1:
    raise ValueError(f"{_key('method')}={spec.method!r} runs on one process for now (the draft "
                     "and head are placed from one host's copy, untested across hosts); "
                     "multi-process jobs sample with "
                     "--config.sampler.speculative.method=none")
  if model.attention != "full":
    raise ValueError(f"{_key('method')}={spec.method!r} needs model.attention='full' (the "
                     f"per-row KV cache index), got {model.attention!r}")
  from tokenrl.rollout import drafts  # pylint: disable=g-import-not-at-top
  draft, head = None, None
  if spec.method in ("exact", "specdec_pp", "spectr"):
    if spec.draft == "ngram":
      draft = drafts.NGramDraft(int(spec.ngram))
    elif spec.draft == "layers":
      draft = drafts.LayerDraft(int(spec.draft_layers))
    else:
      dconfig, dparams = load_draft_model(spec.draft_model, tokenizer)
      draft = drafts.ModelDraft(dparams, dconfig)
    try:
      draft.check(model)
    except ValueError as e:
      raise ValueError(f"{_key('draft')}={spec.draft!r}: {e}") from None
    if spec.method == "specdec_pp":
      if not draft.exposes_hidden:
        raise ValueError(f"{_key('method')}='specdec_pp' scores the draft's hidden states: "
                         f"{_key('draft')}={spec.draft!r} has none; use 'layers' or 'model'")
      head = load_head(spec.head)
      dim = draft.config.dim if isinstance(draft, drafts.ModelDraft) else model.dim
      width = int(head[0]["blocks"]["w"].shape[-1])
      if width != dim:
        raise ValueError(f"{_key('head')}={spec.head!r} was trained on hidden states of width "
                         f"{width}, the draft {spec.draft!r} has width {dim}: train the head on "
                         "this draft")
    if spec.method == "spectr" and not draft.exposes_hidden:  # n-gram drafts are deterministic
      raise ValueError(f"{_key('method')}='spectr' verifies several i.i.d. drafts: "
                       f"{_key('draft')}='ngram' proposes one deterministic draft; use 'layers' "
                       "or 'model'")
  return SpeculativeDecoder(spec, model, draft, head)
