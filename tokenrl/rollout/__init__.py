"""Rollout sampling: jitted prefill + while_loop decode over an explicit KV cache.

`sample` is the plain decoder. Lossless speculative decoders (same output law as `sample`):
`speculative_sample` (exact accept/reject, SpecDec++ draft lengths) with the drafts of
`tokenrl.rollout.drafts`, `spectr_sample` (SpecTr multi-draft), `del_sample` (DEL dynamic exit).
Lossy, evaluation only: `skip_sample` (SkipDecode), `r2r_sample` (R2R small-large routing).
Test-time control: logit processors in `tokenrl.rollout.controls` (CyclicReflex) and
`tokenrl.rollout.budget_guidance`; evaluation-only engines `cntp_sample` (CNTP trials) and
`soft_think_sample` (Soft Thinking concept tokens). `paged_sample`: `sample`'s output from a
paged KV cache with continuous batching (tokenrl.rollout.engine).
"""

from tokenrl.rollout.cntp import CNTP_PUNCTUATION, CNTPStats, cntp_sample, punctuation_ids
from tokenrl.rollout.drafts import LayerDraft, ModelDraft, NGramDraft
from tokenrl.rollout.budget_guidance import BudgetGuidance
from tokenrl.rollout.controls import CyclicReflex, compose, compose_with_states
from tokenrl.rollout.dynamic_exit import del_sample
from tokenrl.rollout.engine import EngineStats, paged_sample
from tokenrl.rollout.r2r import r2r_sample
from tokenrl.rollout.sampler import (DecodeContext, LogitProcessor, SamplerState, bucket_length,
                                     prepare_prompts, sample)
from tokenrl.rollout.sampling import choose_tokens, filter_top_k, filter_top_p
from tokenrl.rollout.skipdecode import skip_sample
from tokenrl.rollout.soft_thinking import SoftThinkInfo, soft_think_sample
from tokenrl.rollout.spectr import spectr_sample
from tokenrl.rollout.speculative import speculative_accept, speculative_sample

__all__ = ["DecodeContext", "LogitProcessor", "SamplerState", "bucket_length", "prepare_prompts",
           "sample", "choose_tokens", "filter_top_k", "filter_top_p", "speculative_sample",
           "speculative_accept", "spectr_sample", "del_sample", "skip_sample", "r2r_sample",
           "LayerDraft", "ModelDraft", "NGramDraft", "CyclicReflex", "BudgetGuidance", "compose",
           "compose_with_states", "cntp_sample", "punctuation_ids", "CNTPStats",
           "CNTP_PUNCTUATION", "soft_think_sample", "SoftThinkInfo", "paged_sample",
           "EngineStats"]
