"""Rollout sampling: jitted prefill + while_loop decode over an explicit KV cache."""

from tokenrl.rollout.sampler import (DecodeContext, LogitProcessor, SamplerState, bucket_length,
                                     prepare_prompts, sample)
from tokenrl.rollout.sampling import choose_tokens, filter_top_k, filter_top_p

__all__ = ["DecodeContext", "LogitProcessor", "SamplerState", "bucket_length", "prepare_prompts",
           "sample", "choose_tokens", "filter_top_k", "filter_top_p"]
