"""Shared pieces of the CPU side-by-side benchmarks (sampler.py, rl_step.py).

- `pin_threads(n)`: restrict this process to n cores *before* jax/torch start their thread pools
  (XLA sizes its pool from the affinity mask; torch.set_num_threads does the rest), so both
  libraries get the same number of threads.
- `build_checkpoint(path)`: the tiny Qwen2 model both libraries load, built with `transformers`
  (random init, saved with safetensors) plus a char-level `tokenizers` WordLevel tokenizer.
- `matmul_gflops()`: this machine's measured f32 matmul rate (jitted 2048x2048 @ 2048x2048).
- FLOP counts of the decoder, `run_worker` (one library per subprocess), `env_rows` (the header).

FLOP convention (used by both scripts): a matmul of [m,k]x[k,n] is 2·m·k·n. Per processed token
position the decoder layers cost 2·P_layers, P_layers = L·(D·Q·H + 2·D·K·H + Q·H·D + 3·D·F)
(q, k, v, o, gate, up, down weights; biases, norms, RoPE, softmax are not counted); the
unembedding costs 2·V·D per position whose logits are needed; attention costs 4·Q·H·c per layer
for a query that sees c keys (QKᵀ and PV), with c counting only the causally visible, non-pad
keys (the useful work, not the padded cache slots an implementation may also touch).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny Qwen2 of both benchmarks: D=256, L=4, Q=4, K=2, H=64, F=1024, V=70, tied embeddings.
MODEL_KWARGS = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=70,
                    tie_word_embeddings=True, max_position_embeddings=512, rms_norm_eps=1e-6,
                    pad_token_id=0, eos_token_id=1, bos_token_id=None)
PAD, EOS = "<pad>", "<eos>"
# 68 single characters after the two special tokens: V = 70 ids in all.
CHARS = list("0123456789+-*/=()<>.,:;?!'\" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS")[:68]


def pin_threads(n: int, *, omp_passive: bool = False) -> None:
  """Pin this process to the first n allowed cores and size the OpenMP/MKL pools (call before
  importing jax or torch).

  omp_passive: OMP_WAIT_POLICY=PASSIVE for torch's OpenMP pool. Neither policy is fair on a
  shared machine, which is why headline numbers need a quiet one (torch's default policy):
  - default (spinning): when the load exceeds the cores, a worker spins at every barrier while
    the thread it waits for is descheduled; measured at load ~5 on 2 cores, a
    [256,256]x[256,1024] matmul ran at 8.5 GFLOP/s with 2 threads vs 80 with 1 thread.
  - PASSIVE: workers sleep between ops and pay a wake-up per op; measured at load ~1.5,
    `generate` at batch 64 ran 45% slower than with the default policy.
  On a busy machine `--threads 1` (no barriers at all) gives the most stable ratios.
  """
  cpus = sorted(os.sched_getaffinity(0))
  if n > len(cpus):
    raise ValueError(f"--threads {n} exceeds the {len(cpus)} cores this process may use")
  os.sched_setaffinity(0, cpus[:n])
  os.environ["OMP_NUM_THREADS"] = str(n)
  os.environ["MKL_NUM_THREADS"] = str(n)
  if omp_passive:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def torch_threads(n: int) -> None:
  import torch
  torch.set_num_threads(n)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:  # already set in this process
    pass


def build_tokenizer(path: str) -> None:
  """A char-level WordLevel tokenizer over the model's 70 ids, saved as tokenizer.json."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {PAD: 0, EOS: 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
  assert len(vocab) == MODEL_KWARGS["vocab_size"], len(vocab)
  tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
  hf.padding_side = "left"
  hf.save_pretrained(path)


def build_checkpoint(path: str, seed: int = 0) -> str:
  """Write the tiny Qwen2 checkpoint (f32 safetensors, HF default init) and tokenizer to path."""
  import torch
  import transformers
  config = transformers.Qwen2Config(**MODEL_KWARGS)
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(config).float().eval()
  model.generation_config.eos_token_id = MODEL_KWARGS["eos_token_id"]
  model.generation_config.pad_token_id = MODEL_KWARGS["pad_token_id"]
  model.generation_config.bos_token_id = None
  model.save_pretrained(path)
  build_tokenizer(path)
  return path


def layer_matmul_params(c: Any) -> int:
  """P_layers: weights in the decoder layers' matmuls (tokenrl ModelConfig c)."""
  d, q, k, h, f = c.dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
  return c.num_layers * (d * q * h + 2 * d * k * h + q * h * d + 3 * d * f)


def attention_flops(c: Any, visible_keys: int) -> int:
  """QKᵀ + PV of one query position over `visible_keys` keys, summed over layers."""
  return 4 * c.num_heads * c.head_dim * visible_keys * c.num_layers


def generate_flops(c: Any, n: int, prompt: int, new: int) -> int:
  """Useful FLOPs of sampling `new` tokens for n rows of `prompt` tokens (no padding).

  Positions 0..prompt+new-2 go through the layers (the last sampled token is never fed back),
  the unembedding runs at the `new` positions whose logits pick a token, and position i
  attends to its i+1 predecessors-or-self.
  """
  positions = prompt + new - 1
  layers = 2 * layer_matmul_params(c) * n * positions
  head = 2 * c.vocab_size * c.dim * n * new
  attn = n * sum(attention_flops(c, i + 1) for i in range(positions))
  return layers + head + attn


def matmul_gflops(size: int = 2048, reps: int = 7) -> float:
  """Median GFLOP/s of a jitted f32 [size,size]x[size,size] matmul (2·size³ FLOPs)."""
  import jax
  import jax.numpy as jnp
  x = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  y = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(x, y).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(x, y).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * size**3 / statistics.median(times) / 1e9


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs) if xs else float("nan")


def run_worker(script: str, args: Sequence[str], *, timeout: float = 1800) -> dict[str, Any]:
  """Run `python script --worker ... args` in a fresh process; return its last stdout JSON line."""
  cmd = [sys.executable, script, *args]
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
         "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
         "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
  if proc.returncode != 0:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise RuntimeError(f"worker {' '.join(args)} failed with exit code {proc.returncode}")
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if not lines:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise RuntimeError(f"worker {' '.join(args)} printed no JSON result")
  return json.loads(lines[-1])


def emit(result: dict[str, Any]) -> None:
  """A worker's result: one JSON line on stdout (the last one is read by run_worker)."""
  print(json.dumps(result), flush=True)


def _git(*args: str) -> str:
  try:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "?"


def cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return platform.processor() or "?"


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "trl"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      continue
  return out


def env_rows(threads: int, load_before: Sequence[float],
             omp_passive: bool) -> list[tuple[str, str]]:
  """(field, value) rows of the header table: date, CPU, versions, commit, load, threads."""
  changed = _git("status", "--porcelain", "--untracked-files=no")
  dirty = " (+ uncommitted changes)" if changed else ""
  fmt = lambda load: " / ".join(f"{x:.2f}" for x in load)
  busy = max(load_before[0], os.getloadavg()[0]) > 0.5
  return [
      ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
      ("cpu", f"{cpu_model()} ({os.cpu_count()} cores visible, {threads} used per library)"),
      ("versions", ", ".join(f"{k} {v}" for k, v in versions().items())),
      ("commit", (_git("rev-parse", "--short", "HEAD") or "?") + dirty),
      ("load average 1/5/15 min (start; end)", f"{fmt(load_before)}; {fmt(os.getloadavg())}"
       + (" - NOT QUIET (load > 0.5): absolute numbers and multi-thread ratios are unreliable"
          if busy else "")),
      ("OpenMP wait policy (torch)", "PASSIVE (--omp-passive)" if omp_passive else "default"),
  ]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table."""
  fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t
