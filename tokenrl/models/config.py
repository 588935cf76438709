"""`ModelConfig`: the static description of one decoder, shared by all supported families.

A frozen, hashable dataclass so it can be a static argument of `jax.jit`. Families differ only
in these fields; `transformer.forward` has one code path.

| family | differences from Llama                                                              |
|--------|-------------------------------------------------------------------------------------|
| llama  | GQA, SiLU-gated MLP, RoPE with optional llama3 scaling                              |
| qwen2  | + q/k/v biases                                                                      |
| qwen3  | + per-head RMSNorm on q and k (before RoPE), head_dim != D/Q allowed                |
| gemma3 | embedding x sqrt(D), (1+w) RMSNorm, pre+post norms, q/k norm, gelu-tanh MLP,       |
|        | sliding-window layers interleaved with global ones with their own RoPE base         |
"""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")
ROPE_TYPES = ("default", "linear", "llama3")
ATTENTIONS = ("full", "tokenselect")
GQA_MODES = ("group", "modulo")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding of one layer kind.

  theta: base wavelength. rope_type: 'default' | 'linear' (inv_freq / factor) | 'llama3'
  (Llama 3.1 frequency-dependent scaling). The llama3 fields are unused otherwise.
  """

  theta: float = 10_000.0
  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}")


@dataclasses.dataclass(frozen=True)
class TokenSelectConfig:
  """TokenSelect dynamic token-level KV selection (Wu et al., arXiv 2411.02886), inference only.

  Per layer and step, each query head h scores every candidate slot j by s_hj = <q̄_h, k_j>
  (q̄ = mean query of the chunk), normalises over candidates (softmax_j), and the heads vote
  V_j = Σ_h softmax_j(s_h)_j; attention then runs over the n_init first tokens, the top_k
  most-voted candidates and the n_local last tokens. Defaults are the reference's (Qwen2/Llama-3).

  top_k: selected candidates per step. n_init / n_local: always-kept initial / local windows.
  chunk_size: prefill chunk (queries per selection). threshold: Selection Cache θ; the last
  selection is reused while cos(q̄, anchor) >= θ (q̄ taken before RoPE). cache: enable it.
  gqa: 'group' (query head h uses KV head h // G) or 'modulo' (h % K, the reference kernel).
  impl: kernel implementation ('auto' = Pallas on GPU, jnp elsewhere; 'pallas' | 'jnp').
  """

  top_k: int = 2048
  n_init: int = 128
  n_local: int = 512
  chunk_size: int = 512
  threshold: float = 0.9
  cache: bool = True
  gqa: str = "group"
  impl: str = "auto"

  def __post_init__(self):
    for name in ("top_k", "n_local", "chunk_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"tokenselect.{name} must be >= 1, got {getattr(self, name)}")
    if self.n_init < 0:
      raise ValueError(f"tokenselect.n_init must be >= 0, got {self.n_init}")
    if self.gqa not in GQA_MODES:
      raise ValueError(f"tokenselect.gqa must be one of {GQA_MODES}, got {self.gqa!r}")
    if self.impl not in ("auto", "pallas", "jnp"):
      raise ValueError(f"tokenselect.impl must be 'auto', 'pallas' or 'jnp', got {self.impl!r}")

  @property
  def k_total(self) -> int:
    """Selected slots per step: n_init + top_k + n_local."""
    return self.n_init + self.top_k + self.n_local


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static hyperparameters of a decoder (shape alphabet: V D F Q K H L)."""

  family: str
  vocab_size: int  # V
  dim: int  # D
  num_layers: int  # L
  num_heads: int  # Q
  num_kv_heads: int  # K
  head_dim: int  # H (may differ from D / Q)
  mlp_dim: int  # F
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False  # qwen2
  qk_norm: bool = False  # qwen3, gemma3
  rope: RopeConfig = RopeConfig()
  # Gemma 3: sliding-window ("local") layers use their own RoPE; window is in tokens.
  local_rope: RopeConfig | None = None
  sliding_window: int = 0  # 0 = no window
  # One bool per layer: True = sliding-window (local) layer. Empty = all global.
  local_layers: tuple[bool, ...] = ()
  # Attention logits are scaled by query_pre_attn_scalar**-0.5 (None: head_dim**-0.5).
  query_pre_attn_scalar: float | None = None
  final_logit_softcap: float | None = None
  attn_logit_softcap: float | None = None
  max_seq_len: int = 4096
  # Fill value of padded slots only (the mask/segment ids say which slots are padding; no
  # token value is ever read as padding: a config.json without pad_token_id gives 0, a real token).
  pad_id: int = 0
  # False when the source config.json declared no pad_token_id (pad_id then defaults to 0):
  # save_hf writes pad_token_id null again, so a round trip does not invent one.
  pad_id_declared: bool = True
  bos_id: int | None = None
  eos_ids: tuple[int, ...] = ()
  # KV-cache attention of prefill and decode: 'full' or 'tokenselect' (training is always full).
  attention: str = "full"
  tokenselect: TokenSelectConfig = TokenSelectConfig()

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"model family must be one of {FAMILIES}, got {self.family!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    if self.local_layers and len(self.local_layers) != self.num_layers:
      raise ValueError(
          f"local_layers has {len(self.local_layers)} entries, expected num_layers={self.num_layers}")
    if any(self.local_layers) and self.sliding_window <= 0:
      raise ValueError("local_layers marks sliding-window layers but sliding_window <= 0")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
    if self.attention == "tokenselect" and any(self.local_layers):
      raise ValueError("attention='tokenselect' does not support sliding-window (local) layers")

  # Family traits, derived so that a config cannot contradict its family.
  @property
  def gemma(self) -> bool:
    return self.family == "gemma3"

  @property
  def norm_plus_one(self) -> bool:
    """Gemma stores RMSNorm scales as w and multiplies by (1 + w)."""
    return self.gemma

  @property
  def post_norms(self) -> bool:
    """Gemma normalizes the attention and MLP outputs before the residual add."""
    return self.gemma

  @property
  def activation(self) -> str:
    return "gelu_tanh" if self.gemma else "silu"

  @property
  def embed_scale(self) -> float:
    return self.dim**0.5 if self.gemma else 1.0

  @property
  def attn_scale(self) -> float:
    scalar = self.query_pre_attn_scalar or self.head_dim
    return float(scalar) ** -0.5

  @property
  def layer_windows(self) -> tuple[int, ...]:
    """Per-layer sliding window in tokens, 0 for global layers; length L."""
    if not self.local_layers:
      return (0,) * self.num_layers
    return tuple(self.sliding_window if local else 0 for local in self.local_layers)

  def replace(self, **kwargs: Any) -> ModelConfig:
    return dataclasses.replace(self, **kwargs)
