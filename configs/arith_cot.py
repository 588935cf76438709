"""Worked arithmetic (data.task='arith_cot'): SFT on scratchpad traces, then GRPO on the answer.

Command (fresh machine, 2 CPU cores):
  tokenrl train --config configs/arith_cot.py --workdir runs/arith_cot
  (smoke: --config configs/arith_cot.py:smoke, a few steps of each phase)
Hardware: any CPU (2 cores is enough); GPU/TPU also work unchanged.
What it does: the reasoning task of issue 16 (tokenrl/data/task_arith_cot.py). A prompt
  '37*48=' is answered by a worked trace, one step per line, '#' and the final answer:
  '37*8=296\\n37*40=1480\\n296+1480=1776\\n#1776'; 20% of the SFT traces write one step with a
  slip and redo it on a line starting with '?'. Tiers 'mul:2-3,chain:3-6' (2-3 digit products,
  chains of 3-6 operands with + - *): 1-5 steps, completions of 14-104 characters (mean 47.5,
  p90 81 over 2000 examples), so max_new_tokens 112 and a 144-token context hold every trace.
  SFT warm-up on the full traces until greedy accuracy on a 256-problem dev split reaches 30%
  (checked every 100 steps, at most 3000 steps), then 300 GRPO steps with the verifier, which
  reads the text after '#' only.
Expected result: not reached yet. Measured once (2026-12-07, 2 loaded CPU cores, SFT only, 600
  steps in 14 min): dev greedy accuracy 0 at steps 100-200, 4.7% at 300, 11% at 600; held-out
  greedy 10.9%, pass@4 14%, token accuracy 0.92. It learns, but the 30% SFT target needs more
  steps (or easier tiers) than a quickstart's few minutes; issue 16 tunes it.
"""

from tokenrl.config import base_config


def get_config(arg=None):
  c = base_config()
  c.seed = 0
  c.model.preset = "tiny"
  c.model.family = "qwen2"
  c.model.dim = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 512
  # Longest prompt 18 chars + <bos> -> a 32-token bucket; + 112 new tokens = 144. SFT rows are
  # at most 19 + 104 + <eos> = 124 tokens (bucketed to 128).
  c.model.max_seq_len = 144
  c.data.task = "arith_cot"
  c.data.tiers = "mul:2-3,chain:3-6,reflect:20"
  c.data.tokenizer = "char"
  c.data.batch_size = 16
  c.data.eval_size = 256
  c.sampler.max_new_tokens = 112
  c.rl.objective = "grpo"
  c.rl.num_generations = 8
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  # A greedy dev check decodes up to 112 tokens per problem, so it runs less often than the
  # quickstart's (every 25 steps there, 6 tokens).
  c.data.dev_size = 256
  c.train.sft_steps = 3000
  c.train.sft_target_accuracy = 0.3
  c.train.sft_check_every = 100
  c.train.sft_batch_size = 64
  c.train.sft_learning_rate = 3e-3
  c.train.max_steps = 300
  c.train.checkpoint_every = 100
  c.train.eval_every = 100
  c.train.eval_num_samples = 4
  if arg == "smoke":  # a few steps of each phase, for tests and notebooks
    c.train.sft_steps = 4
    c.train.sft_target_accuracy = 0.0
    c.train.max_steps = 3
    c.train.checkpoint_every = 2
    c.optimizer.warmup_steps = 1
    c.data.eval_size = 16
    c.data.dev_size = 0
    c.data.batch_size = 4
    c.rl.num_generations = 4
  return c
