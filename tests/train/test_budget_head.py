"""Fitting budget guidance's length head on a policy's own traces (tokenrl.train.budget_head)."""

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.models import transformer
from tokenrl.rollout import sample
from tokenrl.train import budget_head as tbh
from tests.eval.test_cli_eval import workdir  # noqa: F401 (fixture)

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8], [2, 3]] * 4
THINK_END = 9  # a token an untrained 16-token model writes often: traces of every length


def test_hidden_states_are_the_ones_that_predicted_each_token():
  roll = sample(PARAMS, PROMPTS[:3], config=CONFIG, rng=jax.random.key(1), max_new_tokens=6,
                temperature=1.0, stop_tokens=())
  hidden = tbh._completion_hidden(PARAMS, roll.prompt_tokens, roll.prompt_mask, roll.tokens,
                                  config=CONFIG)
  logp = jax.nn.log_softmax(transformer.unembed(PARAMS, hidden, config=CONFIG))
  taken = np.take_along_axis(np.asarray(logp), np.asarray(roll.tokens)[..., None], -1)[..., 0]
  np.testing.assert_allclose(taken, np.asarray(roll.logprobs), atol=2e-5)


def test_fit_lowers_the_heldout_nll_and_length_error():
  head, info = tbh.fit_budget_head(PARAMS, CONFIG, PROMPTS, think_end_id=THINK_END,
                                   stop_tokens=(), max_new_tokens=24, rng=jax.random.key(2),
                                   num_samples=32, steps=300, learning_rate=1e-2)
  assert info["traces"] > 200 and info["labelled_tokens"] > 2000
  # An untrained policy's remaining length is nearly memoryless (no median to learn), but its
  # law is: the held-out NLL falls well below the untrained head's.
  assert info["heldout_nll"] < info["heldout_nll_before"] - 0.3
  assert np.isfinite(info["heldout_median_abs_error"])
  assert sorted(head) == sorted(("w_alpha", "b_alpha", "w_rate", "b_rate"))


def test_a_policy_that_never_ends_its_thought_is_named():
  with pytest.raises(ValueError, match="think-end token \\(id 15\\)"):
    tbh.collect(PARAMS, CONFIG, PROMPTS[:2], think_end_id=15, stop_tokens=(), max_new_tokens=1,
                num_samples=1, rng=jax.random.key(3))


def test_saved_head_round_trips_and_shape_mismatch_is_named(tmp_path):
  from tokenrl.models import budget_head as bh
  head = bh.init_budget_head(CONFIG.dim, CONFIG.vocab_size)
  path = str(tmp_path / "head.safetensors")
  bh.save_budget_head(path, head)
  back = bh.load_budget_head(path, dim=CONFIG.dim, vocab_size=CONFIG.vocab_size)
  for k in bh.HEAD_KEYS:
    np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(head[k]))
  with pytest.raises(ValueError, match="policy has dim 64"):
    bh.load_budget_head(path, dim=64, vocab_size=CONFIG.vocab_size)


def test_tokenrl_budget_head_fits_saves_and_guides_eval(workdir, tmp_path, capsys):  # noqa: F811
  """`tokenrl budget-head`: the head file `tokenrl eval --control budget` then reads."""
  from absl import app
  from tests.eval.test_cli_eval import _cli
  from tokenrl.models import budget_head as bh
  path = workdir  # a tiny untrained arith run: it writes '#' now and then, at random
  out = str(tmp_path / "head.safetensors")
  with pytest.raises(app.UsageError, match="--num_samples must be >= 2"):
    _cli("budget-head", f"--workdir={path}")
  _cli("budget-head", f"--workdir={path}", "--num_samples=8", "--limit=32", f"--out={out}")
  got = capsys.readouterr().out
  assert "heldout_nll=" in got and f"wrote {out}" in got
  head = bh.load_budget_head(out, dim=32, vocab_size=None)
  assert sorted(head) == sorted(bh.HEAD_KEYS)
  _cli("eval", f"--workdir={path}", "--strategies=greedy", "--limit=2", "--control=budget",
       "--budget=2", f"--head={out}")
  assert "control: budget" in capsys.readouterr().out
