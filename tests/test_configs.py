"""Every experiment config loads, keeps the locked base schema, and rejects unknown keys."""

import glob
import importlib.util
import os

import pytest

from tokenrl.config import base_config
from tokenrl.methods.config import resolve_objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
ARGS = {"quickstart.py": [None, "smoke"], "qwen3_8b_v5e64.py": ["", "/models/x"],
        "qwen2_5_1_5b_8gpu.py": ["", "/models/x"], "preference_quickstart.py": [None, "smoke"],
        "palace.py": [None, "smoke", "shared", "smoke,shared"], "specdec_pp.py": [None, "smoke"],
        "early_exit.py": [None, "smoke"], "arith_cot.py": [None, "smoke"]}


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _keys(cfg, prefix=""):
  out = set()
  for k, v in cfg.items():
    out |= _keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k}
  return out


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_matches_base_schema(path):
  module = _load(path)
  assert "expected result" in module.__doc__.lower()
  for arg in ARGS.get(os.path.basename(path), ["gpu,/models/x", "tpu,/models/x"]):
    cfg = module.get_config(arg)
    assert _keys(cfg) == _keys(base_config())
    resolve_objective(cfg.rl)
    with pytest.raises(AttributeError):
      cfg.train.max_stepz = 3  # locked: a misspelled key is an error
