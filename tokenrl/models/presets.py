"""Named model presets at the published sizes, plus tiny ones for tests and the quickstart.

Each preset equals the config.json of the public checkpoint (checked by parameter count in
tests/models/test_presets.py with `jax.eval_shape`, nothing allocated).
"""

from __future__ import annotations

from tokenrl.models.config import ModelConfig, RopeConfig

_LLAMA31_ROPE = dict(theta=500_000.0, rope_type="llama3", low_freq_factor=1.0,
                     high_freq_factor=4.0, original_max_position_embeddings=8192)


def _gemma3_local(num_layers: int, pattern: int = 6) -> tuple[bool, ...]:
  return tuple((i + 1) % pattern != 0 for i in range(num_layers))


PRESETS: dict[str, ModelConfig] = {
    "llama3.2-1b": ModelConfig(
        family="llama", vocab_size=128_256, dim=2048, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, mlp_dim=8192, norm_eps=1e-5, tie_embeddings=True,
        rope=RopeConfig(factor=32.0, **_LLAMA31_ROPE), max_seq_len=131_072,
        bos_id=128_000, eos_ids=(128_001, 128_008, 128_009), pad_id=128_004),
    "llama3.1-8b": ModelConfig(
        family="llama", vocab_size=128_256, dim=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=14_336, norm_eps=1e-5, tie_embeddings=False,
        rope=RopeConfig(factor=8.0, **_LLAMA31_ROPE), max_seq_len=131_072,
        bos_id=128_000, eos_ids=(128_001, 128_008, 128_009), pad_id=128_004),
    "qwen2.5-0.5b": ModelConfig(
        family="qwen2", vocab_size=151_936, dim=896, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, mlp_dim=4864, tie_embeddings=True, qkv_bias=True,
        rope=RopeConfig(theta=1_000_000.0), max_seq_len=32_768, eos_ids=(151_645, 151_643),
        pad_id=151_643),
    "qwen2.5-1.5b": ModelConfig(
        family="qwen2", vocab_size=151_936, dim=1536, num_layers=28, num_heads=12,
        num_kv_heads=2, head_dim=128, mlp_dim=8960, tie_embeddings=True, qkv_bias=True,
        rope=RopeConfig(theta=1_000_000.0), max_seq_len=32_768, eos_ids=(151_645, 151_643),
        pad_id=151_643),
    "qwen2.5-7b": ModelConfig(
        family="qwen2", vocab_size=152_064, dim=3584, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, mlp_dim=18_944, tie_embeddings=False, qkv_bias=True,
        rope=RopeConfig(theta=1_000_000.0), max_seq_len=32_768, eos_ids=(151_645, 151_643),
        pad_id=151_643),
    "qwen3-0.6b": ModelConfig(
        family="qwen3", vocab_size=151_936, dim=1024, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, mlp_dim=3072, tie_embeddings=True, qk_norm=True,
        rope=RopeConfig(theta=1_000_000.0), max_seq_len=40_960, eos_ids=(151_645, 151_643),
        pad_id=151_643),
    "qwen3-1.7b": ModelConfig(
        family="qwen3", vocab_size=151_936, dim=2048, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, mlp_dim=6144, tie_embeddings=True, qk_norm=True,
        rope=RopeConfig(theta=1_000_000.0), max_seq_len=40_960, eos_ids=(151_645, 151_643),
        pad_id=151_643),
    "qwen3-8b": ModelConfig(
        family="qwen3", vocab_size=151_936, dim=4096, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=12_288, tie_embeddings=False, qk_norm=True,
        rope=RopeConfig(theta=1_000_000.0), max_seq_len=40_960, eos_ids=(151_645, 151_643),
        pad_id=151_643),
    "gemma3-1b": ModelConfig(
        family="gemma3", vocab_size=262_144, dim=1152, num_layers=26, num_heads=4,
        num_kv_heads=1, head_dim=256, mlp_dim=6912, tie_embeddings=True, qk_norm=True,
        rope=RopeConfig(theta=1_000_000.0), local_rope=RopeConfig(theta=10_000.0),
        sliding_window=512, local_layers=_gemma3_local(26), query_pre_attn_scalar=256,
        max_seq_len=32_768, bos_id=2, eos_ids=(1, 106), pad_id=0),
    "gemma3-4b": ModelConfig(
        family="gemma3", vocab_size=262_208, dim=2560, num_layers=34, num_heads=8,
        num_kv_heads=4, head_dim=256, mlp_dim=10_240, tie_embeddings=True, qk_norm=True,
        rope=RopeConfig(theta=1_000_000.0, rope_type="linear", factor=8.0),
        local_rope=RopeConfig(theta=10_000.0), sliding_window=1024,
        local_layers=_gemma3_local(34), query_pre_attn_scalar=256, max_seq_len=131_072,
        bos_id=2, eos_ids=(1, 106), pad_id=0),
}


def tiny(family: str = "qwen2", *, vocab_size: int = 64, dim: int = 64, num_layers: int = 2,
         num_heads: int = 4, num_kv_heads: int = 2, head_dim: int | None = None,
         mlp_dim: int = 128, **overrides) -> ModelConfig:
  """A tiny model of any family for tests and CPU quickstarts (every family trait kept)."""
  base = dict(family=family, vocab_size=vocab_size, dim=dim, num_layers=num_layers,
              num_heads=num_heads, num_kv_heads=num_kv_heads,
              head_dim=head_dim or dim // num_heads, mlp_dim=mlp_dim, max_seq_len=512,
              tie_embeddings=True)
  if family == "qwen2":
    base.update(qkv_bias=True)
  if family == "qwen3":
    base.update(qk_norm=True)
  if family == "gemma3":
    base.update(qk_norm=True, local_rope=RopeConfig(theta=10_000.0), sliding_window=8,
                local_layers=tuple(i % 2 == 0 for i in range(num_layers)),
                query_pre_attn_scalar=float(head_dim or dim // num_heads))
  base.update(overrides)
  return ModelConfig(**base)


PRESETS["tiny"] = tiny()


def get_preset(name: str) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]
