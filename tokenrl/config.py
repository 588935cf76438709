"""The locked base config: every field, its default, one comment each.

Experiment files in `configs/` start from `base_config()` and override fields; the CLI loads
them with `ml_collections.config_flags`, so `--config.rl.objective=dapo` works and a misspelled
key fails at start-up with the key named. Code reads fields directly, never `.get(key, default)`.
"""

from __future__ import annotations

import ml_collections

from tokenrl.methods.config import rl_config
from tokenrl.optim.builder import optimizer_config


def model_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = "tiny"         # tokenrl.models.PRESETS name; ignored when hf_path is set
  c.hf_path = ""            # local Hugging Face folder (config.json + safetensors); "" = preset
  c.init_workdir = ""       # start from the latest params of this tokenrl workdir ("" = off)
  c.dtype = "float32"       # param dtype: float32 | bfloat16 (logits/log-probs accumulate in f32)
  c.remat = False           # rematerialize each layer in the backward pass
  # Shape of the 'tiny' preset (vocab comes from the tokenizer): a model trained from scratch.
  c.family = "qwen2"        # llama | qwen2 | qwen3 | gemma3
  c.dim = 128               # D
  c.num_layers = 2          # L
  c.num_heads = 4           # Q
  c.num_kv_heads = 2        # K
  c.mlp_dim = 384           # F
  c.max_seq_len = 256       # longest prompt + completion
  # Rollout (prefill + decode) attention; training steps always use full attention.
  c.attention = "full"      # full | tokenselect (TokenSelect token-level KV selection)
  c.tokenselect_top_k = 2048      # selected candidate tokens per step (reference default)
  c.tokenselect_n_init = 128      # always-kept initial tokens
  c.tokenselect_n_local = 512     # always-kept most recent tokens
  c.tokenselect_chunk_size = 512  # prefill chunk (queries sharing one selection)
  c.tokenselect_threshold = 0.9   # Selection Cache: reuse while cos(query, anchor) >= this
  c.tokenselect_cache = True      # enable the Selection Cache
  return c


def data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "arith"          # embedded (tokenrl/data/tasks.py): arith | sort | copy | countdown |
                            # hidden_length | arith_cot; gsm8k (TFDS) | jsonl
  c.tiers = ""              # task difficulty, e.g. 'add:1-2,sub:1-2' ("" = the task's default)
  c.jsonl_path = ""         # {prompt, answer} lines when task = 'jsonl'
  c.preference_jsonl_path = ""  # {prompt, chosen, rejected} lines; "" = embedded pairs of task
  c.tfds_data_dir = ""      # TFDS data_dir for gsm8k ("" = $TFDS_DATA_DIR or the TFDS default)
  c.tokenizer = "char"      # 'char' (built-in) or a folder with tokenizer.json; "" = the model's
  c.chat_template = False   # render prompts with the tokenizer's chat template
  c.train_size = 20_000     # embedded tasks: training examples drawn from the seed
  c.eval_size = 256         # held-out examples used for accuracy / pass@k
  c.dev_size = 0            # training-split examples kept out of training (SFT early stop); 0 = none
  c.batch_size = 16         # B: prompts per RL step
  c.max_prompt_len = 32     # longer prompts are an error, never truncated
  return c


def sampler_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.max_new_tokens = 8      # T: completion tokens per rollout
  c.top_k = 0               # 0 = off
  c.top_p = 1.0             # 1.0 = off
  c.speculative = speculative_config()
  c.control = control_config()
  return c


CONTROL_METHODS = ("none", "cyclic_reflex", "budget", "cntp", "soft_thinking")
# sampler.control.method values that are decoders of their own, not logit processors: their
# output law has no usable per-token log-prob (CNTP's trial selection; Soft Thinking's concept
# tokens), so they are for `tokenrl eval` / `tokenrl sample` only, refused for training.
EVAL_ONLY_CONTROLS = ("cntp", "soft_thinking")


def control_config() -> ml_collections.ConfigDict:
  """Test-time controls (docs: README "Test-time control"; spec decoding-and-test-time §9, §10,
  §13, §14). They change the sampled law: evaluation and sampling by default; an RL run that
  enables a logit processor (cyclic_reflex, budget) samples from the controlled law (its
  log-probs are of that law, so the update is on-policy for it, not for the plain policy). The
  decoders cntp and soft_thinking (EVAL_ONLY_CONTROLS) have no such log-prob: `tokenrl eval` /
  `tokenrl sample` only."""
  c = ml_collections.ConfigDict()
  c.method = 'none'         # none | cyclic_reflex | budget (logit processors) | cntp |
                            # soft_thinking (decoders: eval / sample only, refused for training)
  c.think_end = '#'         # the end-of-thinking string (one token); controls stop after it
                            # (soft_thinking: the token that closes the thought; required)
  c.reflection = '?'        # cyclic_reflex: comma-separated reflection strings (one token each)
  c.amplitude = 3.0         # cyclic_reflex: A, logits (raw, before the temperature)
  c.period = 100            # cyclic_reflex: T, generated tokens per cycle
  c.shift = 0.0             # cyclic_reflex: phase shift s, fraction of a period
  c.newline = '\n'          # budget: guidance fires on the first token after this string
  c.budget = 0              # budget: thinking tokens allowed (<= 0: unguided)
  c.head = ''               # budget: the remaining-length head (safetensors file from
                            # `tokenrl budget-head`)
  # budget: the reference's validity mask, g_v = 0 unless rate >= min_rate, alpha > min_alpha and
  # the Gamma mode (as tokens) >= min_mode. Its min_rate 10 was set for R1 traces (z = log(L+1)
  # ~ 5-9); on short traces (z ~ 1-3) it masks the likely continuations: 0 turns it off.
  c.min_rate = 10.0
  c.min_alpha = 1.0
  c.min_mode = 0.9
  c.punctuation = r'.,\,,\n,?,!,:,;,)'  # cntp: strings that close a trial, one token each,
                            # comma-separated; escapes: \, = ',', \n = newline, \t = tab,
                            # \\ = '\'; '' = none (trials end at a stop token or the cap). The
                            # reference's set less ']', '}' (not in the char vocabulary)
  c.max_trials = 10         # cntp: N_max, trials at a maximal-entropy step (1 = never branch)
  c.h_lo = 0.01             # cntp: entropy (nats) at or below which a step takes one token
  c.h_hi = 1.5              # cntp: entropy (nats) at or above which a step runs N_max trials
  c.max_trial_tokens = 16   # cntp: K, the most tokens per trial (static shapes need a cap)
  c.max_topk = 10           # soft_thinking: K, tokens mixed per concept token (1 = greedy thinking)
  c.min_p = 0.001           # soft_thinking: thinking min-p, relative to the top probability
                            # (0 = off)
  c.cold_stop_entropy = 0.01  # soft_thinking: Cold Stop entropy threshold τ, nats (0 = off)
  c.cold_stop_length = 256  # soft_thinking: Cold Stop k_len, consecutive steps with H < τ
  return c


# sampler.speculative.method values: lossless ones may sample RL rollouts (their output law is the
# policy's); lossy ones change what is sampled and are for `tokenrl eval` / `tokenrl sample` only.
LOSSLESS_SPECULATIVE = ("none", "exact", "specdec_pp", "spectr", "del")
LOSSY_SPECULATIVE = ("skipdecode", "r2r")
SPECULATIVE_DRAFTS = ("ngram", "layers", "model")


def speculative_config() -> ml_collections.ConfigDict:
  """Speculative decoding of rollouts (docs: README "Decoding"; spec decoding-and-test-time §2-§7)."""
  c = ml_collections.ConfigDict()
  c.method = 'none'         # none | exact | specdec_pp | spectr | del (lossless) | skipdecode | r2r (lossy)
  c.draft = 'ngram'         # exact/specdec_pp/spectr draft: ngram (prompt lookup) | layers (the
                            # policy's first draft_layers layers) | model (draft_model)
  c.num_draft_tokens = 4    # K: drafted tokens per verify pass (specdec_pp: the most, K_max)
  c.ngram = 3               # ngram draft: match the last ngram-1 .. 1 tokens
  c.draft_layers = 2        # layers draft: exit after this many layers (del: the deepest exit)
  c.draft_model = ''        # model draft: HF folder or tokenrl workdir (same vocabulary)
  c.head = ''               # specdec_pp: acceptance-head workdir (configs/specdec_pp.py)
  c.threshold = 0.3         # specdec_pp: stop drafting once P(some draft rejected) > threshold
  c.min_draft_tokens = 2    # specdec_pp: never stop before this many drafted tokens (K_min)
  c.num_drafts = 4          # spectr: i.i.d. drafts verified together (k)
  return c


def reward_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.fns = ''                # reward functions, comma-separated: built-in names (task, math, exact,
                            # format, countdown) or 'module:function'; '' = the data task's verifier
  c.weights = ''            # one weight per rewards.fns entry, comma-separated; '' = all 1.0
  c.format_weight = 0.0     # weight of the format reward added to the task reward
  c.timeout_s = 5.0         # per-call timeout; a timeout scores 0 and is counted
  c.max_workers = 2         # reward worker processes
  return c


def train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.max_steps = 200         # RL steps
  c.sft_steps = 0           # supervised warm-up steps on (prompt, answer) before RL (the most)
  c.sft_target_accuracy = 0.0  # end the warm-up once greedy dev accuracy >= this (0 = all steps)
  c.sft_check_every = 50    # SFT steps between dev-accuracy checks (with sft_target_accuracy)
  c.sft_batch_size = 64     # sequences per SFT step
  c.sft_learning_rate = 3e-3  # SFT warm-up learning rate (AdamW, constant after warm-up)
  c.micro_batch_size = 0    # sequences per gradient micro-batch; 0 = the whole minibatch
  c.mini_batches = 1        # optimizer steps per rollout batch per iteration
  c.log_every = 10          # steps between progress/metric flushes (metrics.jsonl every step)
  c.eval_every = 0          # steps between held-out evaluations; 0 = start and end only
  c.eval_num_samples = 4    # k for pass@k at evaluation
  c.checkpoint_every = 50   # steps between orbax checkpoints; 0 = only at the end
  c.keep_checkpoints = 2    # checkpoints kept on disk
  c.async_checkpoint = True  # save in the background while training continues
  c.check_memory = True     # run `tokenrl plan`'s fits check before allocating anything
  return c


def mesh_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = -1               # data-parallel axis size; -1 = all remaining devices
  c.fsdp = 1                # fully-sharded axis size (params/optimizer state sharded)
  c.tensor = 1              # tensor-parallel axis size (heads / MLP / vocab)
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field of a tokenrl run; locked so unknown keys are errors."""
  c = ml_collections.ConfigDict()
  c.seed = 0                # one seed for init, data order and sampling
  c.model = model_config()
  c.data = data_config()
  c.sampler = sampler_config()
  c.rewards = reward_config()
  c.rl = rl_config()
  c.optimizer = optimizer_config()
  c.train = train_config()
  c.mesh = mesh_config()
  c.lock()
  return c


def hf_gsm8k_config(hf_path: str, *, hardware: str) -> ml_collections.ConfigDict:
  """GRPO on GSM8K (TFDS) for a local Hugging Face instruct model, on 'gpu' (one) or 'tpu' (v5e-8).

  Shared by configs/gsm8k_*.py. bf16 params, remat, the model's tokenizer and chat template,
  512 new tokens, 16 prompts x 8 samples per step, AdamW 1e-6 (TRL/verl's GRPO default).
  """
  if hardware not in ("gpu", "tpu"):
    raise ValueError(f"hardware must be 'gpu' or 'tpu', got {hardware!r}")
  c = base_config()
  c.model.hf_path = hf_path
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.data.task = "gsm8k"
  c.data.tokenizer = ""  # the model folder's tokenizer.json
  c.data.chat_template = True
  c.data.max_prompt_len = 512
  c.data.batch_size = 16
  c.data.eval_size = 500
  c.sampler.max_new_tokens = 512
  c.rl.objective = "grpo"
  c.rl.num_generations = 8
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-6
  c.train.max_steps = 500
  c.train.micro_batch_size = 16
  c.train.checkpoint_every = 50
  c.train.eval_every = 100
  c.train.eval_num_samples = 8
  if hardware == "tpu":  # v5e-8: 8 chips, params and optimizer state FSDP-sharded
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
  else:
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  return c
