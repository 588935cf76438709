"""Memory planner: per-device bytes of an RL run from its config, before anything is allocated.

    p = plan(cfg, "v5e-64")          # or plan(cfg, 64), or plan(cfg) for the local devices
    print(p.table()); print(p.verdict())
    check_fits(cfg)                  # ValueError with the verdict and suggestions if it does not fit

Everything is computed from shapes: `jax.eval_shape` of the param init and of the optimizer's
`init`, and the shardings the engine would use (`tokenrl.train.mesh.state_shardings` on an
`AbstractMesh`); per-device bytes of a leaf = its bytes / the number of devices it is split over.
No parameter is ever allocated, so planning an 8B model takes about a second on a laptop.

Per device (mesh sizes d = data, f = fsdp, t = tensor; b = d·f batch-split devices):

  persistent   params + optimizer state (+ a frozen KL reference copy of the params if rl.beta>0,
               + the objective's frozen auxiliary models: Method.frozen_models)
  rollout      KV cache + decode-layout params (fsdp dropped, only if f > 1) + prefill activations
  train step   gradients (×2 with micro-batching: accumulator + current) + activations

  peak = max(persistent + rollout, persistent + train step)

Rollout (N = data.batch_size · rl.num_generations rows, C = P + T slots, P = the prompt bucket of
data.max_prompt_len, T = sampler.max_new_tokens, a = bytes of model.dtype):
  KV cache = 2 (k, v) · L · N/b · C · K/t · H · a  +  pos N/b · C · 4
  prefill  = (N/b)·P·a·(3D + ((Q+2K)·H + 2F)/t) + (N/b)·(Q/t)·P·C·8   (one layer; f32 scores+probs)

Train-step activations (estimate), for one micro-batch of n = m/b sequences on a device
(m = train.micro_batch_size, or the whole minibatch N/train.mini_batches when 0), S = P + T:
  saved per layer and token   s = a·D                               (model.remat = True)
                              s = a·(3D + ((Q+2K)·H + 2F)/t)        (remat off: the layer input,
                                  o and down outputs, q/k/v/gate/up outputs are kept)
  one layer's backward        w = 2·a·(3D + ((Q+2K)·H + 2F)/t) + 16·(Q/t)·S   (recomputed values
                                  and their cotangents; f32 scores, probs and their cotangents)
  logits                      8·T·V/t per sequence (f32 logits [n,T,V] and their cotangent)
  activations = n·S·(L·s + w) + n·8·T·V/t
A dimension the tensor axis does not divide is not split (as the sharding rules do); rows are
not split when b does not divide them. When the mesh fits the local accelerators (or
`compile=True`), the real jitted policy-gradient step is also lowered on abstract inputs and
XLA's `memory_analysis()` (arguments + outputs − aliased + temporaries) replaces the estimate.

Device kinds (memory per device, GiB): tpu-v4 32, tpu-v5e 16, tpu-v5p 95, tpu-v6e 32, h100 80,
h200 141, a100-40 40, a100-80 80, cpu = the host's RAM shared by its devices. 'v5e-64' is 64
v5e chips; for v4 and v5p the number counts TensorCores as Cloud TPU names do ('v4-64' = 32
chips = 32 JAX devices). GPUs get 75% of their memory (JAX preallocates
XLA_PYTHON_CLIENT_MEM_FRACTION = 0.75 by default; that variable overrides it).

Not counted: the SFT warm-up's activations (its optimizer state is: the larger of the two),
the old/reference log-prob forwards (smaller than the train step), XLA fragmentation, and
the reward workers (host memory).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

GIB = 2 ** 30

# Memory of one device in GiB; 'cpu' is read from the host.
DEVICE_MEMORY_GIB: dict[str, float | None] = {
    "tpu-v4": 32, "tpu-v5e": 16, "tpu-v5p": 95, "tpu-v6e": 32, "h100": 80, "h200": 141,
    "a100-40": 40, "a100-80": 80, "cpu": None,
}
_ALIASES = {"v4": "tpu-v4", "v5e": "tpu-v5e", "v5litepod": "tpu-v5e", "v5p": "tpu-v5p",
            "v6e": "tpu-v6e", "tpu-v5litepod": "tpu-v5e"}
# Cloud TPU accelerator types v4-N / v5p-N count TensorCores; one chip (2 cores) = one device.
_CORES_PER_CHIP = {"tpu-v4": 2, "tpu-v5p": 2}
_GPU_KINDS = ("h100", "h200", "a100-40", "a100-80")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class Devices:
  """What the plan targets: `count` devices of `kind`, each with `memory_bytes`, of which the
  run may use `usable_bytes`."""
  kind: str
  count: int
  memory_bytes: int
  usable_bytes: int


@dataclasses.dataclass(frozen=True)
class Suggestion:
  """Config overrides (field -> value) and the peak per-device bytes after applying them."""
  overrides: tuple[tuple[str, Any], ...]
  peak_bytes: int

  def flags(self) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in self.overrides)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device memory of one run. `rows` are (section, component, bytes, note)."""
  devices: Devices
  mesh: tuple[int, int, int]  # (data, fsdp, tensor)
  rows: tuple[tuple[str, str, int, str], ...]
  persistent_bytes: int
  rollout_bytes: int  # transient, on top of persistent
  train_bytes: int  # transient, on top of persistent (estimate)
  compiled: dict[str, int] | None  # memory_analysis of the real step (per device), if compiled
  peak_bytes: int
  problems: tuple[str, ...] = ()
  suggestions: tuple[Suggestion, ...] = ()
  notes: tuple[str, ...] = ()

  @property
  def fits(self) -> bool:
    """The peak fits device memory (memory only: see `runs`)."""
    return self.peak_bytes <= self.devices.usable_bytes

  @property
  def runs(self) -> bool:
    """Fits and has no problem (a batch the mesh cannot split, a context too short, ...)."""
    return self.fits and not self.problems

  def verdict(self) -> str:
    used, cap = _gib(self.peak_bytes), _gib(self.devices.usable_bytes)
    if self.fits and self.problems:
      return (f"cannot run: {len(self.problems)} problem{'s' * (len(self.problems) > 1)} listed "
              f"above (memory alone would fit: {used} GiB of {cap} GiB per device)")
    if self.fits:
      return f"fits ({used} GiB of {cap} GiB per device)"
    msg = f"does not fit: {used} GiB > {cap} GiB per device"
    if self.suggestions:
      tries = "; ".join(f"{s.flags()} ({_gib(s.peak_bytes)} GiB)" for s in self.suggestions)
      return f"{msg}; try: {tries}"
    return f"{msg}; no single config change found that fits: use more or larger devices"

  def table(self) -> str:
    d, f, t = self.mesh
    dev = self.devices
    lines = [f"devices: {dev.count} x {dev.kind}, {_gib(dev.memory_bytes)} GiB each "
             f"({_gib(dev.usable_bytes)} GiB usable); mesh data={d} fsdp={f} tensor={t}",
             f"{'':2}{'component':<34}{'GiB/device':>11}  note"]
    section = None
    for sec, name, nbytes, note in self.rows:
      if sec != section:
        lines.append(f"{sec}:")
        section = sec
      lines.append(f"  {name:<34}{_gib(nbytes):>11}  {note}")
    lines.append(f"  {'peak':<34}{_gib(self.peak_bytes):>11}  max(persistent + rollout, "
                 f"persistent + train step)")
    lines += [f"note: {n}" for n in self.notes]
    lines += [f"problem: {p}" for p in self.problems]
    return "\n".join(lines)


def _gib(nbytes: int) -> str:
  return f"{nbytes / GIB:.2f}"


# ---------------------------------------------------------------------------------------------
# Devices


def _host_ram_bytes() -> int:
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _gpu_fraction() -> float:
  value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")
  try:
    return float(value) if value else 0.75
  except ValueError:
    return 0.75


def _kind_devices(kind: str, count: int) -> Devices:
  if kind == "cpu":
    total = _host_ram_bytes()
    return Devices("cpu", count, total // count, total // count)
  mem = int(DEVICE_MEMORY_GIB[kind] * GIB)
  usable = int(mem * _gpu_fraction()) if kind in _GPU_KINDS else mem
  return Devices(kind, count, mem, usable)


def _local_kind() -> str | None:
  """Table kind of the local devices from their device_kind string, or None if unknown."""
  dev = jax.local_devices()[0]
  if dev.platform == "cpu":
    return "cpu"
  s = dev.device_kind.lower()
  for pattern, kind in ((r"v5 ?lite|v5e", "tpu-v5e"), (r"v6 ?lite|v6e", "tpu-v6e"),
                        (r"v5p|tpu v5$", "tpu-v5p"), (r"v4", "tpu-v4"), (r"h200", "h200"),
                        (r"h100", "h100"), (r"a100.*80", "a100-80"), (r"a100", "a100-40")):
    if re.search(pattern, s):
      return kind
  return None


def _local_devices(count: int) -> Devices:
  """`count` devices like the local ones: their memory_stats limit when the backend reports it
  (GPU/TPU; already net of preallocation), else the kind table."""
  dev = jax.local_devices()[0]
  kind = _local_kind()
  if kind == "cpu":  # the host's RAM is shared by the local (possibly fake) CPU devices
    total = _host_ram_bytes()
    per = total // jax.local_device_count()
    return Devices("cpu", count, per, per)
  stats = None
  try:
    stats = dev.memory_stats()
  except Exception:  # some backends do not implement it
    stats = None
  if stats and stats.get("bytes_limit"):
    limit = int(stats["bytes_limit"])
    return Devices(kind or dev.device_kind, count, limit, limit)
  if kind is None:
    raise ValueError(f"devices: cannot tell the memory of local device kind "
                     f"{dev.device_kind!r}; pass a kind, one of {sorted(DEVICE_MEMORY_GIB)}")
  return _kind_devices(kind, count)


def resolve_devices(devices: int | str | None, mesh_cfg: Any = None) -> Devices:
  """Devices from a count (of the local kind), a kind ('h100', 'tpu-v5e', 'v5e-64',
  'a100-80-8', 'cpu-8') or None (the devices of this job: jax.device_count()).

  A kind without a count takes the config's mesh size when no mesh field is -1, else 1.
  """
  if devices is None:
    return _local_devices(jax.device_count())
  if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
    if devices < 1:
      raise ValueError(f"devices must be >= 1, got {devices}")
    return _local_devices(int(devices))
  if not isinstance(devices, str):
    raise ValueError(f"devices must be an int, a device kind string or None, got {devices!r}")
  spec = devices.strip().lower()
  if spec.isdigit():
    return resolve_devices(int(spec), mesh_cfg)
  kind, count = _ALIASES.get(spec, spec), None
  if kind not in DEVICE_MEMORY_GIB:
    head, _, tail = spec.rpartition("-")
    head = _ALIASES.get(head, head)
    if head not in DEVICE_MEMORY_GIB or not tail.isdigit() or int(tail) < 1:
      raise ValueError(f"devices: unknown device spec {devices!r}; expected a count, a kind in "
                       f"{sorted(DEVICE_MEMORY_GIB)} (aliases {sorted(_ALIASES)}), or KIND-COUNT "
                       "like 'v5e-64'")
    kind, count = head, int(tail)
    per_chip = _CORES_PER_CHIP.get(kind, 1)
    if count % per_chip:
      raise ValueError(f"devices: {devices!r} counts TensorCores ({per_chip} per chip); expected "
                       f"a multiple of {per_chip}")
    count //= per_chip
  if count is None:
    sizes = [] if mesh_cfg is None else [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
    count = int(np.prod(sizes)) if sizes and -1 not in sizes else 1
  return _kind_devices(kind, count)


def resolve_mesh(mesh_cfg: Any, n: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) for n devices from cfg.mesh (one field may be -1 = the rest)."""
  from tokenrl.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  return mesh_lib.mesh_sizes(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, n,
                             available="the plan is for")


# ---------------------------------------------------------------------------------------------
# Model and state shapes


def model_config(cfg: ml_collections.ConfigDict):
  """The ModelConfig a run of `cfg` builds, without loading or creating weights.

  model.hf_path with a config.json: that; else a named model.preset; else the 'tiny' preset
  shaped by model.* with the vocabulary of data.tokenizer (as tokenrl.train.setup does).
  """
  from tokenrl import models
  m = cfg.model
  if m.hf_path and os.path.isfile(os.path.join(m.hf_path, "config.json")):
    return models.read_hf_config(m.hf_path)
  if m.preset != "tiny":
    return models.get_preset(m.preset)
  if m.hf_path:
    raise ValueError(f"model.hf_path={m.hf_path!r} has no config.json and model.preset is 'tiny': "
                     "set model.preset to the model's preset (e.g. 'qwen3-8b') to plan without "
                     "the weights")
  from tokenrl.train.setup import build_tokenizer
  tok = build_tokenizer(cfg)
  return models.tiny(m.family, vocab_size=tok.vocab_size, dim=m.dim, num_layers=m.num_layers,
                     num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, mlp_dim=m.mlp_dim,
                     max_seq_len=m.max_seq_len, pad_id=tok.pad_id, bos_id=tok.bos_id,
                     eos_ids=tuple(tok.eos_token_ids))


def _schedule_steps(cfg: ml_collections.ConfigDict) -> int:
  """A schedule length build_optimizer accepts (>= warmup); memory does not depend on it."""
  return max(cfg.train.max_steps, cfg.optimizer.warmup_steps, 1)


@functools.lru_cache(maxsize=32)
def _abstract_state(config, dtype_name: str, optimizer_json: str, total_steps: int, sft: bool):
  """eval_shape of the TrainState (RL optimizer, or the SFT warm-up's AdamW when `sft`)."""
  from tokenrl.models import transformer
  from tokenrl.optim import build_optimizer
  from tokenrl.train.steps import create_state
  if sft:  # as tokenrl.train.phases.sft_optimizer: AdamW (mu, nu in the param dtype)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.0))
  else:
    tx = build_optimizer(ml_collections.ConfigDict(json.loads(optimizer_json)), total_steps)
  return jax.eval_shape(lambda k: create_state(transformer.init_params(config, k, _DTYPES[dtype_name]),
                                               tx), jax.random.key(0))


def _abstract_mesh(shape: tuple[int, int, int]) -> jax.sharding.AbstractMesh:
  from tokenrl.models.sharding import MESH_AXES
  return jax.sharding.AbstractMesh(shape, MESH_AXES,
                                   axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _device_bytes(tree: Any, shardings: Any) -> int:
  """Sum over leaves of the bytes of one device's shard."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shard, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
  return total


def _split(size: int, parts: int) -> int:
  """Devices a dimension of `size` is split over: `parts` when it divides, else 1 (replicated)."""
  return parts if parts > 1 and size % parts == 0 else 1


# ---------------------------------------------------------------------------------------------
# The plan


def _validate_cfg(cfg: Any) -> None:
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ValueError(f"cfg must be an ml_collections.ConfigDict, got {type(cfg).__name__}")
  if cfg.model.dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {cfg.model.dtype!r}")


def _estimate(cfg: ml_collections.ConfigDict, devices: Devices):
  """(rows, persistent, rollout, train, problems, shape info) of the estimate (no compile)."""
  from tokenrl.methods.config import resolve_objective
  from tokenrl.data.prompts import bucket_length
  from tokenrl.train import mesh as mesh_lib

  _validate_cfg(cfg)
  opts = resolve_objective(cfg.rl)
  mc = model_config(cfg)
  d, f, t = resolve_mesh(cfg.mesh, devices.count)
  amesh = _abstract_mesh((d, f, t))
  opt_json = cfg.optimizer.to_json()
  # Only the state's shapes matter: an SFT-only run (max_steps 0) still gets a valid schedule.
  state = _abstract_state(mc, cfg.model.dtype, opt_json, _schedule_steps(cfg), False)
  sh = mesh_lib.state_shardings(state, mc, amesh)
  params_b = _device_bytes(state.params, sh.params)
  opt_b = _device_bytes(state.opt_state, sh.opt_state)
  opt_note = f"optimizer.name={cfg.optimizer.name}"
  if cfg.train.sft_steps > 0:
    sft_state = _abstract_state(mc, cfg.model.dtype, opt_json, 1, True)
    sft_b = _device_bytes(sft_state.opt_state,
                          mesh_lib.state_shardings(sft_state, mc, amesh).opt_state)
    if sft_b > opt_b:
      opt_b, opt_note = sft_b, "the SFT warm-up's AdamW (larger than the RL optimizer's)"
  beta = float(opts["beta"] or 0.0)
  ref_b = params_b if beta > 0 else 0

  a = jnp.dtype(_DTYPES[cfg.model.dtype]).itemsize
  L, D, F, Q, K, H, V = (mc.num_layers, mc.dim, mc.mlp_dim, mc.num_heads, mc.num_kv_heads,
                         mc.head_dim, mc.vocab_size)
  b = d * f
  G = int(opts["num_generations"])
  B = int(cfg.data.batch_size)
  N = B * G
  P = int(bucket_length(int(cfg.data.max_prompt_len)))
  T = int(cfg.sampler.max_new_tokens)
  C = P + T
  problems = []
  if C > mc.max_seq_len:
    problems.append(f"prompt bucket {P} + sampler.max_new_tokens {T} = {C} > the model's "
                    f"max_seq_len {mc.max_seq_len}")
  mini = max(int(cfg.train.mini_batches), 1)
  if B % mini:
    problems.append(f"train.mini_batches={mini} does not divide data.batch_size={B} prompt groups")
  n_mb = N // mini
  micro = int(cfg.train.micro_batch_size)
  m = micro if 0 < micro < n_mb else n_mb
  if n_mb % b:
    problems.append(f"a minibatch of N/mini_batches = {n_mb} rows is not divisible by "
                    f"data·fsdp = {b}: the batch cannot be split over the mesh")
  if m != n_mb and n_mb % m:
    problems.append(f"train.micro_batch_size={m} does not divide the minibatch of {n_mb} rows")
  if m < n_mb and m % b:
    problems.append(f"train.micro_batch_size={m} is not a multiple of data·fsdp = {b}: each "
                    "micro-batch is not split over the batch devices")
  if N % b:
    problems.append(f"the rollout of N = {N} rows is not divisible by data·fsdp = {b}")

  # Rollout: KV cache and prefill on rows split over the batch axes.
  rows_roll = N // _split(N, b)
  tq, tk, tf, tv = _split(Q, t), _split(K, t), _split(F, t), _split(V, t)
  kv_b = 2 * L * rows_roll * C * (K // tk) * H * a + rows_roll * C * 4
  per_tok = a * (3 * D + (Q // tq + 2 * (K // tk)) * H + 2 * (F // tf))
  prefill_b = rows_roll * P * per_tok + rows_roll * (Q // tq) * P * C * 8
  decode_b = 0
  decode_note = "same layout as training (fsdp = 1): no copy"
  if f > 1:
    decode_b = _device_bytes(state.params, mesh_lib.param_shardings(
        mc, amesh, mesh_lib.decode_rules()))
    decode_note = "params gathered over fsdp for decoding (tensor split only)"
  if devices.kind == "cpu":  # the CPU sampler also slices the stacked layers once (split_layers)
    decode_b += decode_b or params_b
    decode_note += "; + one per-layer copy (CPU decode layout)"

  # Train step on one micro-batch of n rows per device.
  n = m // _split(m, b)
  S = P + T
  if cfg.model.remat:
    saved = a * D
  else:
    saved = per_tok
  work = 2 * per_tok + 16 * (Q // tq) * S
  act_b = n * S * (L * saved + work) + n * 8 * T * (V // tv)
  grads_b = params_b * (2 if m < n_mb else 1)

  rows = [
      ("persistent", "params", params_b, f"{mc.family}, {cfg.model.dtype}"),
      ("persistent", "optimizer state", opt_b, opt_note),
  ]
  if ref_b:
    rows.append(("persistent", "KL reference params", ref_b, f"rl.beta={beta:g} > 0"))
  from tokenrl.methods import get_method  # pylint: disable=g-import-not-at-top
  method = get_method(opts["objective"])
  section = cfg.rl[method.name] if method.name in cfg.rl else None
  for name, copies in method.frozen_models(section).items():
    rows.append(("persistent", f"frozen {name}", int(params_b * copies),
                 f"rl.objective={method.name}: {copies:g} x params"))
  rows += [
      ("rollout", "KV cache", kv_b, f"N={N} rows (B={B} x G={G}), C={C} (P={P} + T={T})"),
      ("rollout", "decode params", decode_b, decode_note),
      ("rollout", "prefill activations", prefill_b, f"{N // _split(N, b)} rows/device x P={P}"),
      ("train step", "gradients", grads_b,
       "x2: accumulator + micro-batch" if m < n_mb else "one minibatch"),
      ("train step", "activations (estimate)", act_b,
       f"{n} rows/device x S={S}, remat={'on' if cfg.model.remat else 'off'}, "
       f"micro_batch={m} of {n_mb}"),
  ]
  info = dict(config=mc, mesh=(d, f, t), P=P, T=T, n_mb=n_mb, m=m, opts=opts, b=b, N=N, G=G)
  persistent = sum(r[2] for r in rows if r[0] == "persistent")
  return (rows, persistent, kv_b + decode_b + prefill_b, grads_b + act_b,
          tuple(problems), info)


def _compile_step(cfg: ml_collections.ConfigDict, info: dict[str, Any], count: int) -> dict[str, int]:
  """memory_analysis() of the real sharded policy-gradient step lowered on abstract inputs."""
  from tokenrl.objectives import POLICY_LOSS_OPTIONS
  from tokenrl.optim import build_optimizer
  from tokenrl.train import mesh as mesh_lib
  from tokenrl.train import sharded
  from tokenrl.train import steps as steps_lib

  mc, (d, f, t), opts = info["config"], info["mesh"], info["opts"]
  P, T, n_mb = info["P"], info["T"], info["n_mb"]
  mesh = mesh_lib.make_mesh(d, f, t, devices=jax.local_devices()[:count])
  tx = build_optimizer(cfg.optimizer, _schedule_steps(cfg))
  state = jax.eval_shape(lambda k: steps_lib.create_state(
      _init_params(mc, k, _DTYPES[cfg.model.dtype]), tx), jax.random.key(0))
  shardings = mesh_lib.state_shardings(state, mc, mesh)
  bs = mesh_lib.batch_sharding(mesh)
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=bs)
  batch = {"tokens": sds((n_mb, P + T), jnp.int32), "segment_ids": sds((n_mb, P + T), jnp.int32),
           "mask": sds((n_mb, T), jnp.int32), "advantages": sds((n_mb,), jnp.float32),
           "sampler_logp": sds((n_mb, T), jnp.float32),
           "token_weights": sds((n_mb, T), jnp.float32)}
  if opts["num_iterations"] > 1 or cfg.train.mini_batches > 1:
    batch["old_logp"] = sds((n_mb, T), jnp.float32)
  if (opts["beta"] or 0.0) > 0:
    batch["ref_logp"] = sds((n_mb, T), jnp.float32)
  step = steps_lib.make_pg_step(
      tx, config=mc, prompt_len=P, loss_options={k: opts[k] for k in POLICY_LOSS_OPTIONS},
      temperature=opts["temperature"], micro_batch_size=cfg.train.micro_batch_size,
      remat=cfg.model.remat, jit=False)
  jitted = sharded.shard_step(step, shardings, bs)
  stats = jitted.lower(sharded.abstract_state(state, shardings), batch).compile().memory_analysis()
  out = {k: int(getattr(stats, f"{k}_size_in_bytes"))
         for k in ("argument", "output", "alias", "temp", "generated_code")}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def _init_params(config, key, dtype):
  from tokenrl.models import transformer
  return transformer.init_params(config, key, dtype)


def _local_accelerators(count: int) -> bool:
  return (jax.process_count() == 1 and count <= jax.local_device_count()
          and jax.local_devices()[0].platform != "cpu")


def plan(cfg: ml_collections.ConfigDict, devices: int | str | None = None, *,
         compile: bool | None = None, suggest: bool = True) -> Plan:
  """Per-device memory plan of the RL run `cfg` on `devices` (see the module docstring).

  Args:
    cfg: a full run config (tokenrl.config.base_config layout).
    devices: a count of devices like the local ones, a kind ('h100', 'v5e-64', 'a100-80-8',
      'cpu'), or None for the devices of this job.
    compile: also compile the real step on the local devices for XLA's memory analysis.
      None = when `devices` is None and the local devices are accelerators; True = whenever
      the mesh fits the local devices; False = never.
    suggest: when it does not fit, re-plan with single config changes and keep those that fit.

  Raises:
    ValueError: a malformed device spec, a mesh that does not match the device count, an
      unknown model preset or dtype (naming the field).
  """
  _validate_cfg(cfg)
  dev = resolve_devices(devices, cfg.mesh)
  rows, persistent, rollout, train, problems, info = _estimate(cfg, dev)
  notes = []
  compiled = None
  want = _local_accelerators(dev.count) and devices is None if compile is None else compile
  if want:
    if jax.process_count() == 1 and dev.count <= jax.local_device_count():
      compiled = _compile_step(cfg, info, dev.count)
    else:
      notes.append(f"compile skipped: the mesh needs {dev.count} devices, this process has "
                   f"{jax.local_device_count()}")
  train_peak = persistent + train
  if compiled is not None:
    rows = list(rows) + [("train step", "XLA memory_analysis (compiled)", compiled["total"],
                          f"args {_gib(compiled['argument'])} + out {_gib(compiled['output'])} "
                          f"- alias {_gib(compiled['alias'])} + temp {_gib(compiled['temp'])} "
                          f"GiB; replaces the estimate")]
    # The step's arguments hold params + optimizer state; the KL reference lives outside it.
    ref = sum(r[2] for r in rows if r[1] == "KL reference params" or r[1].startswith("frozen "))
    train_peak = compiled["total"] + ref
  peak = max(persistent + rollout, train_peak)
  result = Plan(devices=dev, mesh=info["mesh"], rows=tuple(rows), persistent_bytes=persistent,
                rollout_bytes=rollout, train_bytes=train, compiled=compiled, peak_bytes=peak,
                problems=problems, notes=tuple(notes))
  if suggest and not result.fits:
    result = dataclasses.replace(result, suggestions=tuple(_suggestions(cfg, dev, info)))
  return result


def check_fits(cfg: ml_collections.ConfigDict, devices: int | str | None = None, *,
               compile: bool = False) -> Plan:
  """The plan of `cfg`; raises ValueError(plan.verdict()) when the peak exceeds device memory.

  Called at train start-up (estimate only by default: the real step compiles right after).
  """
  result = plan(cfg, devices, compile=compile)
  if not result.fits:
    raise ValueError(f"{result.verdict()}\n{result.table()}")
  return result


# ---------------------------------------------------------------------------------------------
# Suggestions


def _with(cfg: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]]):
  new = cfg.copy_and_resolve_references()  # cfg itself is untouched
  for key, value in overrides:
    section, field = key.split(".")
    new[section][field] = value
  return new


def _peak(cfg: ml_collections.ConfigDict, dev: Devices) -> int | None:
  """Estimated peak bytes of `cfg` on `dev`, or None when the change breaks the config."""
  try:
    _, persistent, rollout, train, problems, _ = _estimate(cfg, dev)
  except ValueError:
    return None
  if problems:
    return None
  return max(persistent + rollout, persistent + train)


def _first_fit(cfg, dev, candidates) -> Suggestion | None:
  for overrides in candidates:
    peak = _peak(_with(cfg, overrides), dev)
    if peak is not None and peak <= dev.usable_bytes:
      return Suggestion(tuple(overrides), peak)
  return None


def _micro_for(n_mb: int, m: int, b: int) -> int:
  """train.micro_batch_size for batch axes of size b: the smallest multiple of b that is >= m
  and divides the n_mb-row minibatch (0 = the whole minibatch when m is the whole of it)."""
  if m >= n_mb:
    return 0
  for k in range(max(m, b), n_mb):
    if k % b == 0 and n_mb % k == 0:
      return k
  return 0


def _mesh_change(info: dict[str, Any], fsdp: int, tensor: int) -> list[tuple[str, Any]]:
  """Overrides for mesh (data fills the rest), keeping micro-batches split over the new b."""
  n_mb, m = info["n_mb"], info["m"]
  out: list[tuple[str, Any]] = [("mesh.data", -1), ("mesh.fsdp", fsdp), ("mesh.tensor", tensor)]
  micro = _micro_for(n_mb, m, info["count"] // tensor)
  if micro != (m if m < n_mb else 0):
    out.append(("train.micro_batch_size", micro))
  return out


def _suggestions(cfg: ml_collections.ConfigDict, dev: Devices, info: dict[str, Any]) -> list[Suggestion]:
  """Single changes that fit, each at its mildest value; else the changes together."""
  d, f, t = info["mesh"]
  n, b, n_mb, m, G = dev.count, info["b"], info["n_mb"], info["m"], info["G"]
  heads = info["config"].num_heads
  info = {**info, "count": n}
  fsdp_opts = [k for k in range(f + 1, n // t + 1) if (n // t) % k == 0]
  tensor_opts = [k for k in range(t + 1, min(n // f, heads) + 1)
                 if (n // f) % k == 0 and heads % k == 0]
  micro_opts = [k for k in range(m - 1, 0, -1) if n_mb % k == 0 and k % b == 0]
  groups = [
      [_mesh_change(info, k, t) for k in fsdp_opts],  # more FSDP: the smallest that fits
      [_mesh_change(info, f, k) for k in tensor_opts],  # more tensor parallelism
      [[("model.remat", True)]] if not cfg.model.remat else [],
      [[("train.micro_batch_size", k)] for k in micro_opts],  # the largest that fits
      [[("rl.num_generations", g)] for g in range(G - 1, 1, -1)],
      [[("model.dtype", "bfloat16")]] if cfg.model.dtype == "float32" else [],
  ]
  out = [s for s in (_first_fit(cfg, dev, g) for g in groups if g) if s is not None]
  if out:
    return out
  # Nothing alone: bf16 + remat + all devices on fsdp x tensor + the smallest micro-batch.
  base: list[tuple[str, Any]] = []
  if cfg.model.dtype == "float32":
    base.append(("model.dtype", "bfloat16"))
  if not cfg.model.remat:
    base.append(("model.remat", True))
  combos = []
  for k in [1] + [k for k in range(2, min(n, heads) + 1) if n % k == 0 and heads % k == 0]:
    if n // k >= f:  # fsdp = the remaining devices; micro-batch = one row per device
      micro = _micro_for(n_mb, 1, n // k) if m < n_mb or n_mb > n // k else 0
      combos.append(base + [("mesh.data", 1), ("mesh.fsdp", n // k), ("mesh.tensor", k),
                            ("train.micro_batch_size", micro)])
  fit = _first_fit(cfg, dev, combos)
  return [fit] if fit else []
