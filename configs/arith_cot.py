"""Worked arithmetic (data.task='arith_cot'): SFT on scratchpad traces, then GRPO on the answer.

Command (fresh machine, 2 CPU cores):
  tokenrl train --config configs/arith_cot.py --workdir runs/arith_cot
  (smoke: --config configs/arith_cot.py:smoke, a few steps of each phase)
Hardware: any CPU (2 cores is enough); GPU/TPU also work unchanged.
What it does: the reasoning task of issue 16 (tokenrl/data/task_arith_cot.py). A prompt
  '37*4+9=' is answered by a worked trace, one step per line, '#' and the final answer:
  '37*4=148\n148+9=157\n#157'; 20% of the SFT traces write one step with a slip and redo it on
  a line starting with '?'. Tiers 'mul:1-2,chain:2-5,reflect:20' (1-2 digit products, chains of
  2-5 operands with + - *): 1-4 steps, 2-6 lines, completions of 8-68 characters (mean 24.6,
  p90 41 over 2000 examples; max 70 over 20000), so max_new_tokens 72 and a 104-token context
  hold every trace. SFT warm-up on the full traces until greedy accuracy on a 256-problem dev
  split reaches 35% (checked every 100 steps, at most 1500 steps), then 200 GRPO steps with the
  verifier, which reads the text after '#' only.
Expected result (measured 2026-12-07, seed 0, 2 CPU cores shared with other jobs): SFT dev
  greedy accuracy 7.8% (step 100) -> 10% -> 23% -> 31% -> 35.5% (step 500, target met; ~5 min);
  then GRPO (32 prompts x 8, AdamW 2e-4): held-out greedy accuracy (256 problems) 35.2% ->
  37.1% (50 steps) -> 37.9% (100) -> 39.8% (150) -> 39.8% (200): +4.7 points, pass@4 42.2%,
  maj@4 37.5%; training reward (mean of 20 steps) 0.22 -> 0.28. The GRPO phase took 22 min
  on cores shared with 2-3 other jobs. Measured as the SFT of one run and the GRPO of
  this config from that SFT checkpoint (model.init_workdir; the SFT phase does not read the RL
  batch or learning rate). With 16 prompts at 5e-4 (the first setting) GRPO was noisy: 35.2% ->
  28.1% -> 31.6% -> 36.7% over 200 steps. A 4-layer char model's arithmetic (it still writes
  9+2=13) is what limits it: SFT is where it learns most; RL adds a few points.
  benchmarks/test_time.py runs on this model.
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
  # Longest prompt 14 chars + <bos> -> a 16-token bucket; + 72 new tokens = 88. SFT rows are
  # at most 15 + 70 + <eos> = 86 tokens (bucketed to 96 <= 104).
  c.model.max_seq_len = 104
  c.data.task = "arith_cot"
  c.data.tiers = "mul:1-2,chain:2-5,reflect:20"
  c.data.tokenizer = "char"
  c.data.batch_size = 32
  c.data.eval_size = 256
  c.sampler.max_new_tokens = 72
  c.rl.objective = "grpo"
  c.rl.num_generations = 8
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  # A greedy dev check decodes up to 72 tokens per problem, so it runs less often than the
  # quickstart's (every 25 steps there, 6 tokens).
  c.data.dev_size = 256
  c.train.sft_steps = 1500
  c.train.sft_target_accuracy = 0.35
  c.train.sft_check_every = 100
  c.train.sft_batch_size = 64
  c.train.sft_learning_rate = 3e-3
  c.train.max_steps = 200
  c.train.checkpoint_every = 50
  c.train.eval_every = 50
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
