"""Pure-function decoders (Llama 3, Qwen2/2.5, Qwen3, Gemma 3) with Hugging Face interop."""

from tokenrl.models.config import ModelConfig, RopeConfig, TokenSelectConfig
from tokenrl.models.hf import load_hf, save_hf
from tokenrl.models.hooks import HookedOutput, Hooks, onehot_embeddings
from tokenrl.models.hf_config import config_from_hf, config_to_hf, read_hf_config
from tokenrl.models.presets import PRESETS, get_preset, tiny
from tokenrl.models.transformer import (forward, init_cache, init_params, param_logical_axes,
                                        param_shapes, run_with_hooks, segment_ids_from_lengths,
                                        unembed)

__all__ = [
    "ModelConfig", "RopeConfig", "TokenSelectConfig", "load_hf", "save_hf", "config_from_hf", "config_to_hf",
    "read_hf_config", "PRESETS", "get_preset", "tiny", "forward", "init_cache", "init_params",
    "param_logical_axes", "param_shapes", "segment_ids_from_lengths", "unembed", "Hooks",
    "HookedOutput", "onehot_embeddings", "run_with_hooks",
]
