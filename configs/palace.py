"""PALACE: a tiny hidden-length estimator, SFT warm-up then GRPO on the count reward.

Command (fresh machine, 2 CPU cores):
  tokenrl train --config configs/palace.py --workdir runs/palace
  tokenrl audit palace --workdir runs/palace --out runs/palace/palace.png
Variants: `configs/palace.py:shared` (no domain tag: one shared estimator), `:smoke` and
  `:smoke,shared` (a few steps of each phase, for tests).
Hardware: any CPU (2 cores is enough); GPU/TPU also work unchanged.
What it does: the embedded task hidden_length (tokenrl/data/task_hidden_length.py): visible
  pairs from two domains (math: addition, code: sorting) whose hidden trace length is a noisy
  (±10%) linear function of the digit count with a different scale per domain. The estimator
  reads 'math:12+345=357;' (the domain tag: data.tiers tag:1; at audit time a router picks it)
  and writes '<count>m</count>'. 200 SFT steps on the true counts, then 100 GRPO steps
  (rl.objective=palace) with the reward max(0, 1 − RE). Evaluation accuracy is acc@0.1.
Expected result (measured 2026-12-07 with benchmarks/analysis_palace.py, which runs these
  settings as an SFT run and a GRPO run from it, seeds 0 and 1, 256 held-out pairs, greedy,
  router-chosen tags): mean relative error 0.067 -> 0.056 and acc@0.1 0.77 -> 0.90 from SFT to
  GRPO (the task's noise allows at best 0.050 and 0.965; 100 more SFT steps instead of GRPO:
  0.066 and 0.78). :shared ends at 0.064 and 0.88. Wall time 4.5-7 min on 2 CPU cores shared with
  other jobs (compile and evaluations included); results: benchmarks/results/analysis_palace.json.
"""

from tokenrl.config import base_config

TIERS = "math:1-4,code:3-8"


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  unknown = sorted(set(parts) - {"smoke", "shared"})
  if unknown:
    raise ValueError(f"configs/palace.py: unknown variant(s) {unknown}; use "
                     "configs/palace.py[:smoke][,shared]")
  c = base_config()
  c.seed = 0
  c.model.preset = "tiny"
  c.model.family = "qwen2"
  c.model.dim = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 384
  c.model.max_seq_len = 64           # prompt bucket 32 + '<count>NNN</count>' + EOS (19)
  c.data.task = "hidden_length"
  c.data.tiers = TIERS if "shared" in parts else TIERS + ",tag:1"
  c.data.tokenizer = "char"
  c.data.batch_size = 16
  c.data.eval_size = 256
  c.data.max_prompt_len = 32
  c.sampler.max_new_tokens = 20
  c.rl.objective = "palace"
  c.rl.palace.reward = "linear"
  c.rl.num_generations = 8
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-4
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 10
  # SFT on noisy targets plateaus early (per-token loss ~0.19 from step ~100 on); more of it
  # does not lower the error (the benchmark's longer-SFT control), GRPO on RE does.
  c.train.sft_steps = 200
  c.train.sft_batch_size = 64
  c.train.sft_learning_rate = 3e-3
  c.train.max_steps = 100
  c.train.checkpoint_every = 50
  c.train.eval_every = 50
  c.train.eval_num_samples = 0
  if "smoke" in parts:  # a few steps of each phase, for tests and notebooks
    c.train.sft_steps = 4
    c.train.max_steps = 3
    c.train.checkpoint_every = 2
    c.optimizer.warmup_steps = 1
    c.data.eval_size = 16
    c.data.batch_size = 4
    c.rl.num_generations = 4
  return c
