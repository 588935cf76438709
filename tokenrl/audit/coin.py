"""CoIn (arXiv 2505.13778): auditing a billed hidden-token count without seeing the hidden text.

Spec: shared/specs/analysis-and-auditing.md §4. The commitment itself is in `merkle.py`.

Provider: the hidden trace r_1..r_m is cut into α blocks; a frozen encoder gives block
embeddings [α,E] and token embeddings [m,E]; fingerprint fp_i = Embd(B_j(i)) ‖ Embd(r_i) [m,2E];
the leaves H(fp_i) are committed with the count (merkle.commit).
Auditor: samples s leaf indices < m, checks each opening against the commitment, scores every
sampled block with Model A (do the sampled tokens belong to their block?) and Model B (is the
block relevant to the visible answer?), and a DeepSet verifier maps the per-block (s_a, s_b)
pairs to P(benign).

Exact (hand-checked in tests) vs proposed:
  exact     the tree, proofs, count binding, serialization, detection probabilities
  [paper]   fingerprint = block ‖ token embedding; Models A and B; a learned set verifier;
            focal loss + Adam for the heads; naive and adaptive attacks exist
  [recon]   fixed-size blocks (default 16; `partition(rule='separators')` is the alternative),
            encoder = mean-pooled final-normed hidden states of a tokenrl model over each block
            (or token) encoded alone (or its mean-pooled input embeddings), head form sigmoid(γ·cos(W_a a, W_b b) + β) on
            standardized inputs, the answer side of Model B, the attack fixtures, s, the 0.5
            threshold, every training hyperparameter (the paper's lr 2e-5 fine-tunes an encoder;
            here only small heads train on frozen features, so the default lr is larger).

What the commitment does not do: it stops the count or any leaf from changing after the bill,
and it keeps padding leaves out of every audit; it cannot stop a provider from committing
fabricated leaves in the first place. Catching those is the job of Models A, B and the verifier,
and only for leaves the s samples hit (`detection_probability` is that ceiling).

Array math is pure jnp (jittable); hashing and sampling are on the host.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenrl import models
from tokenrl.audit import merkle

try:  # jax.core.Tracer moved in newer jax releases
  from jax.core import Tracer
except ImportError:  # pragma: no cover
  from jax._src.core import Tracer

DEFAULT_BLOCK_SIZE = 16  # [recon] D1


# ---------------------------------------------------------------------------------------------
# Blocks and fingerprints


def partition(tokens: Any, *, rule: str = "fixed", block_size: int = DEFAULT_BLOCK_SIZE,
              separators: Sequence[int] = ()) -> np.ndarray:
  """block_index int32 [m] of a trace tokens [m]: which block each hidden token belongs to.

  rule='fixed': token i is in block i // block_size (the auditor derives a sampled leaf's block
    from its index alone, so nothing about the partition needs to be trusted).
  rule='separators' [recon]: a block ends after each token in `separators` (e.g. '.' or a
    newline: sentence-like blocks) or after block_size tokens, whichever comes first (the cap
    keeps every block inside the encoder's context). The auditor then groups sampled leaves by
    their revealed block embedding (`audit(..., block_size=None)`).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1 or tokens.size == 0:
    raise ValueError(f"tokens must be one trace [m] with m >= 1, got shape {tokens.shape}")
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  m = tokens.shape[0]
  if rule == "fixed":
    return (np.arange(m) // block_size).astype(np.int32)
  if rule != "separators":
    raise ValueError(f"rule must be 'fixed' or 'separators', got {rule!r}")
  if len(separators) == 0:
    raise ValueError("rule='separators' needs separators (token ids that end a block)")
  out = np.empty(m, np.int32)
  block, size = 0, 0
  for i, t in enumerate(tokens.tolist()):
    out[i] = block
    size += 1
    if t in separators or size == block_size:
      block, size = block + 1, 0
  return out


def fingerprints(block_emb: Any, token_emb: Any, block_index: Any) -> jax.Array:
  """fp [m, 2E] f32: row i = block_emb[block_index[i]] ‖ token_emb[i].

  block_emb [α,E], token_emb [m,E], block_index int [m] with values in [0, α).
  """
  block_emb, token_emb = jnp.asarray(block_emb), jnp.asarray(token_emb)
  block_index = jnp.asarray(block_index)
  if block_emb.ndim != 2 or token_emb.ndim != 2 or block_emb.shape[1] != token_emb.shape[1]:
    raise ValueError(f"block_emb must be [α,E] and token_emb [m,E] with the same E, got "
                     f"{block_emb.shape} and {token_emb.shape}")
  if block_index.shape != token_emb.shape[:1]:
    raise ValueError(f"block_index must be [m] = [{token_emb.shape[0]}] (one block per token), "
                     f"got shape {block_index.shape}")
  if not isinstance(block_index, Tracer) and block_index.size and (
      int(block_index.min()) < 0 or int(block_index.max()) >= block_emb.shape[0]):
    raise ValueError(f"block_index values must be in [0, α={block_emb.shape[0]}), got "
                     f"[{int(block_index.min())}, {int(block_index.max())}]")
  return jnp.concatenate([block_emb[block_index], token_emb], axis=-1).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# The frozen encoder


FEATURES = ("hidden", "input")


def mean_pooled_hidden(params: Any, tokens: jax.Array, lengths: jax.Array, *,
                       config: models.ModelConfig, features: str = "hidden") -> jax.Array:
  """f32 [n, D]: the mean over the first lengths[r] positions of row r, each row encoded alone.

  features='hidden': the final-normed hidden states (right padding via segment ids, so it
    never changes them) -- contextual, what a sentence encoder gives.
  features='input': the input embedding rows, a bag of tokens (no forward pass) [recon].
  tokens int [n, w], lengths int [n] in [1, w].
  """
  valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]  # [n, w]
  if features == "hidden":
    h, _ = models.forward(params, tokens, config=config, segment_ids=valid.astype(jnp.int32),
                          return_hidden=True)  # [n, w, D]
  elif features == "input":
    h = params["embed"][tokens]  # [n, w, D]
  else:
    raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
  total = jnp.sum(jnp.where(valid[..., None], h.astype(jnp.float32), 0.0), axis=1)
  return total / lengths[:, None].astype(jnp.float32)


# One compiled function per (config, features, shape), shared by every encoder instance.
_pool = jax.jit(mean_pooled_hidden, static_argnames=("config", "features"))


def _bucket(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


class FrozenEncoder:
  """Embeddings of token spans from a frozen tokenrl model, pinned for bit-exact recomputation.

  features: 'hidden' (mean-pooled final-normed hidden states, the default) or 'input' (mean-pooled
  input embeddings); see `mean_pooled_hidden`.

  Pinned means: params cast to float32 on the host CPU device, matmuls at 'highest' precision,
  and every span computed in a fixed shape that depends on its own length only ([chunk, w] with
  w = the power of two >= its length, padded rows filled with real-looking length-1 rows), so
  the same span always gives the same bits, whatever is batched beside it (tested).
  """

  def __init__(self, params: Any, *, config: models.ModelConfig, features: str = "hidden",
               chunk: int = 64):
    if chunk < 1:
      raise ValueError(f"chunk must be >= 1, got {chunk}")
    if features not in FEATURES:
      raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    self.config, self.chunk, self.features = config, chunk, features
    self.cpu = jax.devices("cpu")[0]
    self.params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, np.float32), params),
                                 self.cpu)
    self.dim = config.dim
    self._token_cache: dict[int, np.ndarray] = {}

  def spans(self, spans: Sequence[Sequence[int]]) -> np.ndarray:
    """f32 [n, D]: one mean-pooled embedding per span (a list of token ids, length >= 1)."""
    n = len(spans)
    out = np.zeros((n, self.dim), np.float32)
    by_width: dict[int, list[int]] = {}
    for r, span in enumerate(spans):
      if len(span) == 0 or len(span) > self.config.max_seq_len:
        raise ValueError(f"spans[{r}] has {len(span)} tokens; each span needs 1 to "
                         f"max_seq_len={self.config.max_seq_len} (use a smaller block_size)")
      by_width.setdefault(_bucket(len(span)), []).append(r)
    with jax.default_matmul_precision("highest"):
      for w, rows in sorted(by_width.items()):
        for start in range(0, len(rows), self.chunk):
          part = rows[start:start + self.chunk]
          tokens = np.full((self.chunk, w), self.config.pad_id, np.int32)
          lengths = np.ones(self.chunk, np.int32)
          for k, r in enumerate(part):
            tokens[k, :len(spans[r])] = spans[r]
            lengths[k] = len(spans[r])
          emb = _pool(self.params, jax.device_put(tokens, self.cpu),
                      jax.device_put(lengths, self.cpu), config=self.config,
                      features=self.features)
          out[part] = np.asarray(emb)[:len(part)]
    return out

  def tokens(self, ids: Any) -> np.ndarray:
    """f32 [m, D]: each token encoded alone (a function of its id, so computed once per id)."""
    ids = np.asarray(ids).reshape(-1)
    new = sorted({int(t) for t in ids.tolist()} - self._token_cache.keys())
    if new:
      for t, e in zip(new, self.spans([[t] for t in new])):
        self._token_cache[t] = e
    if ids.size == 0:
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self._token_cache[int(t)] for t in ids.tolist()])

  def blocks(self, tokens: Any, block_index: Any) -> np.ndarray:
    """f32 [α, D]: block j = the mean-pooled embedding of its tokens, encoded alone."""
    tokens, block_index = np.asarray(tokens), np.asarray(block_index)
    if block_index.shape != tokens.shape or tokens.ndim != 1:
      raise ValueError(f"tokens and block_index must both be [m], got {tokens.shape} and "
                       f"{block_index.shape}")
    alpha = int(block_index.max()) + 1
    spans = [tokens[block_index == j].tolist() for j in range(alpha)]
    return self.spans(spans)

  def trace(self, tokens: Any, block_index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(block_emb [α,D], token_emb [m,D]) of one trace."""
    return self.blocks(tokens, block_index), self.tokens(tokens)


# ---------------------------------------------------------------------------------------------
# Models A and B: matching heads p = sigmoid(γ·cos(W_a a, W_b b) + β)


def head_init(rng: jax.Array, a: Any, b: Any, *, width: int = 64) -> dict[str, jax.Array]:
  """Matching-head params. a [n,Ea] and b [n,Eb] are training inputs: their per-feature mean
  and scale standardize the inputs (frozen: mean-pooled hidden states share a large common
  direction that would otherwise dominate the cosine)."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  ka, kb = jax.random.split(rng)
  w_a = jax.random.normal(ka, (a.shape[1], width)) / math.sqrt(width)
  if a.shape[1] == b.shape[1]:
    # One shared random projection: with width >= E it nearly keeps angles, so training starts
    # from the frozen encoder's own (standardized) cosine similarity instead of from noise.
    w_b = w_a
  else:
    w_b = jax.random.normal(kb, (b.shape[1], width)) / math.sqrt(width)
  return {
      "w_a": w_a, "w_b": w_b,
      "gamma": jnp.float32(5.0), "beta": jnp.float32(0.0),
      "mean_a": a.mean(0), "scale_a": a.std(0) + 1e-6,
      "mean_b": b.mean(0), "scale_b": b.std(0) + 1e-6,
  }


def head_logits(params: dict[str, jax.Array], a: jax.Array, b: jax.Array) -> jax.Array:
  """γ·cos(W_a â, W_b b̂) + β [...] for a [..., Ea], b [..., Eb] (â, b̂ standardized)."""
  sg = jax.lax.stop_gradient
  za = ((a - sg(params["mean_a"])) / sg(params["scale_a"])) @ params["w_a"]  # [..., W]
  zb = ((b - sg(params["mean_b"])) / sg(params["scale_b"])) @ params["w_b"]
  cos = jnp.sum(za * zb, -1) / (jnp.linalg.norm(za, axis=-1) * jnp.linalg.norm(zb, axis=-1)
                                + 1e-8)
  return params["gamma"] * cos + params["beta"]


def head_apply(params: dict[str, jax.Array], a: jax.Array, b: jax.Array) -> jax.Array:
  """p(match) [...] in (0, 1)."""
  return jax.nn.sigmoid(head_logits(params, a, b))


def _fit(loss_fn: Callable, params: Any, data: tuple[jax.Array, ...], rng: jax.Array, *,
         steps: int, batch_size: int, learning_rate: float) -> Any:
  """Adam on minibatches drawn with replacement, all steps in one jitted lax.scan."""
  n = data[0].shape[0]
  opt = optax.adam(learning_rate)

  @jax.jit
  def run(params, data, rng):
    def step(carry, key):
      params, state = carry
      idx = jax.random.randint(key, (batch_size,), 0, n)
      loss, grads = jax.value_and_grad(loss_fn)(params, *(x[idx] for x in data))
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                       jax.random.split(rng, steps))
    return params, losses

  params, _ = run(params, data, rng)
  return params


def train_head(rng: jax.Array, a: Any, b: Any, labels: Any, *, steps: int = 600,
               batch_size: int = 128, learning_rate: float = 3e-3, width: int = 64,
               focal_gamma: float = 2.0, focal_alpha: float | None = None) -> dict[str, jax.Array]:
  """Train a matching head on pairs a [n,Ea], b [n,Eb], labels [n] (1 = match) with the focal
  loss (mean over the batch) and Adam. Batch 128 as the model card [paper]; the rest [recon]."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  if a.ndim != 2 or b.ndim != 2 or not a.shape[0] == b.shape[0] == labels.shape[0]:
    raise ValueError(f"a [n,Ea], b [n,Eb] and labels [n] must share n, got {a.shape}, "
                     f"{b.shape}, {labels.shape}")
  k_init, k_fit = jax.random.split(rng)

  def loss(params, a, b, y):
    return jnp.mean(optax.sigmoid_focal_loss(head_logits(params, a, b), y, alpha=focal_alpha,
                                             gamma=focal_gamma))

  return _fit(loss, head_init(k_init, a, b, width=width), (a, b, labels), k_fit, steps=steps,
              batch_size=batch_size, learning_rate=learning_rate)


# ---------------------------------------------------------------------------------------------
# The DeepSet verifier: sigmoid(ρ(Σ_j mask_j φ([s_a, s_b]_j)))


def deepset_init(rng: jax.Array, *, width: int = 32) -> dict[str, Any]:
  keys = jax.random.split(rng, 4)
  dense = lambda k, i, o: {"w": jax.random.normal(k, (i, o)) / math.sqrt(i), "b": jnp.zeros(o)}
  return {"phi1": dense(keys[0], 2, width), "phi2": dense(keys[1], width, width),
          "rho1": dense(keys[2], width, width), "rho2": dense(keys[3], width, 1)}


def deepset_verifier_logit(params: dict[str, Any], scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Logit of P(benign) [] from per-block scores [α,2] and mask [α] (1 = block sampled).

  φ and ρ are two-layer ReLU MLPs. Masked blocks contribute exactly 0 (jnp.where, so even NaN
  content is ignored), and the sum makes the output independent of block order.
  """
  if scores.ndim != 2 or scores.shape[1] != 2 or mask.shape != scores.shape[:1]:
    raise ValueError(f"scores must be [α,2] and mask [α], got {scores.shape} and {mask.shape}; "
                     "vmap over a leading trace axis")
  layer = lambda p, x: x @ p["w"] + p["b"]
  h = jax.nn.relu(layer(params["phi2"], jax.nn.relu(layer(params["phi1"], scores))))  # [α, W]
  pooled = jnp.sum(jnp.where(mask[:, None] > 0, h, 0.0), axis=0)  # [W]
  return layer(params["rho2"], jax.nn.relu(layer(params["rho1"], pooled)))[0]


def deepset_verifier_apply(params: dict[str, Any], scores: jax.Array, mask: jax.Array) -> jax.Array:
  """P(benign) [] from per-block scores [α,2] and mask [α]."""
  return jax.nn.sigmoid(deepset_verifier_logit(params, scores, mask))


def train_verifier(rng: jax.Array, scores: Any, masks: Any, labels: Any, *, steps: int = 1500,
                   batch_size: int = 128, learning_rate: float = 3e-3,
                   width: int = 32) -> dict[str, Any]:
  """Train the DeepSet verifier on scores [n,α,2], masks [n,α], labels [n] (1 = benign trace)
  with the logistic loss and Adam [recon]."""
  scores, masks = jnp.asarray(scores, jnp.float32), jnp.asarray(masks, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  if scores.ndim != 3 or scores.shape[2] != 2 or masks.shape != scores.shape[:2] or \
      labels.shape != scores.shape[:1]:
    raise ValueError(f"scores must be [n,α,2], masks [n,α], labels [n]; got {scores.shape}, "
                     f"{masks.shape}, {labels.shape}")
  k_init, k_fit = jax.random.split(rng)

  def loss(params, s, m, y):
    logits = jax.vmap(deepset_verifier_logit, (None, 0, 0))(params, s, m)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))

  return _fit(loss, deepset_init(k_init, width=width), (scores, masks, labels), k_fit,
              steps=steps, batch_size=batch_size, learning_rate=learning_rate)


# ---------------------------------------------------------------------------------------------
# Scoring sampled leaves


def block_scores(head_a: Any, head_b: Any, fps: jax.Array, slot: jax.Array, leaf_mask: jax.Array,
                 answer_emb: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-block (s_a, s_b) [s,2] and block mask [s] from s sampled leaves.

  fps [s,2E] fingerprints; slot int [s] in [0,s): the sampled leaf's block, renumbered
  compactly (`block_slots`); leaf_mask [s] (0 = an unused slot of a trace shorter than s);
  answer_emb [E]. s_a of a block is the mean of Model A over its sampled leaves (block half vs
  token half), s_b the mean of Model B (block half vs the answer); unsampled slots are masked.
  """
  e = fps.shape[-1] // 2
  block, token = fps[:, :e], fps[:, e:]  # [s,E] each
  pa = head_apply(head_a, block, token)  # [s]
  pb = head_apply(head_b, block, jnp.broadcast_to(answer_emb, block.shape))  # [s]
  w = leaf_mask.astype(jnp.float32)
  n = fps.shape[0]
  count = jax.ops.segment_sum(w, slot, num_segments=n)  # [s]
  sums = jax.ops.segment_sum(jnp.stack([pa, pb], -1) * w[:, None], slot, num_segments=n)
  return sums / jnp.maximum(count, 1.0)[:, None], (count > 0).astype(jnp.float32)


def block_slots(indices: Any, fps: Any, *, block_size: int | None) -> tuple[np.ndarray, str]:
  """(slot int32 [s], problem) for sampled leaf indices [s] and their fingerprints [s,2E].

  block_size given (rule='fixed'): the block is index // block_size, and every leaf of one block
  must reveal the same block embedding bytes (an honest provider's do) -- else `problem` names
  the two leaves. block_size None (rule='separators'): leaves are grouped by those bytes.
  """
  indices, fps = np.asarray(indices), np.asarray(fps, np.float32)
  e = fps.shape[1] // 2
  halves = [fp[:e].tobytes() for fp in fps]
  keys = (indices // block_size).tolist() if block_size else halves
  first: dict[Any, int] = {}  # block key -> the first sampled leaf of that block
  slot = np.empty(len(keys), np.int32)
  for k, key in enumerate(keys):
    if key not in first:
      first[key] = k
      slot[k] = len(first) - 1
      continue
    if halves[first[key]] != halves[k]:
      return slot, (f"leaves {indices[first[key]]} and {indices[k]} of block {key} reveal "
                    "different block embeddings")
    slot[k] = slot[first[key]]
  return slot, ""


# ---------------------------------------------------------------------------------------------
# Inflation fixtures [recon]


def inflate_naive(rng: np.random.Generator, tokens: Any, extra: int, *, vocab: Sequence[int],
                  mode: str = "random") -> np.ndarray:
  """tokens [m] followed by `extra` fabricated tokens [m + extra].

  mode='random': ids drawn uniformly from `vocab` (the attacker's pool, e.g. every non-special
  id); mode='repeat': one id of the trace duplicated `extra` times.
  """
  tokens = np.asarray(tokens)
  if extra < 0:
    raise ValueError(f"extra must be >= 0, got {extra}")
  if mode == "random":
    fake = rng.choice(np.asarray(vocab), size=extra)
  elif mode == "repeat":
    fake = np.full(extra, tokens[rng.integers(tokens.size)])
  else:
    raise ValueError(f"mode must be 'random' or 'repeat', got {mode!r}")
  return np.concatenate([tokens, fake.astype(tokens.dtype)])


def inflate_splice(rng: np.random.Generator, tokens: Any, donor: Any, extra: int, *,
                   block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
  """tokens [m] with `extra` tokens of another prompt's trace donor [k] spliced in [m + extra].

  The adaptive attack: whole donor blocks (real text, so Model A sees consistent blocks) are
  inserted at random block boundaries of the trace, so every honest block stays intact; a
  partial last donor block (extra % block_size tokens) goes at the end for the same reason.
  """
  tokens, donor = np.asarray(tokens), np.asarray(donor)
  if donor.size == 0:
    raise ValueError("donor is empty: splicing needs another prompt's trace")
  if extra < 0:
    raise ValueError(f"extra must be >= 0, got {extra}")
  starts = np.arange(0, donor.size, block_size)
  whole, rest = divmod(extra, block_size)
  pieces = [donor[s:s + block_size] for s in rng.choice(starts, size=whole + (rest > 0))]
  # Donor blocks shorter than block_size (a donor's tail) are cycled to full length.
  pieces = [np.resize(p, block_size) for p in pieces]
  honest_blocks = [tokens[s:s + block_size] for s in range(0, tokens.size, block_size)]
  n_aligned = tokens.size // block_size  # boundaries 0..n_aligned keep later blocks aligned
  where = np.sort(rng.integers(0, n_aligned + 1, size=whole))
  out, k = [], 0
  for j in range(len(honest_blocks) + 1):
    while k < whole and where[k] == j:
      out.append(pieces[k])
      k += 1
    if j < len(honest_blocks):
      out.append(honest_blocks[j])
  if rest:
    out.append(pieces[-1][:rest])
  return np.concatenate(out).astype(tokens.dtype)


# ---------------------------------------------------------------------------------------------
# Training pairs for Models A and B from honest encoded traces


@dataclasses.dataclass(frozen=True)
class EncodedTrace:
  """One trace as the provider encodes it: tokens [m], block_index [m], block_emb [α,E],
  token_emb [m,E], and the embedding of the visible answer answer_emb [E]."""
  tokens: np.ndarray
  block_index: np.ndarray
  block_emb: np.ndarray
  token_emb: np.ndarray
  answer_emb: np.ndarray

  @property
  def fingerprints(self) -> np.ndarray:
    """fp [m, 2E] float32: `fingerprints` on the host (a gather and a copy, so the same bits;
    numpy, so traces of every length m share no compile)."""
    return np.concatenate([self.block_emb[self.block_index], self.token_emb], axis=-1)


def encode_traces(encoder: FrozenEncoder, traces: Sequence[Any], answers: Sequence[Any], *,
                  rule: str = "fixed", block_size: int = DEFAULT_BLOCK_SIZE,
                  separators: Sequence[int] = ()) -> list[EncodedTrace]:
  """Partition and encode hidden traces (token ids [m] each) with their visible answers (token
  ids [n] each). Every block and answer of every trace goes through the encoder in one call (a
  span's bits do not depend on its batch, so this equals encoding them one by one)."""
  if len(traces) != len(answers):
    raise ValueError(f"traces and answers must pair up, got {len(traces)} and {len(answers)}")
  tokens = [np.asarray(t, np.int32) for t in traces]
  index = [partition(t, rule=rule, block_size=block_size, separators=separators)
           for t in tokens]
  spans, bounds = [], []
  for t, bi in zip(tokens, index):
    start = len(spans)
    spans += [t[bi == j].tolist() for j in range(int(bi[-1]) + 1)]
    bounds.append((start, len(spans)))
  emb = encoder.spans(spans + [list(np.asarray(a).tolist()) for a in answers])
  return [EncodedTrace(t, bi, emb[lo:hi], encoder.tokens(t), emb[len(spans) + r])
          for r, (t, bi, (lo, hi)) in enumerate(zip(tokens, index, bounds))]


def encode_trace(encoder: FrozenEncoder, tokens: Any, answer: Any, **kw: Any) -> EncodedTrace:
  """`encode_traces` of one hidden trace tokens [m] and its visible answer [n]."""
  return encode_traces(encoder, [tokens], [answer], **kw)[0]


def token_block_pairs(rng: np.random.Generator, traces: Sequence[EncodedTrace],
                      n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Model A's training pairs (block_emb [n',E], token_emb [n',E], label [n']), n' <= n.

  Half positives (a token and its own block), half negatives (a block and a token id drawn
  from another trace that does not occur in that block: token embeddings are functions of the
  id, so "belongs" means "its id occurs in the block").
  """
  a, b, y = [], [], []
  for k in range(n):
    t = traces[rng.integers(len(traces))]
    if k % 2 == 0:
      i = rng.integers(t.tokens.size)
      a.append(t.block_emb[t.block_index[i]]), b.append(t.token_emb[i]), y.append(1.0)
      continue
    j = rng.integers(t.block_emb.shape[0])
    in_block = set(t.tokens[t.block_index == j].tolist())
    for _ in range(100):
      o = traces[rng.integers(len(traces))]
      i = rng.integers(o.tokens.size)
      if int(o.tokens[i]) not in in_block:
        break
    else:
      continue  # a block holding every token drawn: no clean negative for it (n' < n)
    a.append(t.block_emb[j]), b.append(o.token_emb[i]), y.append(0.0)
  return np.stack(a), np.stack(b), np.asarray(y, np.float32)


def block_answer_pairs(rng: np.random.Generator, traces: Sequence[EncodedTrace],
                       n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Model B's training pairs (block_emb [n,E], answer_emb [n,E], label [n]): half a block with
  its own trace's answer, half a block with another trace's answer."""
  if len(traces) < 2:
    raise ValueError(f"traces needs at least 2 traces for negatives, got {len(traces)}")
  a, b, y = [], [], []
  for k in range(n):
    ti = rng.integers(len(traces))
    oi = ti if k % 2 == 0 else (ti + 1 + rng.integers(len(traces) - 1)) % len(traces)
    t = traces[ti]
    a.append(t.block_emb[rng.integers(t.block_emb.shape[0])])
    b.append(traces[oi].answer_emb)
    y.append(1.0 if k % 2 == 0 else 0.0)
  return np.stack(a), np.stack(b), np.asarray(y, np.float32)


# ---------------------------------------------------------------------------------------------
# Sampling: detection probability [derived]


def _check_counts(m: int, fake: int, s: int) -> None:
  if m < 1 or not 0 <= fake <= m:
    raise ValueError(f"need m >= 1 and 0 <= fake <= m, got m={m}, fake={fake}")
  if s < 0:
    raise ValueError(f"s must be >= 0, got {s}")


def detection_probability(m: int, fake: int, s: int, *, replace: bool) -> float:
  """P(at least one of s sampled leaves is one of `fake` fabricated leaves among m).

  replace=True: 1 − (1 − ρ)^s, ρ = fake/m. replace=False: 1 − C(m−f, s)/C(m, s), computed as
  the product Π_{k<s} (m−f−k)/(m−k) (no huge binomials); needs s <= m.
  """
  _check_counts(m, fake, s)
  if replace:
    return 1.0 - (1.0 - fake / m) ** s
  if s > m:
    raise ValueError(f"without replacement s ({s}) cannot exceed m ({m})")
  miss = 1.0
  for k in range(s):
    miss *= max(m - fake - k, 0) / (m - k)
  return 1.0 - miss


def samples_needed(m: int, fake: int, target: float, *, replace: bool) -> int:
  """The smallest s with detection_probability(m, fake, s) >= target (binary search: it grows
  with s). E.g. ρ = 0.1 and a 95% target need s = 29 with replacement."""
  _check_counts(m, fake, 0)
  if not 0 < target < 1:
    raise ValueError(f"target must be in (0, 1), got {target}")
  if fake == 0:
    raise ValueError("fake is 0: no sample size detects an honest trace")
  if replace:
    hi = 1 if fake == m else math.ceil(math.log1p(-target) / math.log1p(-fake / m)) + 2
  else:
    hi = m - fake + 1
  lo = 1
  while lo < hi:
    mid = (lo + hi) // 2
    if detection_probability(m, fake, mid, replace=replace) >= target:
      hi = mid
    else:
      lo = mid + 1
  return lo


def sample_indices(rng: np.random.Generator, count: int, s: int, *,
                   replace: bool = False) -> np.ndarray:
  """s leaf indices in [0, count) (never a padding leaf); without replacement s <= count."""
  if s < 1 or (not replace and s > count):
    raise ValueError(f"s must be in [1, count={count}] without replacement, got {s}")
  return np.sort(rng.choice(count, size=s, replace=replace))


def auc(scores: Any, labels: Any) -> float:
  """ROC AUC of scores [n] for labels [n] (1 = positive): P(pos > neg) + ½ P(pos = neg)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  if scores.shape != labels.shape or scores.ndim != 1:
    raise ValueError(f"scores and labels must both be [n], got {scores.shape} and {labels.shape}")
  pos, neg = scores[labels], scores[~labels]
  if pos.size == 0 or neg.size == 0:
    raise ValueError(f"labels need both classes, got {pos.size} positive and {neg.size} negative")
  diff = pos[:, None] - neg[None, :]
  return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


# ---------------------------------------------------------------------------------------------
# The end-to-end audit


@dataclasses.dataclass(frozen=True)
class CoinAuditor:
  """Trained Models A and B, the verifier, and the decision rule. block_size: the provider's
  fixed block size (None for rule='separators'); threshold on P(benign) [recon]."""
  head_a: Any
  head_b: Any
  verifier: Any
  block_size: int | None = DEFAULT_BLOCK_SIZE
  threshold: float = 0.5


@dataclasses.dataclass(frozen=True)
class AuditResult:
  """p_benign: the verifier's P(benign) (0 when an opening fails); benign: the decision;
  verified: every opening checked out; reason: why not ('' when verified); indices [s]."""
  p_benign: float
  benign: bool
  verified: bool
  reason: str
  indices: np.ndarray


@jax.jit
def _p_benign(head_a, head_b, verifier, fps, slot, answer_emb):
  scores, mask = block_scores(head_a, head_b, fps, slot, jnp.ones(fps.shape[0]), answer_emb)
  return deepset_verifier_apply(verifier, scores, mask)


def audit(commitment: merkle.Commitment, open_fn: Callable[[np.ndarray], Sequence[merkle.Opening]],
          answer_emb: Any, *, auditor: CoinAuditor, num_samples: int,
          rng: np.random.Generator) -> AuditResult:
  """Audit one billed trace: sample min(s, m) leaves without replacement, ask the provider
  (open_fn(indices) -> openings) for them, verify each against the commitment (count bound,
  index < m, proof), check block consistency, score the blocks and run the verifier.

  A failed check rejects the trace outright (p_benign 0): a provider that cannot open the leaves
  it billed is not given the benefit of the semantic models.
  """
  indices = sample_indices(rng, commitment.count, min(num_samples, commitment.count))
  reject = lambda why: AuditResult(0.0, False, False, why, indices)
  openings = list(open_fn(indices))
  if [o.index for o in openings] != indices.tolist():
    return reject(f"the provider opened {[o.index for o in openings]}, not the sampled "
                  f"{indices.tolist()}")
  for o in openings:
    why = merkle.opening_error(commitment, o)
    if why:
      return reject(why)
  fps = np.stack([np.asarray(o.fingerprint, np.float32) for o in openings])  # [s, 2E]
  if fps.shape[1] != 2 * np.asarray(answer_emb).shape[-1]:
    return reject(f"fingerprints have width {fps.shape[1]}, expected 2E = "
                  f"{2 * np.asarray(answer_emb).shape[-1]}")
  slot, why = block_slots(indices, fps, block_size=auditor.block_size)
  if why:
    return reject(why)
  p = float(_p_benign(auditor.head_a, auditor.head_b, auditor.verifier, jnp.asarray(fps),
                      jnp.asarray(slot), jnp.asarray(answer_emb, jnp.float32)))
  return AuditResult(p, p >= auditor.threshold, True, "", indices)
