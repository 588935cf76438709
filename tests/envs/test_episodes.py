"""Episode assembly and the POAD multi-turn rollout with a scripted sampler (no model): only
action tokens are in the loss mask, rewards sit on each action's last token."""

import types

import jax
import numpy as np
import pytest

from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.envs import Segment, assemble_episodes
from tokenrl.methods import METHODS
from tokenrl.methods.poad import episode_length


def test_assemble_by_hand():
  eps = [[Segment([5, 6], True, [-1.0, -2.0], [0.5, 0.6], 1.0), Segment([9], False),
          Segment([7], True, [-3.0], [0.7], 0.25)],
         [Segment([8], True, [-0.5], [0.1], 0.0)]]
  a = assemble_episodes(eps, 5, pad_id=0)
  np.testing.assert_array_equal(a.completion, [[5, 6, 9, 7, 0], [8, 0, 0, 0, 0]])
  np.testing.assert_array_equal(a.real, [[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(a.mask, [[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(a.action_end, [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_allclose(a.rewards, [[0, 1.0, 0, 0.25, 0], [0, 0, 0, 0, 0]])
  np.testing.assert_allclose(a.logp, [[-1, -2, 0, -3, 0], [-0.5, 0, 0, 0, 0]])
  with pytest.raises(ValueError, match="do not fit"):
    assemble_episodes(eps, 3, pad_id=0)
  with pytest.raises(ValueError, match="logp"):
    assemble_episodes([[Segment([5, 6], True, [-1.0], [0.5, 0.6])]], 4, pad_id=0)


def _scripted_ctx(actions, turns=2, delimiter=";"):
  """A StepContext stand-in whose sampler returns `actions[k][row]` at turn k ('$' = EOS); the
  sampler masks up to the first stop token, as the real one does."""
  tok = CharTokenizer()
  section = METHODS["poad"].config()
  section.turns, section.delimiter = turns, delimiter
  calls = []

  def sample(prompts, *, num_samples, max_new_tokens, stop_tokens, rng):
    del rng, num_samples
    k = len(calls)
    calls.append([list(p) for p in prompts])
    n, width = len(prompts), max(len(p) for p in prompts)
    out = np.zeros((n, max_new_tokens), np.int32)
    mask = np.zeros((n, max_new_tokens), np.int32)
    for i in range(n):
      ids = [tok.eos_token_ids[0] if c == "$" else tok.encode(c, False)[0] for c in actions[k][i]]
      ids = ids[:max_new_tokens]
      stop = [j for j, t in enumerate(ids) if t in stop_tokens]
      ids = ids[:stop[0] + 1] if stop else ids
      out[i, :len(ids)], mask[i, :len(ids)] = ids, 1
    prompt = np.zeros((n, width), np.int32)
    pmask = np.zeros((n, width), np.int32)
    for i, p in enumerate(prompts):
      prompt[i, width - len(p):], pmask[i, width - len(p):] = p, 1
    return types.SimpleNamespace(tokens=out, mask=mask, logprobs=-mask * 0.5, entropy=mask * 1.0,
                                 prompt_tokens=prompt, prompt_mask=pmask)

  examples = [{"prompt": "12+7=", "answer": "19"}]
  ctx = types.SimpleNamespace(
      section=section, tokenizer=tok, G=2, examples=examples,
      prompt_ids=[tok.encode(examples[0]["prompt"])],
      cfg=types.SimpleNamespace(seed=0), step=0, rng=jax.random.key(0),
      model=types.SimpleNamespace(max_seq_len=64, pad_id=0), sample=sample)
  return ctx, calls, tok


def test_poad_rollout_masks_observations():
  # Row 0: '19;' (right) then '1;'; row 1: '20;' (wrong) then '2$' (EOS: the agent stops).
  ctx, calls, tok = _scripted_ctx([["19;", "20;"], ["1;", "2$"]], turns=2)
  data = METHODS["poad"].rollout(ctx)
  T = episode_length(ctx.section)
  assert data.mask.shape == (2, T) and data.tokens.shape[1] == data.prompt_len + T
  # Turn-2 context = prompt + action 1 + observation '<bos>19±b=' (the true result restated).
  obs0 = calls[1][0][len(ctx.prompt_ids[0]) + 3:]
  assert obs0[0] == tok.bos_id and tok.decode(obs0[1:3]) == "19"
  n_obs = len(obs0)
  np.testing.assert_array_equal(data.mask[0, :3], 1)                   # '19;'
  np.testing.assert_array_equal(data.mask[0, 3:3 + n_obs], 0)          # the observation
  np.testing.assert_array_equal(data.mask[0, 3 + n_obs:5 + n_obs], 1)  # '1;'
  assert data.mask[0].sum() == 5 and tok.decode(data.completion[0, :3]) == "19;"
  np.testing.assert_array_equal(data.segment_ids[0, data.prompt_len:data.prompt_len + 5 + n_obs], 1)
  rewards = data.extra["poad_token_rewards"]
  assert rewards[0, 2] == 1.0 and rewards[1, 2] == 0.0                 # 19 right, 20 wrong
  np.testing.assert_array_equal(data.extra["poad_action_end"][0, [2, 4 + n_obs]], 1)
  assert data.rewards[0] == rewards[0].sum()
  assert data.metrics["episode_turns"] == 2.0
  assert data.truncated.tolist() == [False, False]
  np.testing.assert_allclose(data.sampler_logp[0, :3], -0.5)
  np.testing.assert_allclose(data.sampler_logp[0, 3:3 + n_obs], 0.0)


def test_poad_rollout_eos_delimiter_and_early_stop():
  # delimiter 'eos': '19$' closes an action; row 1's 6-token action exceeds the 5-token budget
  # (truncated), so its episode ends after one turn.
  ctx, calls, tok = _scripted_ctx([["19$", "123456"], ["5$", "5$"]], turns=2, delimiter="eos")
  data = METHODS["poad"].rollout(ctx)
  assert len(calls) == 2
  assert data.truncated.tolist() == [False, True]
  assert data.metrics["episode_turns"] == 1.5
  assert data.extra["poad_token_rewards"][0, 2] == 1.0
  assert data.mask[1].sum() == 5 and data.segment_ids[1, data.prompt_len + 5:].sum() == 0
