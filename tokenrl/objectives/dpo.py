"""DPO and its token-level view ("From r to Q*", Rafailov et al. 2024, arXiv 2404.12358; spec §1).

DPO (Rafailov et al. 2023, arXiv 2305.18290): the implicit reward of a completion is
R = β·Σ_t log π_θ(y_t|s_t)/π_ref(y_t|s_t), and L = mean_b −log σ(R^w − R^l). In the token MDP
(state = prompt + prefix, action = next token) the optimal policy satisfies
β·log π*(a|s)/π_ref(a|s) = Q*(s,a) − V*(s), so each per-token term

  r[b,t] = β·m[b,t]·(lp_θ − lp_ref)[b,t]        [B,T]

is a dense, advantage-like reward whose sum over t is the sequence reward (up to V*(s_0), which
cancels inside Bradley–Terry). `token_rewards` computes it; `credit_map` renders it for one
completion. The loss itself is `tokenrl.objectives.pairwise.pairwise_loss` with c = β.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.objectives.pairwise import masked_log_ratio, pairwise_loss


def token_rewards(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, *,
                  beta: float) -> jax.Array:
  """r[b,t] = β·m[b,t]·(lp_θ − lp_ref)[b,t]  [B,T]: DPO's per-token implicit reward (Q* view).

  logp, ref_logp [B,T] per-token log-probs of one completion under the policy and the frozen
  reference; mask [B,T] 1 on scored tokens. Σ_t r[b,t] is the sequence reward R[b]. Detached.
  """
  return jax.lax.stop_gradient(beta * masked_log_ratio(logp, ref_logp, mask))


def dpo_loss(logp_w: jax.Array, ref_logp_w: jax.Array, mask_w: jax.Array, logp_l: jax.Array,
             ref_logp_l: jax.Array, mask_l: jax.Array, *, beta: float = 0.1,
             label_smoothing: float = 0.0, loss_type: str = "sigmoid",
             reference_free: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DPO: L = mean_b[−(1−ε)·log σ(h) − ε·log σ(−h)], h = β·(Σ_t lr^w − Σ_t lr^l)  (spec §1b).

  Inputs [B,T_w] (chosen) and [B,T_l] (rejected) as in `pairwise_loss`; `loss_type` selects the
  variants ('ipo', 'hinge', 'robust'); `reference_free` sets lp_ref ≡ 0 (uniform reference).
  Returns (scalar loss, aux of `pairwise_loss`).
  """
  if reference_free:
    ref_logp_w, ref_logp_l = jnp.zeros_like(logp_w), jnp.zeros_like(logp_l)
  return pairwise_loss(logp_w, ref_logp_w, mask_w, logp_l, ref_logp_l, mask_l, beta=beta,
                       loss_type=loss_type, label_smoothing=label_smoothing)


def credit_map(tokens: Sequence[str], rewards: Sequence[float] | np.ndarray,
               mask: Sequence[int] | np.ndarray | None = None, *, digits: int = 3) -> str:
  """A one-line credit-assignment map of one completion: 'tok:+0.021 tok:-0.004 ... | Σ=+0.017'.

  tokens: the T token strings (e.g. `[tokenizer.decode([i]) for i in ids]`); rewards [T] from
  `token_rewards` (one row); mask [T] (tokens with mask 0 are left out). Whitespace and
  newlines in tokens are shown escaped (repr without quotes) so the map stays on one line.
  """
  r = np.asarray(rewards, np.float64).reshape(-1)
  if len(tokens) != r.shape[0]:
    raise ValueError(f"tokens: expected {r.shape[0]} strings (one per reward), got {len(tokens)}")
  m = np.ones_like(r) if mask is None else np.asarray(mask).reshape(-1)
  if m.shape != r.shape:
    raise ValueError(f"mask: expected shape {r.shape}, got {m.shape}")
  parts = [f"{repr(t)[1:-1] or '∅'}:{v:+.{digits}f}" for t, v, k in zip(tokens, r, m) if k]
  return " ".join(parts) + f" | Σ={float((r * (m > 0)).sum()):+.{digits}f}"
