"""GRPO on GSM8K with Qwen3-1.7B (a local Hugging Face folder), one GPU or a TPU v5e-8 / v4-8.

Commands:
  tokenrl train --config configs/gsm8k_qwen3-1_7b.py:gpu,/path/to/Qwen3-1.7B --workdir runs/gsm8k_qwen3-1.7b
  tokenrl train --config configs/gsm8k_qwen3-1_7b.py:tpu,/path/to/Qwen3-1.7B --workdir gs://.../gsm8k_qwen3-1.7b
Data: GSM8K prepared once with TFDS (see README "Data"), --config.data.tfds_data_dir=DIR.
Hardware: one GPU with >= 40 GB, or a TPU v5e-8 / v4-8 (mesh fsdp=8).
Expected result: not yet measured.
Note: the mesh fields are honoured by the sharded engine in tokenrl/train/sharded.py; the
  train loop (tokenrl/train/rl_loop.py) still runs on one device, so the TPU variant waits for
  the scale-out work (see README "Sharding").
"""

from tokenrl.config import hf_gsm8k_config


def get_config(arg="gpu,"):
  hardware, _, hf_path = (arg or "gpu,").partition(",")
  return hf_gsm8k_config(hf_path, hardware=hardware)
