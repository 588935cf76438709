"""Preference quickstart: a tiny Qwen2-style model, SFT warm-up on the chosen answers of the
embedded arithmetic preference pairs, then DPO against the post-SFT reference.

Pairs: prompt '12+7=', chosen '19' (the correct answer), rejected a near miss the verifier
rejects ('18', '20', '91', ...), all offline (tokenrl/data/preference.py).

Command (fresh machine, 2 CPU cores):
  tokenrl train --config configs/preference_quickstart.py --workdir runs/pref_quickstart
  (or python -c "from tokenrl.train.pref_loop import train_preference; ...")
  Other pairwise objectives: --config.rl.objective=ipo|hinge|robust, or tgdpo with
  --config.rl.tgdpo.guidance_workdir=runs/pref_quickstart, or cdpo.
Hardware: any CPU (2 cores is enough); GPU/TPU also work unchanged.
Expected result (measured 2026-11-29, 2 CPU cores shared with other jobs, seed 0): after the
  400-step warm-up (= the reference) held-out greedy accuracy 34.2%, and the reference's own
  likelihood ranks chosen over rejected on 74.8% of 512 held-out pairs; after 100 DPO steps
  the implicit reward ranks chosen first on 62.7% of them (from 0% ties), margin R^w - R^l =
  +0.047 (R^w -0.016, R^l -0.063: both fall, as the Q* paper predicts), greedy accuracy 33.6%
  (DPO on these near-miss pairs does not add accuracy; 300 steps drop it to 19%: likelihood
  displacement). 201 s wall including compilation and evaluation.
"""

from tokenrl.config import base_config


def get_config(arg=None):
  c = base_config()
  c.seed = 0
  c.model.preset = "tiny"
  c.model.family = "qwen2"
  c.model.dim = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 384
  c.model.max_seq_len = 64
  c.data.task = "arith"
  c.data.tiers = "add:1-2,sub:1-2"
  c.data.tokenizer = "char"
  c.data.batch_size = 32            # pairs per preference step
  c.data.eval_size = 512
  c.sampler.max_new_tokens = 6
  c.rl.objective = "dpo"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 10
  c.train.sft_steps = 400
  c.train.sft_batch_size = 64
  c.train.sft_learning_rate = 3e-3
  c.train.max_steps = 100           # preference steps
  c.train.checkpoint_every = 100
  c.train.eval_every = 100
  c.train.eval_num_samples = 0
  if arg == "smoke":  # a few steps of each phase, for tests and notebooks
    c.train.sft_steps = 4
    c.train.max_steps = 3
    c.train.checkpoint_every = 2
    c.optimizer.warmup_steps = 1
    c.data.eval_size = 16
    c.data.batch_size = 4
    c.train.sft_batch_size = 8
    c.rl.cdpo.ce_steps = 2
  return c
