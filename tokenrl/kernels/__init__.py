"""Pallas kernels, imported as ``tokenrl.kernels``; their modules live in the repo's top-level
``kernels/`` folder.

Each module holds a kernel body, a validating wrapper (custom_vjp, block sizes, ``interpret``
flag) and a ``*_reference`` written in plain jnp.

- ``softmax``: the two-pass softmax / log-softmax (Dukhan & Ablavatski 2020) over long rows.
- ``logprobs``: per-token log-prob of the target + entropy over the vocabulary in one read of the
  logits (and a variant fused with the output projection).
- ``paged``: ragged paged attention (decode and chunked prefill, GQA) reading K/V
  through a page table from a shared page pool (the paged KV cache of ``tokenrl.rollout.pages``).
- ``tokenselect``: TokenSelect's criticality scoring (cached keys read once), top-k selection with
  the initial/local windows, and attention over the selected tokens (inference only).

Every public kernel takes ``impl='auto'|'pallas'|'jnp'`` ('xla' = 'jnp'; auto = Pallas on GPU/TPU,
jnp elsewhere) and ``interpret=None`` (interpret when Pallas runs on CPU).

Where the modules come from. ``kernels`` is also the import name of Hugging Face's kernel-hub
distribution, which transformers >= 5 imports at start-up, so the top-level ``kernels/`` folder
has no ``__init__.py``: from the repo root (tests, benchmarks, notebooks, scripts) it is at most a
namespace portion, and any regular ``kernels`` package on ``sys.path`` wins over it. This file is
the package: in a source tree or an editable install it appends ``<repo>/kernels`` to
``__path__``; a built wheel already holds the modules here (setup.py's ``build_py`` copies them).
"""
import os as _os

# A wheel ships logprobs.py next to this file; a source tree / editable install does not. Resolve
# symlinks so a linked tree (benchmarks/accelerator.sh) still finds the repo. Never append a
# folder without our modules (in site-packages, `../../kernels` is the Hugging Face package).
_here = _os.path.dirname(_os.path.realpath(__file__))
_tree = _os.path.join(_os.path.dirname(_os.path.dirname(_here)), "kernels")
if (not _os.path.isfile(_os.path.join(_here, "logprobs.py"))
    and _os.path.isfile(_os.path.join(_tree, "_common.py")) and _tree not in __path__):
  __path__.append(_tree)
del _here, _tree, _os

from tokenrl.kernels.logprobs import token_logprobs_entropy
from tokenrl.kernels.logprobs import token_logprobs_entropy_from_hidden
from tokenrl.kernels.logprobs import token_logprobs_entropy_reference
from tokenrl.kernels.logprobs import top_entropy_mask
from tokenrl.kernels.paged import paged_attention
from tokenrl.kernels.paged import paged_attention_reference
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
    "paged_attention",
    "paged_attention_reference",
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
