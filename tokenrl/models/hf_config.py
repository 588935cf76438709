"""Hugging Face `config.json` <-> `ModelConfig`.

Reads both the transformers 4.x layout (`rope_theta`, `rope_scaling`, `rope_local_base_freq`,
`sliding_window_pattern`) and the 5.x layout (`rope_parameters`, per layer type for Gemma 3,
`layer_types`). Writes the 5.x layout plus the 4.x rope keys so either version loads it.
Anything this decoder does not implement is an error naming the key, never ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tokenrl.models.config import ModelConfig, RopeConfig

_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3",
                "gemma3": "gemma3"}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
_HF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
_TIE_DEFAULT = {"llama": False, "qwen2": False, "qwen3": False, "gemma3": True}


def _rope_from_dict(d: dict[str, Any] | None, theta: float, where: str) -> RopeConfig:
  d = dict(d or {})
  rope_type = d.get("rope_type", d.get("type", "default"))
  theta = float(d.get("rope_theta", theta))
  if rope_type not in ("default", "linear", "llama3"):
    raise ValueError(f"{where}: rope_type {rope_type!r} is not supported (default, linear, llama3)")
  if float(d.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError(f"{where}: partial_rotary_factor != 1 is not supported")
  if rope_type == "default":
    return RopeConfig(theta=theta)
  if rope_type == "linear":
    return RopeConfig(theta=theta, rope_type="linear", factor=float(d["factor"]))
  return RopeConfig(theta=theta, rope_type="llama3", factor=float(d["factor"]),
                    low_freq_factor=float(d["low_freq_factor"]),
                    high_freq_factor=float(d["high_freq_factor"]),
                    original_max_position_embeddings=int(d["original_max_position_embeddings"]))


def _rope_to_dict(rope: RopeConfig) -> dict[str, Any]:
  d: dict[str, Any] = {"rope_type": rope.rope_type, "rope_theta": rope.theta}
  if rope.rope_type in ("linear", "llama3"):
    d["factor"] = rope.factor
  if rope.rope_type == "llama3":
    d.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor,
             original_max_position_embeddings=rope.original_max_position_embeddings)
  return d


def _eos_list(value: Any) -> tuple[int, ...]:
  if value is None:
    return ()
  if isinstance(value, int):
    return (value,)
  return tuple(int(v) for v in value)


def config_from_hf(hf: dict[str, Any], *, where: str = "config.json") -> ModelConfig:
  """ModelConfig from the parsed config.json dict `hf` (`where` names it in errors)."""
  model_type = hf.get("model_type")
  if model_type not in _MODEL_TYPES:
    raise ValueError(f"{where}: unknown architecture model_type={model_type!r}; "
                     f"supported: {sorted(_MODEL_TYPES)}")
  family = _MODEL_TYPES[model_type]
  top = hf
  if model_type == "gemma3":  # multimodal checkpoint: the decoder is text_config
    hf = dict(hf["text_config"])
  required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size"]
  missing = [k for k in required if k not in hf]
  if missing:
    raise ValueError(f"{where}: missing keys {missing}")
  if family == "gemma3":
    # Gemma 3's transformers defaults, which hub configs often omit.
    hf = {"num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
          "sliding_window": 4096, "rms_norm_eps": 1e-6, "vocab_size": 262_208, **hf}
  layers = hf["num_hidden_layers"]
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key) and family != "qwen2":
      raise ValueError(f"{where}: {key}=true is not supported for {family}")
  act = hf.get("hidden_activation") or hf.get("hidden_act")
  expected_act = "gelu_pytorch_tanh" if family == "gemma3" else "silu"
  if act is not None and act != expected_act:
    raise ValueError(f"{where}: activation {act!r} is not supported for {family} (expected {expected_act!r})")

  # RoPE: 5.x `rope_parameters` (per layer type for Gemma 3) or 4.x keys.
  params = hf.get("rope_parameters")
  default_theta = 1_000_000.0 if family == "gemma3" else 10_000.0
  theta = float(hf.get("rope_theta", default_theta))
  local_rope = None
  if family == "gemma3":
    if params and "full_attention" in params:
      rope = _rope_from_dict(params["full_attention"], theta, where)
      local_rope = _rope_from_dict(params.get("sliding_attention"), 10_000.0, where)
    else:
      rope = _rope_from_dict(params or hf.get("rope_scaling"), theta, where)
      local_rope = RopeConfig(theta=float(hf.get("rope_local_base_freq", 10_000.0)))
  else:
    rope = _rope_from_dict(params or hf.get("rope_scaling"), theta, where)

  # Sliding-window layers.
  layer_types = hf.get("layer_types")
  if family == "gemma3" and not layer_types:
    pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                   for i in range(layers)]
  if family in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
    layer_types = None
  local_layers: tuple[bool, ...] = ()
  window = 0
  if layer_types:
    if len(layer_types) != layers:
      raise ValueError(f"{where}: layer_types has {len(layer_types)} entries, num_hidden_layers={layers}")
    local_layers = tuple(t == "sliding_attention" for t in layer_types)
    if any(local_layers):
      window = int(hf["sliding_window"])
  heads = hf["num_attention_heads"]
  return ModelConfig(
      family=family,
      vocab_size=hf["vocab_size"],
      dim=hf["hidden_size"],
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"],
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(top.get("tie_word_embeddings", hf.get("tie_word_embeddings", _TIE_DEFAULT[family]))),
      qkv_bias=family == "qwen2",
      qk_norm=family in ("qwen3", "gemma3"),
      rope=rope,
      local_rope=local_rope,
      sliding_window=window,
      local_layers=local_layers if any(local_layers) else (),
      query_pre_attn_scalar=hf.get("query_pre_attn_scalar") if family == "gemma3" else None,
      final_logit_softcap=hf.get("final_logit_softcapping"),
      attn_logit_softcap=hf.get("attn_logit_softcapping"),
      max_seq_len=int(hf.get("max_position_embeddings", 4096)),
      pad_id=int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0),
      pad_id_declared=hf.get("pad_token_id") is not None,
      bos_id=hf.get("bos_token_id"),
      eos_ids=_eos_list(top.get("eos_token_id", hf.get("eos_token_id"))),
  )


def config_to_hf(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """A config.json dict that transformers (4.x and 5.x) loads as the same model."""
  c = config
  hf: dict[str, Any] = {
      "architectures": [_ARCHITECTURES[c.family]],
      "model_type": _HF_MODEL_TYPE[c.family],
      "vocab_size": c.vocab_size,
      "hidden_size": c.dim,
      "intermediate_size": c.mlp_dim,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      "rms_norm_eps": c.norm_eps,
      "tie_word_embeddings": c.tie_embeddings,
      "max_position_embeddings": c.max_seq_len,
      "pad_token_id": c.pad_id if c.pad_id_declared else None,
      "bos_token_id": c.bos_id,
      "eos_token_id": list(c.eos_ids) if len(c.eos_ids) != 1 else c.eos_ids[0],
      "torch_dtype": dtype,
      "rope_theta": c.rope.theta,
  }
  if c.family == "gemma3":
    hf["hidden_activation"] = "gelu_pytorch_tanh"
    hf["query_pre_attn_scalar"] = c.query_pre_attn_scalar or c.head_dim
    hf["sliding_window"] = c.sliding_window or c.max_seq_len
    hf["layer_types"] = ["sliding_attention" if w else "full_attention" for w in c.layer_windows]
    hf["final_logit_softcapping"] = c.final_logit_softcap
    hf["attn_logit_softcapping"] = c.attn_logit_softcap
    local = c.local_rope or RopeConfig(theta=10_000.0)
    hf["rope_local_base_freq"] = local.theta
    hf["rope_parameters"] = {"full_attention": _rope_to_dict(c.rope),
                             "sliding_attention": _rope_to_dict(local)}
    if c.rope.rope_type != "default":
      hf["rope_scaling"] = _rope_to_dict(c.rope)
  else:
    hf["hidden_act"] = "silu"
    hf["rope_parameters"] = _rope_to_dict(c.rope)
    hf["rope_scaling"] = _rope_to_dict(c.rope) if c.rope.rope_type != "default" else None
    if c.family == "qwen2":
      hf["attention_bias"] = True
    if c.local_layers:
      hf["use_sliding_window"] = True
      hf["sliding_window"] = c.sliding_window
      hf["layer_types"] = ["sliding_attention" if w else "full_attention" for w in c.layer_windows]
  return hf


def read_hf_config(path: str) -> ModelConfig:
  """ModelConfig of the HF folder `path` (its config.json)."""
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no config.json in {path!r} (expected a Hugging Face model folder)")
  with open(file) as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from e
  # eos ids may live only in generation_config.json
  gen_file = os.path.join(path, "generation_config.json")
  if os.path.isfile(gen_file):
    with open(gen_file) as f:
      gen = json.load(f)
    if gen.get("eos_token_id") is not None:
      hf = {**hf, "eos_token_id": gen["eos_token_id"]}
  return config_from_hf(hf, where=file)
