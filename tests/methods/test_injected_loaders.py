"""Methods reach other runs' models and the loop's prompt encoding only through what the train
layer passes them (StepContext / PrefContext callables), never by importing tokenrl.train
(tests/test_layers.py): the callables are used, their results reach the method, and a missing
one is an error naming the config key or the context field."""

import types

import ml_collections
import numpy as np
import pytest

from tokenrl.methods import METHODS
from tokenrl.methods import rto


class _Model:
  """Stands in for a ModelConfig (only equality and vocab_size are read)."""

  def __init__(self, name, vocab_size=10):
    self.name, self.vocab_size = name, vocab_size

  def __eq__(self, other):
    return self.name == other.name

  def __hash__(self):
    return hash(self.name)


def _pctx(section, load_params, model="m"):
  return types.SimpleNamespace(section=ml_collections.ConfigDict(section),
                               run=types.SimpleNamespace(model=_Model(model)),
                               load_params=load_params, aux={})


def test_tgdpo_takes_the_guidance_model_from_pctx_load_params():
  calls = []

  def load(path):
    calls.append(path)
    return _Model("m"), {"w": np.ones(2)}

  pctx = _pctx({"guidance_workdir": "runs/dpo"}, load)
  METHODS["tgdpo"].prepare(pctx)
  assert calls == ["runs/dpo"]
  np.testing.assert_array_equal(pctx.aux["guidance_params"]["w"], np.ones(2))
  with pytest.raises(ValueError, match=r"rl\.tgdpo\.guidance_workdir='runs/dpo': its model"):
    METHODS["tgdpo"].prepare(_pctx({"guidance_workdir": "runs/dpo"},
                                    lambda p: (_Model("other"), {})))


def test_cdpo_takes_given_positive_and_negative_models_from_pctx_load_params():
  models = {"runs/pos": {"w": 1}, "runs/neg": {"w": -1}}
  pctx = _pctx({"positive_workdir": "runs/pos", "negative_workdir": "runs/neg"},
               lambda path: (_Model("m"), models[path]))
  METHODS["cdpo"].prepare(pctx)
  assert pctx.aux == {"positive": {"w": 1}, "negative": {"w": -1}}


def test_rto_loads_a_dpo_workdir_through_load_params_once_and_drops_the_value_head(tmp_path):
  calls = []

  def load(path):
    calls.append(path)
    return _Model("dpo"), {"embed": np.zeros(3), "value_head": {"w": np.ones(1)}}

  section = ml_collections.ConfigDict({"dpo_workdir": str(tmp_path), "dpo_hf_path": ""})
  try:
    model, params = rto.load_dpo_model(section, load)
    again = rto.load_dpo_model(section, load)
  finally:
    rto._DPO_MODELS.clear()
  assert calls == [str(tmp_path)]          # cached per path: loaded once per process
  assert model == _Model("dpo") and set(params) == {"embed"}
  assert again[1] is params
  with pytest.raises(ValueError, match=r"rl\.rto\.dpo_workdir=.*StepContext\.load_params"):
    rto.load_dpo_model(section, None)


def test_rmt_rollout_needs_the_loops_prompt_encoder():
  ctx = types.SimpleNamespace(section=None, tokenizer=None, G=2, encode_prompts=None)
  with pytest.raises(ValueError, match=r"StepContext\.encode_prompts"):
    METHODS["rmt"].rollout(ctx)
