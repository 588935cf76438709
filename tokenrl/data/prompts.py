"""Host-side glue between examples and the sampler: prompts -> ids -> padded [B,P]; tokens -> text.

`left_pad` rounds the prompt length P up to a bucket, so a jitted prefill compiles once per
bucket (a handful of shapes) instead of once per batch.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from tokenrl.data.tokenizer import Tokenizer

DEFAULT_MIN_BUCKET = 16


def bucket_length(n: int, *, bucket_sizes: Sequence[int] | None = None,
                  multiple: int | None = None, min_bucket: int = DEFAULT_MIN_BUCKET) -> int:
  """The padded length for a longest prompt of `n` tokens.

  Rules: the smallest of `bucket_sizes` that is >= n; else the next multiple of `multiple`;
  else (neither given) the next power of two, at least `min_bucket`.

  Raises:
    ValueError: both rules given, a non-positive size, or `n` above the largest bucket.
  """
  if bucket_sizes is not None and multiple is not None:
    raise ValueError("bucket_length: give bucket_sizes or multiple, not both")
  if bucket_sizes is not None:
    sizes = sorted(int(b) for b in bucket_sizes)
    if not sizes or sizes[0] <= 0:
      raise ValueError(f"bucket_length: bucket_sizes must be positive ints, got {bucket_sizes!r}")
    for b in sizes:
      if b >= n:
        return b
    raise ValueError(f"bucket_length: prompt length {n} exceeds the largest bucket {sizes[-1]}")
  if multiple is not None:
    if multiple <= 0:
      raise ValueError(f"bucket_length: multiple must be > 0, got {multiple}")
    return max(multiple, -(-n // multiple) * multiple)
  p = max(1, int(min_bucket))
  while p < n:
    p *= 2
  return p


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, *,
             bucket_sizes: Sequence[int] | None = None, multiple: int | None = None,
             max_length: int | None = None,
             min_bucket: int = DEFAULT_MIN_BUCKET) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads B id lists to one bucketed length P (prompts end at the same column).

    tokens[b, P - len_b + j] = seqs[b][j] for j < len_b;  tokens[b, :P - len_b] = pad_id.

  Args:
    seqs: B non-empty id lists.
    pad_id: the filler id (masked out downstream; the sampler derives positions from lengths).
    bucket_sizes, multiple, min_bucket: how P is rounded up (see `bucket_length`).
    max_length: a hard cap: any prompt longer raises, and P never exceeds it.

  Returns:
    tokens: int32 [B, P].
    lengths: int32 [B], the unpadded lengths len_b.

  Raises:
    ValueError: empty batch, an empty prompt, or a prompt longer than `max_length` / the
      largest bucket (named by index and length). Prompts are never silently truncated.
  """
  if len(seqs) == 0:
    raise ValueError("left_pad: seqs is empty (expected B >= 1 id lists)")
  lengths = np.asarray([len(s) for s in seqs], dtype=np.int32)
  if (lengths == 0).any():
    raise ValueError(f"left_pad: prompt {int(np.argmin(lengths))} is empty; each prompt needs "
                     ">= 1 token")
  longest = int(lengths.max())
  if max_length is not None and longest > max_length:
    i = int(np.argmax(lengths))
    raise ValueError(f"left_pad: prompt {i} has {longest} tokens > max_length={max_length} "
                     "(prompts are never truncated: raise max_length or shorten the prompt)")
  p = bucket_length(longest, bucket_sizes=bucket_sizes, multiple=multiple, min_bucket=min_bucket)
  if max_length is not None:
    p = min(p, max_length)
  tokens = np.full((len(seqs), p), pad_id, dtype=np.int32)
  for b, s in enumerate(seqs):
    if len(s):
      tokens[b, p - len(s):] = np.asarray(s, dtype=np.int32)
  return tokens, lengths


def tokenize_prompts(tokenizer: Tokenizer, prompts: Sequence[str | Sequence[Mapping[str, Any]]],
                     *, use_chat_template: bool | str = "auto", system_prompt: str | None = None,
                     add_special_tokens: bool = True, where: Sequence[str] | None = None,
                     **template_kwargs: Any) -> list[list[int]]:
  """Ids for each prompt.

  A prompt is a string, or a list of chat messages ({'role', 'content'}). With the chat template
  (use_chat_template=True, or 'auto' and the tokenizer has one) a string becomes
  [{'role': 'system', 'content': system_prompt}?, {'role': 'user', 'content': prompt}] and is
  rendered with add_generation_prompt=True; otherwise the string is encoded as is (with the
  tokenizer's special tokens, e.g. bos, if `add_special_tokens`).

  where: one label per prompt (e.g. 'data.jsonl:7', from `jsonl.where_of`) that prefixes any
    error of that prompt; default 'prompts[i]'.

  Raises:
    ValueError: '<where>: ...' for a message-list prompt without a chat template, a prompt of
      another type, or an encoding/template error (e.g. a character outside the vocabulary).
  """
  if use_chat_template not in (True, False, "auto"):
    raise ValueError(f"tokenize_prompts: use_chat_template must be True, False or 'auto', got "
                     f"{use_chat_template!r}")
  if where is not None and len(where) != len(prompts):
    raise ValueError(f"tokenize_prompts: where has {len(where)} labels for {len(prompts)} prompts")
  out = []
  for i, p in enumerate(prompts):
    label = where[i] if where is not None else f"prompts[{i}]"
    try:
      out.append(_tokenize_one(tokenizer, p, i, use_chat_template, system_prompt,
                               add_special_tokens, template_kwargs))
    except ValueError as e:
      raise ValueError(f"{label}: {e}") from e
    except Exception as e:  # e.g. jinja2.TemplateError: keep its type, add where it happened.
      if hasattr(e, "add_note"):  # Python >= 3.11
        e.add_note(f"while tokenizing {label}")
      raise
  return out


def _tokenize_one(tokenizer: Tokenizer, p: Any, i: int, use_chat_template: bool | str,
                  system_prompt: str | None, add_special_tokens: bool,
                  template_kwargs: Mapping[str, Any]) -> list[int]:
  """The ids of prompt i (see `tokenize_prompts`)."""
  chat = tokenizer.has_chat_template if use_chat_template == "auto" else bool(use_chat_template)
  if isinstance(p, str):
    if not chat:
      return tokenizer.encode(p, add_special_tokens=add_special_tokens)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    messages.append({"role": "user", "content": p})
  elif isinstance(p, (list, tuple)) and all(isinstance(m, Mapping) for m in p):
    if not tokenizer.has_chat_template:
      raise ValueError(f"tokenize_prompts: prompts[{i}] is a message list but the tokenizer "
                       "has no chat template")
    messages = list(p)
  else:
    raise ValueError(f"tokenize_prompts: prompts[{i}] must be a str or a list of message "
                     f"dicts, got {type(p).__name__}")
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       **template_kwargs)


def decode_completions(tokenizer: Tokenizer, tokens: np.ndarray,
                       mask: np.ndarray | None = None) -> list[str]:
  """Completion texts for the reward functions.

  Row n keeps tokens[n, t] for t < first position where mask is 0 (if given), then stops before
  the first id in `tokenizer.eos_token_ids`; the rest is decoded with skip_special_tokens=True.

  Args:
    tokens: int [N, T] completion ids (prompt excluded).
    mask: optional {0,1} [N, T] (1 up to and including EOS, as `Rollout.mask`).

  Returns:
    N strings.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"decode_completions: tokens must be [N, T], got shape {tokens.shape}")
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != tokens.shape:
      raise ValueError(f"decode_completions: mask shape {mask.shape} != tokens shape "
                       f"{tokens.shape} (expected [N, T])")
  eos = np.asarray(tokenizer.eos_token_ids, dtype=np.int64)
  rows = []
  for n in range(tokens.shape[0]):
    row = tokens[n]
    stop = row.shape[0]
    if mask is not None:
      zeros = np.flatnonzero(mask[n] == 0)
      stop = int(zeros[0]) if zeros.size else stop
    hits = np.flatnonzero(np.isin(row[:stop], eos))
    stop = int(hits[0]) if hits.size else stop
    rows.append(row[:stop].tolist())
  return tokenizer.decode_batch(rows, skip_special_tokens=True)
