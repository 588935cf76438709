"""A tiny trained workdir shared by the config and CLI robustness tests (one short run)."""

import pytest

from tokenrl.config import base_config


def tiny_config():
  """A run of one SFT and one RL step of a 32-wide model; row counts split over the 8 fake CPU
  devices the tests see (mesh.data = -1)."""
  c = base_config()
  c.model.dim, c.model.num_heads, c.model.num_kv_heads, c.model.mlp_dim = 32, 4, 2, 64
  c.model.max_seq_len = 64
  c.data.tiers = "add:1-1"
  c.data.batch_size, c.data.eval_size, c.data.train_size = 4, 8, 64
  c.sampler.max_new_tokens = 4
  c.rl.num_generations = 2
  c.train.sft_steps, c.train.max_steps, c.train.sft_batch_size = 1, 1, 8
  c.train.eval_num_samples = 1
  c.train.async_checkpoint = False
  c.rewards.max_workers = 1
  return c


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  from tokenrl.train.rl_loop import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("trained"))
  summary = train(tiny_config(), workdir)
  return workdir, summary
