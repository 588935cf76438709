"""Auditing hidden tokens (spec: shared/specs/analysis-and-auditing.md §4-§5).

  merkle  SHA-256 hash tree over fingerprint leaves, proofs, the count-bound commitment
  coin    CoIn: fingerprints, frozen encoder, matching heads, DeepSet verifier, attacks, audit
  palace  PALACE: a trained estimator's hidden-length predictions, router, inflation flags

`tokenrl audit coin|palace` wraps them; PALACE's reward and parser live in tokenrl.data.palace
(the RL method rl.objective=palace scores with them).
"""

from tokenrl.audit.coin import (CoinAuditor, audit, detection_probability, fingerprints,
                                inflate_naive, inflate_splice, samples_needed)
from tokenrl.audit.merkle import (Commitment, bind_count, commit, merkle_levels, merkle_proof,
                                  merkle_verify, verify_opening)

__all__ = [
    "CoinAuditor", "audit", "detection_probability", "fingerprints", "inflate_naive",
    "inflate_splice", "samples_needed", "Commitment", "bind_count", "commit", "merkle_levels",
    "merkle_proof", "merkle_verify", "verify_opening",
]
