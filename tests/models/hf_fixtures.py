"""Tiny random Hugging Face checkpoints built locally with transformers (nothing downloaded)."""

from __future__ import annotations

import numpy as np

# name -> (transformers config class name, kwargs). Shapes cover GQA ratios 1:1, 2:1 and 4:1,
# head_dim != D/Q, tied and untied embeddings, llama3 and linear rope scaling, sliding windows.
CASES = {
    "llama_gqa_llama3rope": ("LlamaConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=97, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16),
        rope_theta=500000.0)),
    "llama_tied_headdim": ("LlamaConfig", dict(
        hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16, vocab_size=61, tie_word_embeddings=True)),
    "qwen2_bias_gqa4": ("Qwen2Config", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, vocab_size=70, tie_word_embeddings=True)),
    "qwen3_qknorm": ("Qwen3Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, vocab_size=83, tie_word_embeddings=False)),
    "gemma3_sliding": ("Gemma3TextConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, vocab_size=89,
        sliding_window=4, layer_types=["sliding_attention", "full_attention",
                                       "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                            "rope_theta": 100000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        pad_token_id=0, bos_token_id=2, eos_token_id=1)),
}


def build_hf_model(name: str, seed: int = 0):
  """A transformers causal LM for CASES[name] with every weight random (norms included)."""
  import torch
  import transformers
  cls_name, kwargs = CASES[name]
  config = getattr(transformers, cls_name)(**kwargs)
  config._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():
    for pname, p in model.named_parameters():
      scale = 0.3 if "norm" in pname or "bias" in pname else 0.2
      p.copy_(torch.randn_like(p) * scale + (1.0 if "norm" in pname and "gemma" not in cls_name.lower() else 0.0))
  return model.eval().float()


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Logits of a transformers model on left-padded tokens, positions from the mask."""
  import torch
  positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()
