"""MEET trainer: stage 1 changes only the control parameters (spec §9 (e)); a few real steps of
both stages with soft-token and LoRA controls."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenrl import models
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.methods import METHODS
from tokenrl.models import lora as lora_lib
from tokenrl.train import meet as meet_lib
from tokenrl.train import steps as steps_lib

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "preference_quickstart.py")
TOK = CharTokenizer()
MODEL = models.tiny("qwen2", vocab_size=TOK.vocab_size, dim=32, num_heads=2, num_kv_heads=1,
                    mlp_dim=64, num_layers=1, max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))
ROWS = [(TOK.encode("1+2="), TOK.encode("3", False) + [2], 0),
        (TOK.encode("1+2="), TOK.encode("4", False) + [2], 1),
        (TOK.encode("12+7="), TOK.encode("19", False) + [2], 0),
        (TOK.encode("12+7="), TOK.encode("91", False) + [2], 1)]


def test_control_batch_layout():
  b, P = meet_lib.control_batch(ROWS[:2], n_control=2, pad_id=0)
  assert P == 16 and b["tokens"].shape == (2, 16 + 8) and b["mask"].shape == (2, 8)
  # [pad…, slot0, slot1, <bos> 1 + 2 =] then the completion.
  np.testing.assert_array_equal(b["slots"][0, 9:12], [0, 1, -1])
  assert b["segment_ids"][0, 8] == 0 and b["segment_ids"][0, 9] == 1
  assert TOK.decode(b["tokens"][0, 11:16]) == "<bos>1+2=" and b["mask"][1].tolist()[:3] == [1, 1, 0]
  np.testing.assert_array_equal(b["control"], [0, 1])


@pytest.mark.parametrize("peft", ["prompt", "lora"])
def test_stage1_changes_only_the_controls(peft):
  theta0 = models.init_params(MODEL, jax.random.key(0))
  b, P = meet_lib.control_batch(ROWS, n_control=2 if peft == "prompt" else 0, pad_id=0)
  if peft == "prompt":
    controls = {"soft": 0.1 * jax.random.normal(jax.random.key(1), (2, 2, MODEL.dim))}
  else:
    per = [lora_lib.init_lora(theta0, MODEL, jax.random.key(c), rank=2, alpha=4.0) for c in (0, 1)]
    controls = {"lora": jax.tree.map(lambda *x: jnp.stack(x), *per)}
  before = jax.tree.map(np.asarray, controls)
  theta_before = jax.tree.map(np.asarray, theta0)
  tx = optax.sgd(0.5)
  step = meet_lib.make_meet_step(tx, config=MODEL, prompt_len=P, peft=peft, rank=2, alpha=4.0)
  state, m = step(steps_lib.create_state(controls, tx), b, theta0)
  assert np.isfinite(float(m["loss"])) and set(state.params) == set(controls)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, theta0), theta_before)
  changed = [not np.array_equal(a, np.asarray(c)) for a, c in
             zip(jax.tree.leaves(before), jax.tree.leaves(state.params))]
  assert any(changed)
  # nll_good + nll_bad = loss (the two controls' rows partition the tokens).
  assert float(m["nll_good"] + m["nll_bad"]) == pytest.approx(float(m["loss"]), rel=1e-5)


def smoke_config(peft):
  spec = importlib.util.spec_from_file_location("preference_quickstart", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.rl.objective = "meet"
  c.model.dim, c.model.mlp_dim, c.model.num_layers = 32, 64, 1
  c.train.sft_steps = 2
  c.data.eval_size = 8
  c.rl.meet.peft = peft
  c.rl.meet.stage1_steps = 2
  c.rl.meet.stage2_steps = 2
  return c


@pytest.mark.parametrize("peft", ["prompt", "lora"])
def test_train_meet_runs_both_stages(peft, tmp_path):
  summary = meet_lib.train_meet(smoke_config(peft), str(tmp_path))
  assert set(summary["evals"]) == {"init", "stage1", "stage2"}
  for ev in summary["evals"].values():
    assert 0 <= ev["accuracy_good"] <= 1 and 0 <= ev["accuracy_bad"] <= 1
    assert ev["control_gap"] == pytest.approx(ev["accuracy_good"] - ev["accuracy_bad"])
  with open(tmp_path / "metrics.jsonl") as f:
    lines = [json.loads(l) for l in f]
  assert [l["phase"] for l in lines] == ["sft"] * 2 + ["stage1"] * 2 + ["stage2"] * 2
  for line in lines[2:]:
    assert np.isfinite(line["loss"])
    for key in METHODS["meet"].metrics:
      assert np.isfinite(line[key])
  assert os.path.isfile(tmp_path / "summary.json")


def test_meet_config_validation():
  cfg = smoke_config("prompt")
  cfg.rl.meet.peft = "adapter"
  with pytest.raises(ValueError, match="rl.meet.peft"):
    meet_lib.train_meet(cfg, "/nonexistent-unused")
