"""Greedy sampling equals transformers' `generate` greedy on the same checkpoint."""

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.models.hf_fixtures import build_hf_model  # noqa: E402
from tokenrl import models  # noqa: E402
from tokenrl.rollout import sample  # noqa: E402

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("form", ["list", "array_and_mask"])
@pytest.mark.parametrize("case", ["qwen2_bias_gqa4", "gemma3_sliding"])
def test_greedy_equals_hf_generate(case, form, tmp_path):
  import torch
  model = build_hf_model(case, seed=3)
  model.save_pretrained(str(tmp_path))
  config, params = models.load_hf(str(tmp_path))
  # Rows 1 and 3 start with token 0: config.pad_id here (qwen2's config.json has no
  # pad_token_id, gemma3's says 0) and a real token all the same.
  prompts = [[5, 6, 7, 8, 9], [0, 10, 11], [12, 13, 14, 15, 16, 17, 18], [0, 0, 4]]
  width = max(map(len, prompts))
  ids = np.full((len(prompts), width), config.pad_id, np.int64)
  mask = np.zeros((len(prompts), width), np.int64)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = p
    mask[i, width - len(p):] = 1
  eos = 9  # a frequent-enough id so some rows stop early
  given = dict(prompts=prompts) if form == "list" else dict(prompts=ids, prompt_mask=mask)
  out = sample(params, **given, config=config, rng=jax.random.key(0), max_new_tokens=10,
               temperature=0.0, stop_tokens=(eos,))
  with torch.no_grad():
    hf = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        do_sample=False, max_new_tokens=10, eos_token_id=eos,
                        pad_token_id=config.pad_id, top_k=None, top_p=None, temperature=None)
  hf_new = hf[:, width:].numpy()
  ours, ours_mask = np.asarray(out.tokens), np.asarray(out.mask)
  for row in range(len(prompts)):
    n = int(ours_mask[row].sum())
    np.testing.assert_array_equal(ours[row, :n], hf_new[row, :n], err_msg=f"{case} row {row}")
