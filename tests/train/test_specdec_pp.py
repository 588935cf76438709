"""SpecDec++ head training with real tiny models (tokenrl/train/specdec_pp.py): the head's
held-out BCE falls below the untrained head's and its predictions correlate with the true
acceptance; the label pipeline's invariants; `tokenrl train` dispatches the config, and a run
killed mid-way and rerun ends exactly where the uninterrupted run does."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tokenrl import models
from tokenrl.train import specdec_pp as sdt
from tokenrl.train.checkpoint import Checkpointer

from tests.configs_util import load_config


def _cfg(**fields):
  """configs/specdec_pp.py:smoke shrunk for CPU tests (same shapes in every test: one compile)."""
  c = load_config("specdec_pp", "smoke")
  c.model.dim, c.model.mlp_dim = 64, 128
  c.rl.specdec_pp.draft_dim, c.rl.specdec_pp.draft_mlp_dim = 32, 64
  c.data.batch_size = 16
  c.data.eval_size = 32
  c.rl.specdec_pp.eval_prompts = 32
  c.train.sft_batch_size = 32
  c.train.async_checkpoint = False
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 2
  for k, v in fields.items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


@pytest.mark.slow
def test_head_learns_acceptance(tmp_path):
  # w = 1: the training loss is the held-out soft BCE itself (w = 6 deliberately biases ĥ
  # down, so its BCE is not what it minimises; its weighted loss is checked in the next test).
  cfg = _cfg(**{"train.sft_steps": 30, "rl.specdec_pp.draft_sft_steps": 10, "train.max_steps": 40,
                "train.checkpoint_every": 0, "rl.specdec_pp.rejection_weight": 1.0})
  s = sdt.train_specdec_pp(cfg, str(tmp_path))
  assert s["heldout_bce_untrained"] == pytest.approx(np.log(2), abs=1e-6)  # zero output layer
  assert s["heldout_bce"] < s["heldout_bce_untrained"] - 0.02, s
  assert s["heldout_corr"] > 0.2, s
  assert s["heldout_positions"] >= 50 and 0.0 < s["heldout_label_mean"] < 1.0
  # The saved head is the trained one and loads back for sampler.speculative.head.
  head, info = sdt.load_accept_head(str(tmp_path))
  assert info["num_blocks"] == 3 and info["shared_blocks"] and info["dim"] == 32
  assert head["blocks"]["w"].shape == (1, 32, 32) and head["out"]["w"].shape == (32, 2)
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  state, _ = ckpt.restore_raw()
  ckpt.close()
  for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(state["head"]["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileNotFoundError, match="acceptance head"):
    sdt.load_accept_head(str(tmp_path / "nowhere"))


def test_acceptance_batch_invariants():
  cfg = _cfg()
  V = 20
  target = models.tiny("qwen2", vocab_size=V, dim=32, num_layers=2, mlp_dim=64)
  draft = models.tiny("qwen2", vocab_size=V, dim=16, num_layers=1, mlp_dim=32)
  tp = models.init_params(target, jax.random.key(0))
  dp = models.init_params(draft, jax.random.key(1))
  rng = np.random.default_rng(0)
  N, P, T = 64, 5, 6
  prompt = jnp.asarray(rng.integers(0, V, (N, P)), jnp.int32)
  pmask = jnp.ones((N, P), jnp.int32).at[:3, :2].set(0)
  x = jnp.asarray(rng.integers(0, V, (N, T)), jnp.int32)
  xmask = jnp.asarray(np.arange(T)[None] < rng.integers(1, T + 1, (N, 1)), jnp.int32)
  kw = dict(target_config=target, draft_config=draft, temperature=1.0, top_k=0, top_p=1.0,
            mix_ratio=0.15)
  out = sdt.acceptance_batch(tp, dp, prompt, pmask, x, xmask, jax.random.key(2), **kw)
  # Labels are min(1, p/q) of the draft's own token; loss only where z holds a Y inside X.
  np.testing.assert_allclose(out["labels"],
                             np.minimum(1.0, np.exp(out["target_logp"] - out["draft_logp"])),
                             rtol=1e-5)
  lm = np.asarray(out["loss_mask"]).astype(bool)
  assert not lm[np.asarray(xmask) == 0].any()
  np.testing.assert_array_equal(np.asarray(out["z"])[lm], np.asarray(out["y"])[lm])
  np.testing.assert_array_equal(np.asarray(out["z"])[~lm], np.asarray(x)[~lm])
  # E_Y~q[min(1, p/q)] = Σ min(p, q) = 1 − TV(p, q): the mean label over many draws of Y at the
  # first response position matches the exact overlap of the two processed distributions.
  full = jnp.concatenate([prompt, x], axis=1)
  seg = jnp.concatenate([pmask, jnp.ones_like(x)], axis=1)
  lp = sdt.processed_logprobs(sdt._completion_logits(tp, full, seg, P, target)[:, 0],  # pylint: disable=protected-access
                              temperature=1.0, top_k=0, top_p=1.0)
  lq = sdt.processed_logprobs(sdt._completion_logits(dp, full, seg, P, draft)[:, 0],  # pylint: disable=protected-access
                              temperature=1.0, top_k=0, top_p=1.0)
  overlap = np.minimum(np.exp(lp), np.exp(lq)).sum(-1)                     # [N]
  draws = np.stack([np.asarray(sdt.acceptance_batch(tp, dp, prompt, pmask, x, xmask,
                                                    jax.random.key(100 + i), **kw)["labels"][:, 0])
                    for i in range(40)])
  assert abs(draws.mean() - overlap.mean()) < 0.03, (draws.mean(), overlap.mean())
  # top-k: Y is always inside the draft's top-k, and a Y outside the target's top-k scores 0.
  k1 = sdt.acceptance_batch(tp, dp, prompt, pmask, x, xmask, jax.random.key(3),
                            **{**kw, "top_k": 1})
  np.testing.assert_array_equal(np.asarray(k1["draft_logp"]), 0.0)     # q is one-hot
  agree = np.asarray(k1["target_logp"]) == 0.0
  np.testing.assert_array_equal(np.asarray(k1["labels"]), agree.astype(np.float32))
  assert cfg.rl.specdec_pp.rejection_weight == 6.0   # the spec default stays the config's


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k != "step_seconds"} for l in f if l.strip()]


def _final_state(workdir):
  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  args = ocp.args.Composite(state=ocp.args.StandardRestore())
  state = ckpt.manager.restore(step, args=args).state
  ckpt.close()
  return step, state


@pytest.mark.slow
def test_tokenrl_train_runs_and_resumes(tmp_path, monkeypatch):
  from tokenrl.train.rl_loop import train   # what `tokenrl train` calls
  # One warm-up phase (the draft's) before the head: resuming rebuilds the phase chain.
  cfg = _cfg(**{"train.sft_steps": 0, "rl.specdec_pp.draft_sft_steps": 1, "train.max_steps": 3,
                "train.checkpoint_every": 1})
  straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
  s = train(cfg, straight)
  assert s["objective"] == "specdec_pp" and s["steps"] == 4 and s["head_steps"] == 3
  assert [l["phase"] for l in _lines(straight)] == ["draft_sft", "head", "head", "head"]
  assert os.path.isfile(os.path.join(straight, "accept_head", "head.safetensors"))
  # Kill the run inside the head phase (after the checkpoint of step 2), rerun it: the same end.
  make = sdt.make_head_step
  calls = []

  def crashing(*a, **kw):
    step = make(*a, **kw)

    def run(state, batch):
      calls.append(1)
      if len(calls) == 2:
        raise KeyboardInterrupt
      return step(state, batch)
    return run

  monkeypatch.setattr(sdt, "make_head_step", crashing)
  with pytest.raises(KeyboardInterrupt):
    train(cfg, broken)
  monkeypatch.setattr(sdt, "make_head_step", make)
  s2 = train(cfg, broken)
  assert _lines(broken) == _lines(straight)
  (g1, a), (g2, b) = _final_state(straight), _final_state(broken)
  assert g1 == g2 == 4
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert s2["heldout_bce"] == s["heldout_bce"]
