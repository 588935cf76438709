"""LayerSkip early-exit training: make a model's first layers a usable self-drafter (spec §6).

Command (fresh machine, 2 CPU cores):
  tokenrl train --config configs/early_exit.py --workdir runs/early_exit
  then draft with its first layers: --config.model.init_workdir=runs/early_exit
  --config.sampler.speculative.method=exact --config.sampler.speculative.draft=layers
  --config.sampler.speculative.draft_layers=1 (or method=del).
A zoo model instead of the preset: --config.model.hf_path=/models/Llama-3.2-1B-Instruct
  --config.data.tokenizer= --config.train.sft_steps=0 (plus the model's data/lengths).
Variants: `configs/early_exit.py:smoke` (a few steps of each phase, for tests).
Hardware: any CPU (2 cores is enough); GPU/TPU also work unchanged.
What it does: a 4-layer Qwen2-style model (D=128) learns 1-2 digit addition/subtraction by 300
  plain SFT steps (its intermediate layers are then poor exits), then 300 steps of the LayerSkip
  recipe (tokenrl/train/early_exit.py): the early-exit loss at every layer through the shared
  final norm + unembedding with scales ∝ ℓ(ℓ+1)/2 (sum_l, e_scale 1), and per-row layer dropout
  rising exponentially with depth to p_max = 0.1 at the last layer; AdamW 1e-3, cosine.
Expected result (measured 2026-12-07, seed 0, 2 CPU cores shared with other jobs; 256 held-out
  problems, teacher-forced answer tokens). Agreement of exit ℓ's greedy token with the full
  model's (the greedy acceptance rate of an ℓ-layer self-drafter), exits 1 / 2 / 3:
    after the 300 SFT steps                    0.48 / 0.65 / 0.79
    + 300 early-exit steps (this config)       0.54 / 0.79 / 0.93   (exit CE 1.67 / 0.92 / 0.76)
    + 300 plain steps instead (control)        0.49 / 0.66 / 0.85   (exit CE 1.96 / 1.22 / 0.90)
  (control: --config.rl.early_exit.e_scale=0 --config.rl.early_exit.layer_dropout=0),
  while the full model is unharmed: last-layer token accuracy 0.710 vs 0.717 for the control,
  CE 0.769 vs 0.819. Wall time 227 s (control 169 s; compiles included).
"""

from tokenrl.config import base_config


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"smoke"}:
    raise ValueError(f"configs/early_exit.py: unknown variant(s) {sorted(set(parts) - {'smoke'})};"
                     " use configs/early_exit.py[:smoke]")
  c = base_config()
  c.seed = 0
  c.model.preset = "tiny"
  c.model.family = "qwen2"
  c.model.dim = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 384
  c.model.max_seq_len = 64
  c.data.task = "arith"
  c.data.tiers = "add:1-2,sub:1-2"
  c.data.tokenizer = "char"
  c.data.eval_size = 256
  c.sampler.max_new_tokens = 6
  c.rl.objective = "early_exit"
  c.rl.early_exit.loss_scale = "sum_l"
  c.rl.early_exit.e_scale = 1.0
  c.rl.early_exit.curriculum = "none"
  c.rl.early_exit.layer_dropout = 0.1
  c.rl.early_exit.dropout_scale = "exp"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 10
  c.optimizer.weight_decay = 0.0
  c.train.sft_steps = 300           # plain SFT first (a preset starts from random weights)
  c.train.sft_batch_size = 64       # sequences per step of both phases
  c.train.sft_learning_rate = 3e-3
  c.train.max_steps = 300           # early-exit steps
  c.train.checkpoint_every = 100
  c.train.eval_every = 100
  if "smoke" in parts:
    c.model.dim = 64
    c.model.mlp_dim = 128
    c.model.num_layers = 3
    c.train.sft_steps = 2
    c.train.max_steps = 3
    c.train.checkpoint_every = 2
    c.train.eval_every = 0
    c.train.sft_batch_size = 16
    c.optimizer.warmup_steps = 1
    c.data.eval_size = 16
  return c
