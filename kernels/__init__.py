"""Pallas kernels, installed under the import name ``tokenrl.kernels``.

Each module holds a kernel body, a validating wrapper (custom_vjp, block sizes, ``interpret``
flag) and a ``*_reference`` written in plain jnp.

- ``softmax``: the two-pass softmax / log-softmax (Dukhan & Ablavatski 2020) over long rows.
- ``logprobs``: per-token log-prob of the target + entropy over the vocabulary in one read of the
  logits (and a variant fused with the output projection).
- ``tokenselect``: TokenSelect's criticality scoring (cached keys read once), top-k selection with
  the initial/local windows, and attention over the selected tokens (inference only).

Every public kernel takes ``impl='auto'|'pallas'|'jnp'`` ('xla' = 'jnp'; auto = Pallas on GPU/TPU,
jnp elsewhere) and ``interpret=None`` (interpret when Pallas runs on CPU).
"""
from tokenrl.kernels.logprobs import token_logprobs_entropy
from tokenrl.kernels.logprobs import token_logprobs_entropy_from_hidden
from tokenrl.kernels.logprobs import token_logprobs_entropy_reference
from tokenrl.kernels.logprobs import top_entropy_mask
from tokenrl.kernels.softmax import two_pass_log_softmax
from tokenrl.kernels.softmax import two_pass_log_softmax_reference
from tokenrl.kernels.softmax import two_pass_softmax
from tokenrl.kernels.softmax import two_pass_softmax_reference
from tokenrl.kernels.tokenselect import criticality_votes
from tokenrl.kernels.tokenselect import criticality_votes_reference
from tokenrl.kernels.tokenselect import select_tokens
from tokenrl.kernels.tokenselect import select_tokens_reference
from tokenrl.kernels.tokenselect import selected_attention
from tokenrl.kernels.tokenselect import selected_attention_reference

__all__ = [
    "criticality_votes",
    "criticality_votes_reference",
    "select_tokens",
    "select_tokens_reference",
    "selected_attention",
    "selected_attention_reference",
    "token_logprobs_entropy",
    "token_logprobs_entropy_from_hidden",
    "token_logprobs_entropy_reference",
    "top_entropy_mask",
    "two_pass_log_softmax",
    "two_pass_log_softmax_reference",
    "two_pass_softmax",
    "two_pass_softmax_reference",
]
