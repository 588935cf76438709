"""GRPO on GSM8K with Qwen2.5-1.5B-Instruct on one node of 8 GPUs (one process drives all 8).

Commands:
  tokenrl plan --config configs/qwen2_5_1_5b_8gpu.py --devices h100-8
  launch/gpu_node.sh -- --config configs/qwen2_5_1_5b_8gpu.py:/path/to/Qwen2.5-1.5B-Instruct \
    --workdir runs/qwen2_5_1_5b_8gpu
Argument: the local Hugging Face folder of Qwen2.5-1.5B-Instruct; empty = the 'qwen2.5-1.5b'
  preset's shapes with random weights (enough for `tokenrl plan`). A leading 'gpu,' or 'tpu,'
  (the other GSM8K configs' syntax) is accepted and ignored.
Data: GSM8K prepared once with TFDS (README "Data"); --config.data.tfds_data_dir=DIR.
Hardware: 8 x H100 80 GB (or A100 80 GB). Mesh data=8: params replicated, the rollout and
  the batch split 8 ways; bf16 params, remat, 32 prompts x 8 samples, micro-batches of 64
  sequences (8 per GPU).
Memory (tokenrl plan --devices h100-8): peak 21.92 GiB of 60 GiB usable per GPU (JAX
  preallocates 75%), in the train step; also fits 8 x A100 40 GB (30 GiB usable).
Expected result: not yet measured.
"""

from tokenrl.config import hf_gsm8k_config


def get_config(arg=""):
  hf_path = (arg or "").strip()
  if hf_path.partition(",")[0] in ("tpu", "gpu"):
    hf_path = hf_path.partition(",")[2]
  c = hf_gsm8k_config(hf_path, hardware="gpu")
  c.model.preset = "qwen2.5-1.5b"  # the shapes when hf_path is empty (planning without weights)
  c.data.batch_size = 32
  c.rl.num_generations = 8
  c.train.micro_batch_size = 64
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 8, 1, 1
  return c
