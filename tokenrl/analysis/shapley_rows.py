"""Coalition rows for Shapley attribution, the value of an option distribution, and the one
jitted scoring pass that turns rows into values.

Spec: shared/specs/analysis-and-auditing.md §1(b), (f) A1 (absent parts), A2 (value), A4
(render). The game itself (weights, estimators) is in tokenrl/analysis/shapley.py.

A prompt is a list of parts, each a token-id list. The parts whose indices are in `permanent`
are always present (BOS, template text, the final '?'); the others are the players, numbered
0..n-1 in prompt order. A coalition is a bool mask b [n] over the players; its row x_b is:

  absent_mode='drop'         absent parts removed, the rest concatenated (positions 0..len-1).
  absent_mode='placeholder'  each absent part replaced by placeholder tokens [recon]: an int id
                             repeated to the part's length (positions kept), or a token list
                             per player.
  absent_mode='mask'         every part kept at its position; the absent parts' keys are hidden
                             from every query in every layer (the attention-mask hook), each
                             token keeping its own diagonal so no query row is empty [recon].

Rows are right-padded to one width S (segment id 0 past each row's length, never a token value).
The value is read at each row's last present token: its length - 1, or for 'mask' the last
token not hidden (a hidden token sees only itself, so it would read the model at a token with
no context). Attention is causal, so what follows the read position never reaches it.

render='text' [recon] (A4): parts are strings; each coalition's text is the concatenation of
its present parts (absent ones dropped or replaced by a placeholder string) and is tokenized
as one string, so the tokenizer may merge across part boundaries; 'mask' needs token spans and
is refused there.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.models.hooks import Hooks

ABSENT_MODES = ("drop", "placeholder", "mask")
RENDERS = ("tokens", "text")
NORMALIZE = ("options", "vocab", "log")

# Python-side trace counts of the jitted scoring pass (tests check one compile per shape bucket:
# a second call with new values and the same shapes must not add to it).
TRACES: collections.Counter = collections.Counter()


class Coalitions(NamedTuple):
  """M coalition rows, right-padded (host numpy).

  tokens [M,S] int32 (0 past each row's length: a filler, never read, never padding by value);
  lengths [M] int32 real tokens per row; visible [M,S] bool, False on hidden keys ('mask') and
  past the length; read [M] int32, the position whose next-token logits give the value.
  """
  tokens: np.ndarray
  lengths: np.ndarray
  visible: np.ndarray
  read: np.ndarray


def _bucket(length: int) -> int:
  # Widths in multiples of 8 keep compiles few while wasting at most 7 columns per row.
  return max(8, -(-length // 8) * 8)


def check_parts(prompt_parts: Any, permanent: Sequence[int]) -> tuple[list[list[int]], list[int]]:
  """(parts as int lists, player indices); ValueError naming the bad part or index."""
  if isinstance(prompt_parts, (str, bytes)) or not isinstance(prompt_parts, Sequence):
    raise ValueError("prompt_parts must be a list of parts, each a list of token ids, got "
                     f"{type(prompt_parts).__name__}")
  parts = []
  for i, part in enumerate(prompt_parts):
    arr = np.asarray(part)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
      raise ValueError(f"prompt_parts[{i}] must be a 1-D list of int token ids, got "
                       f"{arr.dtype} array of shape {arr.shape}")
    if arr.size == 0:
      raise ValueError(f"prompt_parts[{i}] is empty: remove it or give it tokens (an empty "
                       "player is a null player by definition)")
    if arr.min() < 0:
      raise ValueError(f"prompt_parts[{i}] holds a negative token id {int(arr.min())}")
    parts.append([int(t) for t in arr])
  players = check_permanent(len(parts), permanent)
  return parts, players


def check_permanent(num_parts: int, permanent: Sequence[int]) -> list[int]:
  """Player indices (parts not in `permanent`), in prompt order."""
  fixed = set()
  for p in permanent:
    if not isinstance(p, (int, np.integer)) or not -num_parts <= p < num_parts:
      raise ValueError(f"permanent holds {p!r}: expected part indices in [0, {num_parts}) "
                       f"(there are {num_parts} prompt parts)")
    fixed.add(int(p) % num_parts)
  players = [i for i in range(num_parts) if i not in fixed]
  if not players:
    raise ValueError(f"every one of the {num_parts} prompt parts is permanent: at least one "
                     "part must be a player")
  return players


def check_masks(masks: Any, n: int) -> np.ndarray:
  arr = np.asarray(masks)
  if arr.ndim != 2 or arr.shape[1] != n or arr.dtype != np.bool_:
    raise ValueError(f"masks must be bool [M, n={n}] (one column per player), got {arr.dtype} "
                     f"array of shape {arr.shape}")
  return arr


def coalition_tokens(prompt_parts: Sequence[Sequence[int]], masks: Any, *,
                     permanent: Sequence[int] = (), absent_mode: str = "drop",
                     placeholder: int | Sequence[Sequence[int]] | None = None,
                     max_len: int | None = None) -> Coalitions:
  """Rows x_b of the coalitions `masks` [M,n] (bool, column j = player j) -> `Coalitions`.

  Args:
    prompt_parts: the prompt as parts, each a non-empty list of token ids.
    masks: bool [M,n], True = player present; n = number of parts not in `permanent`.
    permanent: indices into prompt_parts of the parts always present (not players).
    absent_mode: 'drop' | 'placeholder' | 'mask' (module docstring).
    placeholder: 'placeholder' mode only: an int id repeated to each absent part's length, or
      one token list per player (prompt order).
    max_len: row width S (default: the longest row rounded up to a multiple of 8).
  """
  if absent_mode not in ABSENT_MODES:
    raise ValueError(f"absent_mode must be one of {ABSENT_MODES}, got {absent_mode!r}")
  parts, players = check_parts(prompt_parts, permanent)
  masks = check_masks(masks, len(players))
  fill = _placeholders(placeholder, parts, players) if absent_mode == "placeholder" else None
  if absent_mode != "placeholder" and placeholder is not None:
    raise ValueError(f"placeholder is only used with absent_mode='placeholder', got "
                     f"absent_mode={absent_mode!r}")
  slot = {p: j for j, p in enumerate(players)}
  rows, keeps = [], []
  for m, mask in enumerate(masks):
    row, keep = [], []
    for i, part in enumerate(parts):
      present = i not in slot or bool(mask[slot[i]])
      if present or absent_mode == "mask":
        row += part
        keep += [present] * len(part)
      elif absent_mode == "placeholder":
        row += fill[slot[i]]
        keep += [True] * len(fill[slot[i]])
    if not any(keep):
      raise ValueError(f"coalition {m} ({mask.astype(int).tolist()}) leaves no token in the "
                       "prompt: make a part permanent (e.g. BOS or the final question mark) so "
                       "the empty coalition has a token to read the value at")
    rows.append(row)
    keeps.append(keep)
  tokens, lengths = pack_rows(rows, max_len)
  visible = np.zeros(tokens.shape, bool)
  for m, keep in enumerate(keeps):
    visible[m, :len(keep)] = keep
  # Last visible position: the last True of each row (every row has one, checked above).
  read = (tokens.shape[1] - 1 - np.argmax(visible[:, ::-1], axis=1)).astype(np.int32)
  return Coalitions(tokens, lengths, visible, read)


def _placeholders(placeholder: Any, parts: list[list[int]], players: list[int]) -> list[list[int]]:
  if placeholder is None:
    raise ValueError("absent_mode='placeholder' needs placeholder= (an int token id repeated to "
                     "each absent part's length, or one token list per player)")
  if isinstance(placeholder, (int, np.integer)):
    if placeholder < 0:
      raise ValueError(f"placeholder must be a token id >= 0, got {placeholder}")
    return [[int(placeholder)] * len(parts[p]) for p in players]
  fills = [list(map(int, f)) for f in placeholder]
  if len(fills) != len(players):
    raise ValueError(f"placeholder holds {len(fills)} token lists, expected one per player "
                     f"({len(players)})")
  return fills


def pack_rows(rows: Sequence[Sequence[int]], max_len: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [M,S] right-filled with 0, lengths int32 [M])."""
  lengths = np.array([len(r) for r in rows], np.int32)
  longest = int(lengths.max()) if len(rows) else 1
  width = _bucket(longest) if max_len is None else int(max_len)
  if width < longest:
    raise ValueError(f"max_len={max_len} is shorter than the longest coalition row ({longest} "
                     "tokens): raise max_len or leave it None")
  tokens = np.zeros((len(rows), width), np.int32)
  for m, r in enumerate(rows):
    tokens[m, :len(r)] = r
  return tokens, lengths


def coalition_texts(prompt_parts: Sequence[str], masks: Any, *, permanent: Sequence[int] = (),
                    absent_mode: str = "drop", placeholder: str | None = None) -> list[str]:
  """render='text' [recon]: the text of each coalition (present parts concatenated; absent ones
  dropped, or replaced by `placeholder` with absent_mode='placeholder')."""
  if absent_mode == "mask":
    raise ValueError("absent_mode='mask' keeps token positions, so it needs render='tokens' "
                     "(with render='text' there are no token spans to hide)")
  if absent_mode not in ABSENT_MODES:
    raise ValueError(f"absent_mode must be one of {ABSENT_MODES}, got {absent_mode!r}")
  bad = [i for i, p in enumerate(prompt_parts) if not isinstance(p, str)]
  if isinstance(prompt_parts, str) or bad:
    raise ValueError(f"render='text' needs prompt_parts as a list of strings; part {bad[:1]} is "
                     "not a string")
  if absent_mode == "placeholder" and not isinstance(placeholder, str):
    raise ValueError("absent_mode='placeholder' with render='text' needs placeholder= a string")
  players = check_permanent(len(prompt_parts), permanent)
  masks = check_masks(masks, len(players))
  slot = {p: j for j, p in enumerate(players)}
  out = []
  for mask in masks:
    pieces = []
    for i, text in enumerate(prompt_parts):
      if i not in slot or mask[slot[i]]:
        pieces.append(text)
      elif absent_mode == "placeholder":
        pieces.append(placeholder)
    out.append("".join(pieces))
  return out


def text_rows(texts: Sequence[str], encode: Callable[[str], Sequence[int]],
              max_len: int | None = None) -> Coalitions:
  """Coalitions of texts tokenized one by one with `encode` (render='text')."""
  rows = [list(map(int, encode(t))) for t in texts]
  empty = [i for i, r in enumerate(rows) if not r]
  if empty:
    raise ValueError(f"coalition {empty[0]} encodes to no tokens ({texts[empty[0]]!r}): make a "
                     "part permanent so the empty coalition has a token to read")
  tokens, lengths = pack_rows(rows, max_len)
  visible = np.arange(tokens.shape[1])[None] < lengths[:, None]
  return Coalitions(tokens, lengths, visible, lengths - 1)


@dataclasses.dataclass(frozen=True)
class OptionValue:
  """Value of C single-token answer options from next-token logits [M,V] f32 -> [M,C] f32.

  normalize='options' [recon, the default]: v_c = softmax_c(z[o_c]), a distribution over the
    options (Σ_c v_c = 1, so Σ_c φ_{i,c} = 0).
  normalize='vocab': v_c = softmax(z)[o_c], the full-vocabulary probability of each option.
  normalize='log': v_c = log_softmax(z)[o_c], its log-probability.
  Frozen and hashable: it is a static argument of the jitted scoring pass.
  """
  option_ids: tuple[int, ...]
  normalize: str = "options"

  def __call__(self, logits: jax.Array) -> jax.Array:
    ids = jnp.asarray(self.option_ids, jnp.int32)
    z = logits[:, ids]  # [M,C]
    if self.normalize == "options":
      return jax.nn.softmax(z, axis=-1)
    log_p = z - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    return jnp.exp(log_p) if self.normalize == "vocab" else log_p


def option_value_fn(option_ids: Sequence[int], *, normalize: str = "options") -> OptionValue:
  """The value function of spec §1(a) over the single-token options `option_ids` [C]."""
  ids = np.asarray(option_ids)
  if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"option_ids must be a non-empty 1-D list of int token ids [C], got "
                     f"{ids.dtype} array of shape {ids.shape} (multi-token options are not "
                     "supported: give each option's first token)")
  if len(set(ids.tolist())) != ids.size or ids.min() < 0:
    raise ValueError(f"option_ids must be distinct ids >= 0, got {ids.tolist()}")
  if normalize not in NORMALIZE:
    raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
  return OptionValue(tuple(int(i) for i in ids), normalize)


@functools.partial(jax.jit, static_argnames=("config", "value_fn", "hide"))
def _score_chunk(params: Any, tokens: jax.Array, lengths: jax.Array, visible: jax.Array,
                 read: jax.Array, *, config: ModelConfig, value_fn: Callable,
                 hide: bool) -> jax.Array:
  """values [K,C] of K rows: one forward, hidden state at `read`, unembedded there only."""
  TRACES["score"] += 1
  k, s = tokens.shape
  segment_ids = (jnp.arange(s)[None] < lengths[:, None]).astype(jnp.int32)  # [K,S]
  hooks = None
  if hide:
    # Key j visible to every query iff present; each query keeps its own diagonal.
    see = visible[:, None, :] | jnp.eye(s, dtype=bool)[None]  # [K,S,S]
    hooks = Hooks(attn_mask=jnp.broadcast_to(see, (config.num_layers, k, s, s)))
  hidden, _ = transformer.forward(params, tokens, config=config, segment_ids=segment_ids,
                                  return_hidden=True, hooks=hooks)  # [K,S,D]
  at = jnp.take_along_axis(hidden, read[:, None, None], axis=1)  # [K,1,D]
  logits = transformer.unembed(params, at, config=config)[:, 0]  # [K,V] f32
  return value_fn(logits).astype(jnp.float32)


def score_coalitions(params: Any, rows: Coalitions, *, config: ModelConfig, value_fn: Callable,
                     hide: bool, chunk: int = 256) -> np.ndarray:
  """values [M,C] f32 of every row, in fixed-size chunks of one compiled shape.

  The chunk is min(chunk, M rounded up to a power of two), so a small game does not pay for
  256 rows and the number of compiled shapes stays logarithmic; the last chunk is filled with
  copies of row 0 (scored and discarded).
  """
  if not isinstance(chunk, (int, np.integer)) or chunk < 1:
    raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
  try:
    hash(value_fn)
  except TypeError as e:
    raise ValueError("value_fn must be hashable (it is a static jit argument): use "
                     "option_value_fn(...) or a frozen dataclass with __call__") from e
  if not callable(value_fn):
    raise ValueError(f"value_fn must be callable logits [M,V] -> [M,C], got {value_fn!r}")
  m = len(rows.tokens)
  k = min(int(chunk), 1 << max(0, (m - 1).bit_length()))
  total = -(-m // k) * k
  take = np.concatenate([np.arange(m), np.zeros(total - m, np.int64)])
  arrays = [a[take] for a in rows]
  # Dispatch every chunk before reading any back: the host packs while the device computes.
  outs = [_score_chunk(params, *(a[c:c + k] for a in arrays), config=config, value_fn=value_fn,
                       hide=hide) for c in range(0, total, k)]
  return np.concatenate([np.asarray(o) for o in outs])[:m]
