"""Per-token log-probabilities and entropies from logits, without an f32 `[N,T,V]` copy.

The XLA path walks over chunks of `chunk_size` token positions: each chunk of logits is sliced
from the (possibly bf16) input, upcast to f32 inside the loop body, reduced over `V` and thrown
away, so the largest f32 temporary is `[chunk_size, V]`. The backward pass recomputes each
chunk's softmax (activation checkpointing per chunk, written as a `custom_vjp`) and writes that
chunk's gradient into the `[M,V]` cotangent buffer in place, so it never holds an f32 `[N,T,V]`
either.

The Pallas path is `tokenrl.kernels.logprobs.token_logprobs_entropy` (one fused pass over `V`),
imported lazily so CPU users never import Pallas.
"""

import functools
import math

import jax
import jax.numpy as jnp

# Tokens per chunk: with V = 152k a chunk's f32 temporaries are 256·152k·4 B ≈ 156 MB each.
DEFAULT_CHUNK_SIZE = 256
IMPLS = ("auto", "xla", "pallas")


def _chunk_stats(x: jax.Array, tgt: jax.Array, temperature: float):
  """f32 log-softmax statistics of one chunk. x [c,V] any float dtype, tgt [c] int."""
  z = x.astype(jnp.float32) / temperature                        # [c,V] f32, lives in one chunk
  lse = jax.nn.logsumexp(z, axis=-1)                             # [c]
  logp_all = z - lse[:, None]                                    # [c,V]
  p = jnp.exp(logp_all)                                          # [c,V]
  entropy = -jnp.sum(p * logp_all, axis=-1)                      # [c]
  v = x.shape[-1]
  in_range = (tgt >= 0) & (tgt < v)
  logp = jnp.take_along_axis(logp_all, jnp.clip(tgt, 0, v - 1)[:, None], axis=-1)[:, 0]
  logp = jnp.where(in_range, logp, jnp.nan)                      # [c]; bad ids are visible
  return logp, entropy, logp_all, p


def _as_bits(x: jax.Array) -> jax.Array:
  """16-bit floats as uint16 on XLA:CPU, so the compiler cannot upcast the whole array.

  XLA:CPU has no native bf16/f16 arithmetic: it rewrites every 16-bit float op, slices
  included, to f32 and then hoists that convert out of the chunk loop, materialising exactly the
  f32 `[M,V]` copy this module exists to avoid. Integer bits are data movement only, so slices
  of them stay 16-bit (one uint16 copy of the input remains on CPU). GPU/TPU slice bf16
  natively and keep the original dtype.
  """
  if jax.default_backend() == "cpu" and x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16)
  return x


def _from_bits(x: jax.Array, dtype) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, dtype) if x.dtype != dtype else x


def _chunk_starts(m: int, c: int):
  """Number of chunks and a function chunk index -> first row; the last chunk is shifted back.

  Shifting the last chunk to start at `m - c` (instead of padding the input) keeps every slice
  inside `[0, m)`, so the `[M,V]` logits are never copied to a padded buffer. Overlapping rows
  are recomputed with identical values and written twice.
  """
  n_chunks = -(-m // c)
  return n_chunks, lambda i: jnp.minimum(i * c, m - c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _chunked(logits2d: jax.Array, targets1d: jax.Array, temperature: float, chunk: int):
  return _chunked_fwd(logits2d, targets1d, temperature, chunk)[0]


def _chunked_fwd(logits2d, targets1d, temperature, chunk):
  m, v = logits2d.shape
  n_chunks, start_of = _chunk_starts(m, chunk)
  bits = _as_bits(logits2d)                                      # [M,V], see _as_bits

  def body(i, carry):
    logp_buf, ent_buf = carry                                    # [M], [M] f32
    s = start_of(i)
    x = _from_bits(jax.lax.dynamic_slice(bits, (s, 0), (chunk, v)), logits2d.dtype)
    t = jax.lax.dynamic_slice(targets1d, (s,), (chunk,))         # [c]
    logp, ent, _, _ = _chunk_stats(x, t, temperature)
    return (jax.lax.dynamic_update_slice(logp_buf, logp, (s,)),
            jax.lax.dynamic_update_slice(ent_buf, ent, (s,)))

  init = (jnp.zeros((m,), jnp.float32), jnp.zeros((m,), jnp.float32))
  out = jax.lax.fori_loop(0, n_chunks, body, init)
  return out, (logits2d, targets1d)


def _chunked_bwd(temperature, chunk, res, g):
  logits2d, targets1d = res
  g_logp, g_ent = g                                              # [M], [M] f32
  m, v = logits2d.shape
  n_chunks, start_of = _chunk_starts(m, chunk)
  bits = _as_bits(logits2d)

  def body(i, grad_buf):                                         # grad_buf [M,V] like `bits`
    s = start_of(i)
    x = _from_bits(jax.lax.dynamic_slice(bits, (s, 0), (chunk, v)), logits2d.dtype)
    t = jax.lax.dynamic_slice(targets1d, (s,), (chunk,))
    gl = jax.lax.dynamic_slice(g_logp, (s,), (chunk,))
    ge = jax.lax.dynamic_slice(g_ent, (s,), (chunk,))
    _, ent, logp_all, p = _chunk_stats(x, t, temperature)
    onehot = (jnp.arange(v)[None, :] == t[:, None]).astype(jnp.float32)
    # z = x/τ.  ∂logp_y/∂z_v = 1[v=y] − p_v ;  ∂H/∂z_v = −p_v (log p_v + H).
    dz = gl[:, None] * (onehot - p) - ge[:, None] * p * (logp_all + ent[:, None])
    dx = _as_bits((dz / temperature).astype(logits2d.dtype))
    return jax.lax.dynamic_update_slice(grad_buf, dx, (s, 0))

  grad = jax.lax.fori_loop(0, n_chunks, body, jnp.zeros_like(bits))
  return _from_bits(grad, logits2d.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
# Jitted as a unit so eager callers compile the loop once per shape (inlined under an outer jit).
_chunked_jit = jax.jit(_chunked, static_argnums=(2, 3))


def _pallas_available() -> bool:
  try:
    from tokenrl.kernels import logprobs as _  # noqa: F401  pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return True


def token_logprobs(
    logits: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[jax.Array, jax.Array]:
  """Log-probability of each target token and entropy of each next-token distribution.

  With `z = logits / τ` at one position (a `[V]` row) and `y` the target token id:

      log π(y) = z_y − log Σ_v exp(z_v)                       (log-softmax, gathered at y)
      H        = −Σ_v π(v) log π(v),   π = softmax(z)         (entropy of the full distribution)

  Symbols: `τ` = `temperature` (the sampler's temperature, so `log π` is the log-prob of the
  distribution actually sampled from, as in verl/TRL); `V` = vocabulary size. Shapes:
  `logits [..., T, V]` (typically `[N,T,V]`, any float dtype, bf16 included), `targets [..., T]`
  int; outputs `logp [..., T]` and `entropy [..., T]`, both f32. There is no reduction over
  positions: padding positions are computed like any other and masked by the caller.

  Accumulation is in f32 and no f32 copy of the `[N,T,V]` logits is ever materialised: the
  XLA path processes `chunk_size` positions at a time (f32 temporaries are `[chunk_size, V]`)
  and its backward recomputes each chunk (per-chunk checkpointing). Differentiable with respect
  to `logits` (reverse mode); `targets` and `temperature` are constants.

  Args:
    logits: `[..., T, V]` unnormalised scores.
    targets: `[..., T]` integer token ids in `[0, V)`; an id outside gives `logp = NaN`.
    temperature: `τ > 0`, a Python float.
    impl: `'xla'` (chunked jnp), `'pallas'` (`tokenrl.kernels.logprobs`), or `'auto'`: Pallas
      on GPU/TPU when the kernel module imports, the chunked XLA path otherwise (always on CPU).
    chunk_size: positions per chunk for the XLA path.

  Returns:
    `(logp, entropy)`, each `[..., T]` f32.
  """
  if logits.ndim < 2:
    raise ValueError(f"logits: expected shape [..., T, V] (ndim >= 2), got {logits.shape}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits: expected a floating dtype, got {logits.dtype}")
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"targets: expected shape {logits.shape[:-1]} (logits without V), "
                     f"got {targets.shape}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets: expected an integer dtype, got {targets.dtype}")
  try:
    temperature = float(temperature)   # static: it fixes the compiled program
  except TypeError as e:               # a traced array
    raise ValueError(f"temperature: expected a Python float > 0, got {temperature!r}") from e
  if not temperature > 0:
    raise ValueError(f"temperature: expected a Python float > 0, got {temperature!r}")
  if impl not in IMPLS:
    raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")

  lead, v = logits.shape[:-1], logits.shape[-1]
  m = math.prod(lead)
  if m == 0:
    empty = jnp.zeros(lead, jnp.float32)
    return empty, empty
  logits2d = logits.reshape(m, v)                                # [M,V], M = N·T; a bitcast
  targets1d = targets.reshape(m)                                 # [M]

  if impl == "auto":
    use_pallas = jax.default_backend() in ("gpu", "tpu") and _pallas_available()
    impl = "pallas" if use_pallas else "xla"
  if impl == "pallas":
    # Imported here: the kernel module pulls in Pallas, which CPU-only users never need.
    from tokenrl.kernels import logprobs as kernel  # pylint: disable=g-import-not-at-top
    logp, entropy = kernel.token_logprobs_entropy(
        logits2d, targets1d, float(temperature), impl="pallas")
  else:
    logp, entropy = _chunked_jit(logits2d, targets1d, float(temperature), min(chunk_size, m))
  return logp.reshape(lead), entropy.reshape(lead)


LOGPROB_FNS = {"token_logprobs": token_logprobs}
