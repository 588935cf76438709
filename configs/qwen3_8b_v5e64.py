"""GRPO on GSM8K with Qwen3-8B on a TPU v5e-64 pod slice (16 hosts x 4 chips): FSDP x tensor.

Commands (from your workstation; see launch/README.md):
  tokenrl plan --config configs/qwen3_8b_v5e64.py --devices v5e-64
  launch/tpu_pod.sh up --name tokenrl-8b --zone us-west4-a --type v5litepod-64 --spot -- \
    --config configs/qwen3_8b_v5e64.py:/path/on/workers/Qwen3-8B \
    --config.data.tfds_data_dir=gs://BUCKET/tfds --workdir gs://BUCKET/runs/qwen3_8b_v5e64
Argument: the local Hugging Face folder of Qwen3-8B on every worker (same path everywhere);
  empty = the 'qwen3-8b' preset's shapes with random weights (enough for `tokenrl plan`).
  A leading 'tpu,' or 'gpu,' (the other GSM8K configs' syntax) is accepted and ignored.
Data: GSM8K prepared once with TFDS (README "Data"); --config.data.tfds_data_dir=gs://... .
Hardware: TPU v5e-64 (64 chips, 16 GiB HBM each). Mesh data=1 x fsdp=8 x tensor=8: params,
  AdamW state and gradients are split 64 ways; the sampler gathers fsdp away and keeps the
  tensor split (8B bf16 / 8 = 1.9 GiB per chip). bf16 params, remat, 64 prompts x 8 samples,
  micro-batches of 64 sequences (8 per batch shard).
Memory (tokenrl plan --devices v5e-64): peak 5.73 GiB of 16 GiB per chip, in the rollout (KV
  cache 1.13 + decode params 1.91 + prefill 1.98 on top of 0.72 of params + AdamW state).
Expected result: not yet measured.
"""

from tokenrl.config import hf_gsm8k_config


def get_config(arg=""):
  hf_path = (arg or "").strip()
  if hf_path.partition(",")[0] in ("tpu", "gpu"):
    hf_path = hf_path.partition(",")[2]
  c = hf_gsm8k_config(hf_path, hardware="tpu")
  c.model.preset = "qwen3-8b"  # the shapes when hf_path is empty (planning without weights)
  c.data.batch_size = 64
  c.rl.num_generations = 8
  c.train.micro_batch_size = 64
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 8
  return c
