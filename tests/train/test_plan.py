"""Memory planner: device specs, hand-counted per-device bytes, verdicts and suggestions, the
compiled cross-check, the CLI, and real presets planned from shapes alone."""

import os
import resource
import subprocess
import sys
import time

import pytest

from tokenrl.config import base_config, hf_gsm8k_config
from tokenrl.train import plan as plan_lib
from tokenrl.train.plan import GIB, check_fits, plan, resolve_devices, resolve_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D, L, Q, K, F = 64, 2, 4, 2, 128
H = D // Q


def _tiny(mesh=(1, 1, 1), **overrides):
  c = base_config()
  c.model.dim, c.model.num_layers, c.model.num_heads, c.model.num_kv_heads = D, L, Q, K
  c.model.mlp_dim = F
  c.data.batch_size, c.rl.num_generations = 4, 4
  c.data.max_prompt_len, c.sampler.max_new_tokens = 32, 8  # prompt bucket 32: C = 40
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  for key, value in overrides.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


def _row(p, name):
  (hit,) = [r[2] for r in p.rows if r[1] == name]
  return hit


def _vocab(cfg):
  return plan_lib.model_config(cfg).vocab_size


@pytest.mark.parametrize("spec,kind,count,gib", [
    ("v5e-64", "tpu-v5e", 64, 16), ("tpu-v5e-8", "tpu-v5e", 8, 16), ("v5litepod-16", "tpu-v5e", 16, 16),
    ("v4-64", "tpu-v4", 32, 32),  # v4-N counts TensorCores: 2 per chip
    ("v5p-128", "tpu-v5p", 64, 95), ("v6e-8", "tpu-v6e", 8, 32), ("h200-8", "h200", 8, 141),
    ("a100-40", "a100-40", 1, 40), ("a100-80-4", "a100-80", 4, 80), ("H100", "h100", 1, 80),
])
def test_device_specs(spec, kind, count, gib, monkeypatch):
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  dev = resolve_devices(spec)
  assert (dev.kind, dev.count, dev.memory_bytes) == (kind, count, gib * GIB)
  gpu = kind in ("h100", "h200", "a100-40", "a100-80")
  assert dev.usable_bytes == (int(gib * GIB * 0.75) if gpu else gib * GIB)


def test_kind_without_count_takes_the_fixed_mesh_size():
  assert resolve_devices("v5e", _tiny((1, 8, 1)).mesh).count == 8
  assert resolve_devices("v5e", _tiny((-1, 2, 1)).mesh).count == 1  # -1: no size to take


@pytest.mark.parametrize("spec", ["v5e-0", "tpu-v9", "v4-63", "h100-x", 0])
def test_bad_device_specs(spec):
  with pytest.raises(ValueError, match="devices"):
    resolve_devices(spec)


def test_resolve_mesh():
  assert resolve_mesh(_tiny((-1, 2, 2)).mesh, 16) == (4, 2, 2)
  with pytest.raises(ValueError, match="do not divide"):
    resolve_mesh(_tiny((-1, 3, 1)).mesh, 8)
  with pytest.raises(ValueError, match="has 8 devices, but the plan is for 4"):
    resolve_mesh(_tiny((2, 2, 2)).mesh, 4)


def test_params_and_optimizer_bytes_by_hand():
  cfg = _tiny()
  V = _vocab(cfg)
  # qwen2 tiny (tied embeddings): embed, q/k/v/o, gate/up/down, 2 norms per layer, q/k/v biases,
  # final norm; f32.
  split = V * D + L * (D * Q * H + 2 * D * K * H + Q * H * D + 3 * D * F)  # have an "embed" dim
  whole = L * (2 * D + (Q + 2 * K) * H) + D  # norms and biases: never split over fsdp
  p1 = plan(cfg, "cpu-1")
  assert _row(p1, "params") == 4 * (split + whole)
  # AdamW: mu and nu like the params (+ a few int32 step counts).
  assert 0 <= _row(p1, "optimizer state") - 2 * _row(p1, "params") <= 64
  p2 = plan(_tiny((1, 2, 1)), "cpu-2")  # fsdp = 2 halves every leaf with an embed dim
  assert _row(p2, "params") == 4 * (split // 2 + whole)
  assert _row(p2, "decode params") >= 4 * (split + whole)  # decoding gathers fsdp away


def test_kv_cache_and_reference_by_hand():
  cfg = _tiny((2, 1, 2), rl__beta=0.1)
  p = plan(cfg, "cpu-4")
  N, C = 16, 40
  # 2 (k, v) · L · N/b · C · K/t · H · 4 bytes + pos [N/b, C] int32; b = data·fsdp = 2, t = 2.
  assert _row(p, "KV cache") == 2 * L * (N // 2) * C * (K // 2) * H * 4 + (N // 2) * C * 4
  assert _row(p, "KL reference params") == _row(p, "params")
  assert "KL reference params" not in [r[1] for r in plan(_tiny(), "cpu-1").rows]


def test_remat_micro_batches_and_bf16_lower_memory():
  base = plan(_tiny(), "cpu-1")
  act = lambda p: _row(p, "activations (estimate)")
  assert act(plan(_tiny(model__remat=True), "cpu-1")) < act(base)
  micro = plan(_tiny(train__micro_batch_size=4), "cpu-1")
  assert act(micro) < act(base)
  assert _row(micro, "gradients") == 2 * _row(micro, "params")  # accumulator + micro-batch
  assert _row(base, "gradients") == _row(base, "params")
  bf16 = plan(_tiny(model__dtype="bfloat16"), "cpu-1")
  assert _row(bf16, "params") * 2 == _row(base, "params")


def test_problems_are_reported():
  p = plan(_tiny((8, 1, 1), data__batch_size=3), "cpu-8")
  assert any("not divisible by data·fsdp = 8" in s for s in p.problems)


def test_verdicts_and_suggestions_that_fit(monkeypatch):
  cfg = _tiny()
  p = plan(cfg, "cpu-1")
  assert p.fits and p.verdict() == (f"fits ({p.peak_bytes / GIB:.2f} GiB of "
                                    f"{p.devices.usable_bytes / GIB:.2f} GiB per device)")
  # Shrink the device until it does not fit: every suggestion must fit when re-planned.
  cfg4 = _tiny((-1, 1, 1))
  cap = int(0.7 * plan(cfg4, "cpu-4").peak_bytes)
  small = plan_lib.Devices("cpu", 4, cap, cap)
  monkeypatch.setattr(plan_lib, "resolve_devices", lambda devices, mesh_cfg=None: small)
  p = plan(cfg4, "x")
  assert not p.fits and p.suggestions
  assert p.verdict().startswith(f"does not fit: {p.peak_bytes / GIB:.2f} GiB > ")
  assert "; try: --config." in p.verdict()
  for s in p.suggestions:
    replanned = plan(plan_lib._with(cfg4, s.overrides), "x", suggest=False)
    assert replanned.fits and replanned.peak_bytes == s.peak_bytes
  with pytest.raises(ValueError, match="does not fit"):
    check_fits(cfg4, "x")


def test_compiled_step_memory_analysis():
  """The real sharded step compiled on 8 CPU devices; the estimate is the right magnitude."""
  p = plan(_tiny((2, 2, 2)), 8, compile=True)
  c = p.compiled
  assert c["total"] == c["argument"] + c["output"] - c["alias"] + c["temp"] > 0
  # The donated state (params + optimizer state) is an argument aliased to the output.
  assert c["alias"] >= _row(p, "params") + _row(p, "optimizer state") - 64
  estimate = p.persistent_bytes + p.train_bytes
  assert 0.25 < c["total"] / estimate < 4
  skipped = plan(_tiny((-1, 2, 2)), 16, compile=True)  # 16 > the 8 local devices
  assert skipped.compiled is None and "compile skipped" in skipped.notes[0]


@pytest.mark.parametrize("preset,devices", [("qwen3-8b", "v5e-64"), ("llama3.1-8b", "h100-8")])
def test_real_presets_plan_from_shapes_only(preset, devices):
  cfg = hf_gsm8k_config("", hardware="tpu")
  cfg.model.preset = preset
  cfg.mesh.data, cfg.mesh.fsdp = -1, 8
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, peak so far
  t0 = time.time()
  p = plan(cfg, devices)
  assert time.time() - t0 < 20
  assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * 1024 < GIB // 2
  n_params = _row(p, "params") * 8 / 2  # bf16, split over the 8 fsdp devices (norms aside)
  assert 7.5e9 < n_params < 8.5e9


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tokenrl.cli", "plan", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli_plan_exit_codes():
  ok = _cli("--config", "configs/quickstart.py")
  assert ok.returncode == 0, ok.stderr
  assert "fits (" in ok.stdout and "KV cache" in ok.stdout
  bad = _cli("--config", "configs/qwen2_5_1_5b_8gpu.py", "--config.mesh.data=-1",
             "--devices", "v5e-1")
  assert bad.returncode == 1, bad.stderr
  assert "does not fit:" in bad.stdout


def test_sft_only_run_plans_with_a_long_warmup():
  # max_steps = 0 (an SFT-only run) with optimizer warm-up > 0: the RL schedule is never built,
  # the plan must not fail on it (it did: "warmup_steps (20) must be <= total_steps (1)").
  cfg = _tiny()
  cfg.train.max_steps = 0
  cfg.optimizer.warmup_steps = 20
  assert plan(cfg, 1).peak_bytes > 0


def test_frozen_auxiliary_models_are_planned():
  # RTO keeps pi_dpo and pi_ref frozen on device: two more copies of the params.
  base = plan(_tiny(), 1)
  cfg = _tiny()
  cfg.rl.objective = "rto"
  cfg.rl.rto.dpo_workdir = "/runs/dpo"  # planning reads no weights
  rto = plan(cfg, 1)
  params = _row(base, "params")
  assert rto.persistent_bytes - base.persistent_bytes == 2 * params
