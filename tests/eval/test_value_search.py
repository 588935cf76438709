"""Value-guided step beam search vs best-of-N on a toy whose value model is known exactly.

Toy: tokens {0 = EOS, 1, 2}; the generator draws each next token uniformly; a path ends at EOS
or after 4 tokens; it is correct iff it is exactly (1, 1, 0). The exact value of a prefix is
the probability that a uniform continuation ends correct: v(()) = 1/27, v((1,)) = 1/9,
v((1,1)) = 1/3, v((1,1,0)) = 1, and 0 for any prefix that has left the correct path.
"""

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.eval import value_search as vs
from tokenrl.models import value_head as vh

TARGET = (1, 1, 0)
is_finished = vs.finished_fn([0], 4)


def exact_value(path):
  if tuple(path[:len(TARGET)]) != TARGET[:len(path)] or len(path) > len(TARGET):
    return 0.0
  return (1 / 3) ** (len(TARGET) - len(path))


def score(paths):
  return np.array([exact_value(p) for p in paths])


def enumerate_proposer(prefixes, per_prefix, rnd):
  del rnd
  return [[(t,) for t in range(3)][:per_prefix] for _ in prefixes]


def uniform_proposer(rng):
  def propose(prefixes, per_prefix, rnd):
    del rnd
    return [[(int(rng.integers(3)),) for _ in range(per_prefix)] for _ in prefixes]
  return propose


def uniform_sample_n(rng):
  def sample_n(n):
    out = []
    for _ in range(n):
      p = ()
      while not is_finished(p):
        p += (int(rng.integers(3)),)
      out.append(p)
    return out
  return sample_n


def test_exact_value_and_enumeration_find_the_answer():
  r = vs.step_beam_search(enumerate_proposer, score, is_finished=is_finished, num_beams=1,
                          num_candidates=3, max_rounds=10)
  assert r.path == TARGET and r.score == 1.0 and r.finished
  assert r.tokens_generated == 9 and r.candidates_scored == 9   # 3 rounds x 3 candidates


def test_constant_value_keeps_first_candidates():
  r = vs.step_beam_search(enumerate_proposer, lambda ps: np.zeros(len(ps)),
                          is_finished=is_finished, num_beams=1, num_candidates=3)
  assert r.path == (0,)                                         # stable ties: first = EOS


def test_best_of_n_picks_a_correct_sample_iff_one_exists():
  rng = np.random.default_rng(0)
  for _ in range(20):
    samples = uniform_sample_n(rng)(8)
    r = vs.best_of_n(lambda n, s=samples: s, score, n=8)
    assert (r.path == TARGET) == (TARGET in samples)
    assert r.tokens_generated == sum(len(p) for p in samples)


def test_value_search_beats_best_of_n_at_equal_compute():
  """One beam, K = 6 one-token candidates a round: ≤ 18 tokens for the 3 rounds it needs, and it
  fails only if a round's 6 draws miss the needed token (w.p. (2/3)^6 ≈ 0.088 each), so it
  succeeds w.p. ≈ 0.912³ ≈ 0.76. Best-of-8 spends 8 × E[len] = 8 × 65/27 ≈ 19 tokens and
  succeeds w.p. 1 − (26/27)^8 ≈ 0.26."""
  rng = np.random.default_rng(0)
  trials, k = 300, 6
  beam = bon = beam_tokens = bon_tokens = 0
  for _ in range(trials):
    r = vs.step_beam_search(uniform_proposer(rng), score, is_finished=is_finished, num_beams=1,
                            num_candidates=k, max_rounds=4)
    beam += r.path == TARGET
    beam_tokens += r.tokens_generated
    r = vs.best_of_n(uniform_sample_n(rng), score, n=8)
    bon += r.path == TARGET
    bon_tokens += r.tokens_generated
  assert beam / trials > 0.65 and bon / trials < 0.35
  assert beam_tokens <= bon_tokens


def test_model_adapters_run_and_score_with_the_value_head():
  config = models.tiny("qwen2", vocab_size=12, dim=16, num_heads=2, num_kv_heads=1, mlp_dim=24,
                       eos_ids=(2,), pad_id=0)
  params = vh.add_value_head(models.init_params(config, jax.random.key(0)), config.dim,
                             jax.random.key(1))
  prompt = [1, 5, 6]
  propose = vs.model_proposer(params, prompt, config=config, rng=jax.random.key(2),
                              max_step_tokens=2, temperature=1.0, top_k=0)
  scorer = vs.model_value_scorer(params, prompt, config=config)
  r = vs.step_beam_search(propose, scorer, is_finished=vs.finished_fn([2], 4), num_beams=2,
                          num_candidates=4, max_rounds=3)
  assert 0.0 < r.score < 1.0 and 1 <= len(r.path) <= 6 and r.candidates_scored > 0
  # The scorer is σ(value head) at the last token of prompt + path, whatever the padding.
  one = scorer([(7,), (7, 8, 9)])
  np.testing.assert_allclose(scorer([(7, 8, 9)]), one[1:], rtol=1e-5)
  bon = vs.best_of_n(vs.model_sample_n(params, prompt, config=config, rng=jax.random.key(3),
                                       max_new_tokens=4, temperature=1.0, top_k=0), scorer, n=4)
  assert bon.candidates_scored == 4


def test_bad_inputs():
  with pytest.raises(ValueError, match="num_beams"):
    vs.step_beam_search(enumerate_proposer, score, is_finished=is_finished, num_beams=0)
  with pytest.raises(ValueError, match="score"):
    vs.best_of_n(lambda n: [(0,)] * n, lambda ps: np.zeros(1), n=2)
  with pytest.raises(ValueError, match="value_head"):
    vs.model_value_scorer({}, [1], config=None)
