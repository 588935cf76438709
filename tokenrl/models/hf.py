"""Load and save Hugging Face checkpoint folders through a declarative key-mapping table.

`load_hf(path)` reads config.json and single or sharded safetensors (with the index), maps each
HF tensor to its tokenrl leaf (stacking layers on the L axis) and places every leaf straight
into its target sharding. `save_hf(path, config, params)` writes a folder transformers loads.
No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from tokenrl.models import safetensors_io as st
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.models.hf_config import config_to_hf, read_hf_config

# tokenrl leaf -> (HF name, number of leading tokenrl dims that form the HF "in" side).
# HF Linear weights are [out, in]; tokenrl keeps [in..., out...], so a linear is
# `ours = hf.T.reshape(shape)`. in_dims=None marks tensors copied with a reshape only.
_LAYER_COMMON = {
    "attn_norm": ("input_layernorm.weight", None),
    "q": ("self_attn.q_proj.weight", 1),
    "k": ("self_attn.k_proj.weight", 1),
    "v": ("self_attn.v_proj.weight", 1),
    "o": ("self_attn.o_proj.weight", 2),
    "q_bias": ("self_attn.q_proj.bias", None),
    "k_bias": ("self_attn.k_proj.bias", None),
    "v_bias": ("self_attn.v_proj.bias", None),
    "q_norm": ("self_attn.q_norm.weight", None),
    "k_norm": ("self_attn.k_norm.weight", None),
    "gate": ("mlp.gate_proj.weight", 1),
    "up": ("mlp.up_proj.weight", 1),
    "down": ("mlp.down_proj.weight", 1),
}
LAYER_KEYS = {
    "llama": {**_LAYER_COMMON, "mlp_norm": ("post_attention_layernorm.weight", None)},
    "gemma3": {**_LAYER_COMMON,
               "post_attn_norm": ("post_attention_layernorm.weight", None),
               "mlp_norm": ("pre_feedforward_layernorm.weight", None),
               "post_mlp_norm": ("post_feedforward_layernorm.weight", None)},
}
LAYER_KEYS["qwen2"] = LAYER_KEYS["qwen3"] = LAYER_KEYS["llama"]
TOP_KEYS = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
            "lm_head": "lm_head.weight"}
LAYER_PREFIX = "model.layers.{i}."

# Multimodal Gemma 3 folders nest the decoder; these prefixes are rewritten, and the vision
# tower's tensors are skipped.
_PREFIX_REWRITES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                    ("language_model.lm_head.", "lm_head."))
_SKIP = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.|rotary_emb\.inv_freq$")


def _normalize_key(key: str) -> str:
  for old, new in _PREFIX_REWRITES:
    if key.startswith(old):
      return new + key[len(old):]
  return key


def _weight_files(path: str) -> list[str]:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
      if not isinstance(weight_map, dict) or not all(
          isinstance(v, str) and "/" not in v and "\\" not in v and v not in (".", "..")
          for v in weight_map.values()):
        raise ValueError("'weight_map' must map tensor names to file names in the folder")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
      raise ValueError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
      raise FileNotFoundError(f"{index} lists shards that are missing: {missing}")
    return [os.path.join(path, f) for f in files]
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  if any(f.endswith(".bin") for f in os.listdir(path)):
    raise ValueError(f"{path} holds pytorch .bin weights; only safetensors are read (no pickle)")
  raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path!r}")


def _expected_hf_keys(config: ModelConfig) -> dict[str, tuple[str, int | None, int | None]]:
  """HF key -> (tokenrl leaf path 'layers/q' or 'embed', layer index or None, in_dims)."""
  shapes = transformer.param_shapes(config)
  out = {}
  for leaf in shapes:
    if leaf != "layers":
      out[TOP_KEYS[leaf]] = (leaf, None, None)
  table = LAYER_KEYS[config.family]
  for name in shapes["layers"]:
    hf_name, in_dims = table[name]
    for i in range(config.num_layers):
      out[LAYER_PREFIX.format(i=i) + hf_name] = ("layers/" + name, i, in_dims)
  return out


def expected_hf_shape(key: str, shape: tuple[int, ...], in_dims: int | None) -> tuple[int, ...]:
  """The shape a HF checkpoint stores for a tokenrl leaf of `shape` (one layer's slice).

  Linears (in_dims set): [out, in] = (prod(shape[in_dims:]), prod(shape[:in_dims])), the
  transpose of ours flattened. Biases and norms: 1-D (prod(shape),). Embeddings: as ours [V, D].
  """
  if in_dims is not None:
    return (math.prod(shape[in_dims:]), math.prod(shape[:in_dims]))
  if "bias" in key or "norm" in key:
    return (math.prod(shape),)
  return tuple(shape)


def _to_ours(arr: np.ndarray, shape: tuple[int, ...], in_dims: int | None, key: str, file: str) -> np.ndarray:
  # Compare the exact stored shape: a transposed up_proj [D, F] has the element count of the
  # right [F, D] and would reshape without error into a scrambled matrix.
  want = expected_hf_shape(key, tuple(shape), in_dims)
  if tuple(arr.shape) != want:
    raise ValueError(f"{file}: tensor {key!r} has shape {tuple(arr.shape)}, expected {want} "
                     f"for this config.json (tokenrl leaf shape {tuple(shape)}"
                     f"{', stored transposed as [out, in]' if in_dims is not None else ''}); "
                     "check hidden_size / intermediate_size / heads / head_dim in config.json, "
                     "or whether the tensor was saved transposed")
  if in_dims is not None:
    arr = arr.T
  return arr.reshape(shape)


def load_hf(path: str, *, dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
            rules: dict[str, Any] | None = None) -> tuple[ModelConfig, dict[str, Any]]:
  """(config, params) from a local Hugging Face folder.

  dtype: target dtype of every param (None keeps the checkpoint's). mesh: place each leaf
  directly into its NamedSharding from the logical-axis rules (never whole on one device).
  Unknown or missing tensors and shape mismatches raise, naming the key and the file.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model folder {path!r} does not exist")
  config = read_hf_config(path)
  expected = _expected_hf_keys(config)
  shapes = transformer.param_shapes(config)
  found: dict[str, tuple[np.ndarray, str]] = {}
  unknown = []
  for file in _weight_files(path):
    for key, arr in st.load_tensors(file).items():
      norm = _normalize_key(key)
      if _SKIP.search(norm):
        continue
      if norm not in expected:
        unknown.append(f"{key} ({os.path.basename(file)})")
        continue
      found[norm] = (arr, file)
  if config.tie_embeddings and TOP_KEYS["lm_head"] in found:
    # Tied checkpoints sometimes also store lm_head; it must equal the embedding.
    found.pop(TOP_KEYS["lm_head"])
  if unknown:
    raise ValueError(f"{path}: tensors not used by a {config.family} model: {unknown[:10]}"
                     f"{' ...' if len(unknown) > 10 else ''}")
  missing = sorted(set(expected) - set(found))
  if missing:
    raise ValueError(f"{path}: checkpoint lacks tensors {missing[:10]}{' ...' if len(missing) > 10 else ''}")

  shardings = None
  if mesh is not None:
    from tokenrl.models import sharding
    shardings = sharding.tree_shardings(transformer.param_logical_axes(config), shapes, mesh, rules)

  def place(leaf_path: str, value: np.ndarray) -> jax.Array:
    if dtype is not None:
      value = value.astype(np.dtype(jnp.dtype(dtype)))
    if shardings is None:
      return jnp.asarray(value)
    target = shardings[leaf_path] if "/" not in leaf_path else shardings["layers"][leaf_path[7:]]
    # Each device receives only its slice of the host array (no whole copy per device).
    return jax.make_array_from_callback(value.shape, target, lambda idx: value[idx])

  params: dict[str, Any] = {"layers": {}}
  by_leaf: dict[str, list[tuple[int, str]]] = {}
  for key, (leaf, layer, _) in expected.items():
    by_leaf.setdefault(leaf, []).append((layer, key))
  for leaf, entries in by_leaf.items():
    if leaf.startswith("layers/"):
      name = leaf[len("layers/"):]
      per_layer = shapes["layers"][name][1:]
      stacked = np.stack([
          _to_ours(found[key][0], per_layer, expected[key][2], key, found[key][1])
          for _, key in sorted(entries)])
      params["layers"][name] = place(leaf, stacked)
    else:
      (_, key), = entries
      params[leaf] = place(leaf, _to_ours(found[key][0], shapes[leaf], None, key, found[key][1]))
  return config, params


def save_hf(path: str, config: ModelConfig, params: dict[str, Any], *,
            max_shard_bytes: int = 4 << 30, tokenizer: Any = None) -> None:
  """Write `params` as a Hugging Face folder (config.json, safetensors, generation_config.json).

  Files larger than `max_shard_bytes` are split into shards with a model.safetensors.index.json.
  `tokenizer` (a tokenrl CharTokenizer or HFTokenizer, e.g. the run's): its tokenizer.json and
  tokenizer_config.json are written too, so the folder is self-contained for `load_tokenizer`,
  `tokenrl sample --model` and transformers (see tokenrl.data.tokenizer_export).
  """
  os.makedirs(path, exist_ok=True)
  if tokenizer is not None:
    if tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f"save_hf: the tokenizer has {tokenizer.vocab_size} ids but the model's "
                       f"vocab_size is {config.vocab_size}: pass the model's own tokenizer")
    # Same layer (data sits beside models); imported here so models/ loads without tokenizers.
    from tokenrl.data.tokenizer_export import save_tokenizer  # pylint: disable=g-import-not-at-top
    save_tokenizer(path, tokenizer)
  expected = _expected_hf_keys(config)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  dtypes = {np.asarray(x).dtype for x in jax.tree.leaves(host)}
  dtype_name = "bfloat16" if np.dtype(ml_dtypes.bfloat16) in dtypes else "float32"
  tensors = {}
  for key, (leaf, layer, in_dims) in expected.items():
    if leaf.startswith("layers/"):
      arr = host["layers"][leaf[len("layers/"):]][layer]
    else:
      arr = host[leaf]
    if in_dims is not None:
      arr = arr.reshape(int(np.prod(arr.shape[:in_dims])), -1).T
    elif "bias" in key or "norm" in key:
      arr = arr.reshape(-1)
    tensors[key] = np.ascontiguousarray(arr)

  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(config, dtype_name), f, indent=2)
  gen = {"eos_token_id": list(config.eos_ids) if config.eos_ids else None,
         "bos_token_id": config.bos_id, "pad_token_id": config.pad_id}
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump(gen, f, indent=2)

  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for key in sorted(tensors):
    if shards[-1] and size + tensors[key].nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = tensors[key]
    size += tensors[key].nbytes
  if len(shards) == 1:
    st.save_tensors(os.path.join(path, "model.safetensors"), shards[0])
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    st.save_tensors(os.path.join(path, name), shard)
    weight_map.update({k: name for k in shard})
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
           "weight_map": weight_map}
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f, indent=2)
