"""The main job on an FSDP x tensor mesh = on the data-parallel mesh: the train loop's sharded
state, steps, rollouts (decode layout resharded) and evaluation give the same numbers."""

import json

import numpy as np
import pytest

from tests.train.mp_train_worker import smoke_config
from tokenrl.train.rl_loop import train


def _run(tmp_path, name, mesh):
  cfg = smoke_config()
  cfg.train.sft_steps, cfg.train.max_steps = 3, 3
  cfg.train.eval_num_samples = 0
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
  summary = train(cfg, str(tmp_path / name))
  with open(tmp_path / name / "metrics.jsonl") as f:
    return summary, [json.loads(l) for l in f]


@pytest.mark.slow
def test_fsdp_tensor_mesh_equals_data_parallel(tmp_path):
  s_dp, dp = _run(tmp_path, "dp", (8, 1, 1))
  s_ft, ft = _run(tmp_path, "ft", (1, 2, 4))
  assert [m["phase"] for m in ft] == ["sft"] * 3 + ["rl"] * 3
  for a, b in zip(dp, ft):
    for key in ("loss", "grad_norm", "reward", "completion_length", "token_accuracy"):
      if key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=2e-4, atol=1e-6, err_msg=f"{key} @ {a['step']}")
  assert s_ft["final_accuracy"] == s_dp["final_accuracy"]
