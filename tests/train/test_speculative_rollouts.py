"""sampler.speculative in the RL loop: lossless decoders sample the policy's law, every bad
setting fails at start-up naming its key, and K = 0 is the plain run bit for bit."""

import json
import os

import numpy as np
import pytest

from tests.robustness.conftest import tiny_config
from tokenrl.train.rl_loop import train


def _cfg(method="none", **spec):
  c = tiny_config()
  c.train.max_steps = 2
  c.sampler.speculative.method = method
  for k, v in spec.items():
    c.sampler.speculative[k] = v
  return c


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _rl_rows(workdir):
  return [m for m in _metrics(workdir) if "reward" in m]


@pytest.mark.slow
def test_zero_draft_tokens_is_the_plain_run_bit_for_bit(tmp_path):
  # K = 0 runs every rollout through the speculative engine (per-row cache index, its own
  # loop), drawing each token with the key `sample` uses: the run must not change at all.
  plain = train(_cfg(), str(tmp_path / "plain"))
  spec = train(_cfg("exact", draft="ngram", num_draft_tokens=0), str(tmp_path / "spec"))
  for key in ("baseline_accuracy", "final_accuracy"):
    assert plain[key] == spec[key]
  a, b = _rl_rows(tmp_path / "plain"), _rl_rows(tmp_path / "spec")
  assert len(a) == len(b) == 2
  for ra, rb in zip(a, b):
    # Same tokens, so the same rewards, loss and update, bit for bit.
    for key in ("reward", "loss", "grad_norm", "completion_length", "accuracy"):
      assert ra[key] == rb[key], key
    # The sampler's entropy is a reporting sum over V reduced on 8 row shards by `sample` and on
    # one device by the engine (it takes unsharded rows): equal up to f32 summation order.
    assert abs(ra["sampler_entropy"] - rb["sampler_entropy"]) < 1e-6


@pytest.mark.slow
def test_a_draft_model_folder_decodes_rollouts_on_the_mesh(tmp_path):
  # A separate draft (HF folder + its tokenizer) restored on one device, the policy on the 8
  # fake devices: the decoder puts the draft where the policy is.
  import jax
  from tokenrl import models
  from tokenrl.data.tokenizer import load_tokenizer
  tok = load_tokenizer("char")
  draft = models.tiny("qwen2", vocab_size=tok.vocab_size, dim=16, num_layers=1, num_heads=2,
                      num_kv_heads=1, mlp_dim=32, max_seq_len=64, pad_id=tok.pad_id,
                      bos_id=tok.bos_id, eos_ids=tuple(tok.eos_token_ids))
  folder = str(tmp_path / "draft")
  models.save_hf(folder, draft, models.init_params(draft, jax.random.key(3)), tokenizer=tok)
  train(_cfg("exact", draft="model", draft_model=folder, num_draft_tokens=2), str(tmp_path / "r"))
  rows = _rl_rows(tmp_path / "r")
  assert len(rows) == 2
  for r in rows:  # this step's rollouts only (evaluation counts are dropped)
    assert 0.0 <= r["spec_acceptance"] <= 1.0
    assert 1.0 <= r["spec_tokens_per_pass"] <= 3.0  # at most K + 1 tokens per verify pass


@pytest.mark.parametrize("spec,match", [
    (dict(draft="model", draft_model="/no/such/folder"),
     r"sampler.speculative.draft_model='/no/such/folder': no such folder"),
    (dict(draft="layers", draft_layers=9), r"sampler.speculative.draft='layers'.*\[1, 2\]"),
])
def test_bad_drafts_fail_at_start_up_naming_the_key(tmp_path, spec, match):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    train(_cfg("exact", **spec), str(workdir))
  assert not (workdir / "metrics.jsonl").exists()  # no step ran
  ckpts = workdir / "checkpoints"
  assert not ckpts.exists() or not any(ckpts.iterdir())


def test_specdec_pp_needs_a_head_and_a_draft_with_hidden_states(tmp_path):
  with pytest.raises(ValueError, match=r"sampler.speculative.draft='ngram' has none"):
    train(_cfg("specdec_pp", draft="ngram", head="/x"), str(tmp_path / "a"))
  with pytest.raises(ValueError, match=r"sampler.speculative.head='/nope'.*configs/specdec_pp.py"):
    train(_cfg("specdec_pp", draft="layers", draft_layers=1, head="/nope"), str(tmp_path / "b"))


def test_a_draft_with_another_tokenizer_is_named(tmp_path):
  from tokenrl.data.tokenizer import load_tokenizer
  from tokenrl.train.decoding import _check_tokenizers
  char = load_tokenizer("char")
  other = load_tokenizer("char")

  class Shifted:
    vocab_size = char.vocab_size
    eos_token_ids = char.eos_token_ids

    def encode(self, text, add_special_tokens=True):
      return [i + 1 for i in other.encode(text, add_special_tokens=add_special_tokens)]

  _check_tokenizers(char, char, "same")
  with pytest.raises(ValueError, match=r"draft_model='d'.*encodes '0123456789 \+-\*/=\(\)' as"):
    _check_tokenizers(char, Shifted(), "d")


@pytest.mark.parametrize("method", ["spectr", "del", "specdec_pp"])
def test_each_lossless_decoder_is_greedy_decoding_through_the_run_decoder(method, tmp_path):
  # The decoder the RL loop builds, called as `Placement.sample` calls it: greedy output equals
  # plain greedy `sample` for every lossless method (SpecDec++ with a random saved head).
  import jax
  from tokenrl import models
  from tokenrl.models.accept_head import init_accept_head
  from tokenrl.rollout import sample
  from tokenrl.train.decoding import build_decoder
  from tokenrl.train.specdec_pp import save_accept_head
  config = models.tiny(vocab_size=32, dim=32, num_layers=2, max_seq_len=64)
  params = models.init_params(config, jax.random.key(1))
  head_dir = str(tmp_path / "head")
  save_accept_head(head_dir, init_accept_head(jax.random.key(2), 32),
                   {"num_blocks": 3, "shared_blocks": True, "dim": 32})
  cfg = _cfg(method, draft="layers", draft_layers=1, num_draft_tokens=3, num_drafts=2,
             head=head_dir)
  decoder = build_decoder(cfg, config)
  prompts = [[3, 4, 5], [7, 8, 9, 10, 11]]
  kw = dict(config=config, rng=jax.random.key(0), max_new_tokens=8, temperature=0.0,
            stop_tokens=())
  want = sample(params, prompts, **kw)
  got = decoder(params, prompts, prompt_sharding=None, **kw)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  metrics = decoder.take_metrics()
  assert 1.0 <= metrics["spec_tokens_per_pass"] <= 4.0
  assert decoder.take_metrics() == {}  # taken: counts restart
