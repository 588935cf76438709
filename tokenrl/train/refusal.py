"""Refusal-token trainer (spec §10): SFT with the category token first, then the threshold sweep.

`train_refusal(cfg, workdir)` is what `tokenrl train` runs for `rl.objective=refusal_tokens`:
cfg.train.sft_steps SFT steps (cfg.train.sft_batch_size, sft_learning_rate) on the embedded
refusal task (tokenrl.data.refusal: arithmetic prompts, a fraction unanswerable, every target
starting with '#' = [respond] or '?' = [refuse]), then greedy decoding of the held-out prompts
under `RefusalProcessor` for each threshold of rl.refusal_tokens.eval_thresholds (and the
configured threshold / logit_bias): refusal rate on answerable and on unanswerable prompts and
the task score (`refusal_reward`: a correct refusal counts as correct). No retraining between
thresholds: the trade-off is traced at inference, as in the paper. No checkpoints or resume.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from tokenrl.data.prompts import decode_completions
from tokenrl.data.refusal import make_refusal_examples, refusal_reward
from tokenrl.objectives.refusal import RefusalProcessor
from tokenrl.rollout.sampler import sample
from tokenrl.train import steps as steps_lib
from tokenrl.train.phases import adam, sampled_sft_batch
from tokenrl.train.setup import build_run, encode_prompts
from tokenrl.train.skeleton import NumpyRng, Phase, RunSpec, run_job


def token_id(tokenizer: Any, text: str) -> int:
  """The id of a category token: the last id of encode(text) (the reference's convention)."""
  ids = tokenizer.encode(text, add_special_tokens=False)
  if not ids:
    raise ValueError(f"category token {text!r} encodes to no ids")
  return ids[-1]


def refusal_eval(params: Any, *, config: Any, tokenizer: Any, examples, prompt_ids,
                 processor: RefusalProcessor | None, max_new_tokens: int) -> dict[str, float]:
  """Greedy decoding under `processor`: refusal rates (answerable / unanswerable) and score.

  examples carry 'refuse' and 'refuse_token' (the refusal character); a completion refuses
  when its first character is that token.
  """
  ro = sample(params, prompt_ids, config=config, rng=jax.random.key(0),
              max_new_tokens=max_new_tokens, temperature=0.0, logit_processor=processor)
  texts = decode_completions(tokenizer, np.asarray(ro.tokens), np.asarray(ro.mask))
  refused = np.asarray([t.strip()[:1] == ex["refuse_token"] for t, ex in zip(texts, examples)])
  should = np.asarray([ex["refuse"] for ex in examples])
  score = np.asarray([refusal_reward(t, ex) for t, ex in zip(texts, examples)])
  rate = lambda sel: float(refused[sel].mean()) if sel.any() else 0.0
  return {"refusal_rate_unanswerable": rate(should), "refusal_rate_answerable": rate(~should),
          "score": float(score.mean()),
          "answer_accuracy": float(score[~should].mean()) if (~should).any() else 0.0}


def train_refusal(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """SFT with category tokens, then the inference-time threshold sweep (module docstring)."""
  if cfg.rl.objective != "refusal_tokens":
    raise ValueError(f"train_refusal: rl.objective must be 'refusal_tokens', got "
                     f"{cfg.rl.objective!r}")
  return run_job(cfg, workdir, build_refusal)


def build_refusal(cfg: ml_collections.ConfigDict, workdir: str) -> RunSpec:
  """One 'sft' phase (train.sft_steps, may be 0) whose end evaluation is the threshold sweep."""
  del workdir
  sec = cfg.rl.refusal_tokens
  run = build_run(cfg)
  tok, model = run.tokenizer, run.model
  kw = dict(tiers=cfg.data.tiers or "add:1-2,sub:1-2", refusal_fraction=sec.refusal_fraction,
            refuse_token=sec.refuse_token, respond_token=sec.respond_token,
            kinds=tuple(k for k in sec.kinds.split(",") if k))
  train = make_refusal_examples("train", cfg.data.train_size, cfg.seed, **kw)
  test = make_refusal_examples("test", cfg.data.eval_size, cfg.seed, **kw)
  for ex in train + test:
    ex["refuse_token"] = sec.refuse_token
  refuse_id, respond_id = token_id(tok, sec.refuse_token), token_id(tok, sec.respond_token)
  tx = adam(cfg.train.sft_learning_rate)
  sft = steps_lib.make_sft_step(tx, config=model, micro_batch_size=cfg.train.micro_batch_size)
  rng = NumpyRng(cfg.seed)
  prompt_ids = encode_prompts(cfg, tok, test)
  T = cfg.sampler.max_new_tokens

  def step(state, g, s):
    del g, s
    return sft(state, sampled_sft_batch(cfg, tok, train, rng.rng, cfg.train.sft_batch_size))

  def sweep(state, g, when):
    del g, when
    ev = lambda proc: refusal_eval(state.params, config=model, tokenizer=tok, examples=test,
                                   prompt_ids=prompt_ids, processor=proc, max_new_tokens=T)
    proc = lambda t, b=0.0: RefusalProcessor(refuse_id, respond_id, threshold=float(t),
                                             softmax_temperature=sec.softmax_temperature,
                                             logit_bias=float(b))
    return {"unforced": ev(None), "configured": ev(proc(sec.threshold, sec.logit_bias)),
            "threshold_sweep": {str(float(t)): ev(proc(t)) for t in sec.eval_thresholds}}

  def summarize(state, meta, g):
    final = meta["evals"][-1]
    return {"objective": "refusal_tokens", "refuse_id": refuse_id, "respond_id": respond_id,
            "unforced": final["unforced"], "configured": final["configured"],
            "threshold_sweep": final["threshold_sweep"], "sft_steps": cfg.train.sft_steps,
            "steps": g, "skipped_updates": int(state.skipped),
            "final_score": final["configured"]["score"]}

  phases = [Phase("sft", cfg.train.sft_steps, lambda _: steps_lib.create_state(run.params, tx),
                  step, evaluate=sweep, eval_at_end=True)]
  prompt_len = max(len(p) for p in prompt_ids + encode_prompts(cfg, tok, train))
  return RunSpec(phases=phases, model=model, prompt_len=prompt_len, summarize=summarize,
                 iterators={"rng": rng}, plot=False)
