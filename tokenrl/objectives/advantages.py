"""Advantage estimators: group-relative (GRPO / Dr.GRPO), RLOO, and GAE with a value head.

Groups are contiguous: the `N = B·G` sequences are ordered prompt by prompt, so `rewards [N]`
reshapes to `[B,G]` and sequence `i` belongs to group `i // G`.
"""

import jax
import jax.numpy as jnp

SCALE_REWARDS = ("group", "batch", "none")


def _check_rewards(rewards: jax.Array, group_size: int) -> int:
  if rewards.ndim != 1:
    raise ValueError(f"rewards: expected shape [N] (N = B·G), got {rewards.shape}")
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
  if rewards.shape[0] % group_size:
    raise ValueError(f"rewards: expected N divisible by group_size G={group_size}, "
                     f"got shape {rewards.shape}")
  return rewards.shape[0] // group_size


def group_relative_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    scale_rewards: str = "group",
    epsilon: float = 1e-6,
    ddof: int = 1,
) -> jax.Array:
  """Group-relative advantage of GRPO (DeepSeekMath, Shao et al. 2024) and Dr.GRPO.

      A[i] = (r[i] − μ_g) / (σ + ε)     scale_rewards='group': σ = σ_g, the std of group g(i)
                                         scale_rewards='batch': σ = std of all N rewards
      A[i] =  r[i] − μ_g                 scale_rewards='none' (Dr.GRPO, Liu et al. 2025)

  `r` = `rewards [N]`; `g(i) = i // G` with `G` = `group_size`; `μ_g` = mean of the G rewards of
  group g; std uses `ddof` (1 = unbiased, as verl and TRL; 0 = population); `ε` = `epsilon`
  (verl 1e-6, TRL 1e-4). A group whose rewards are all equal gets `A = 0`. Option names follow
  TRL's `scale_rewards`. Returns `[N]` f32 (f64 for f64 rewards), no reduction.

  Exact equivalences: with `ε` = 1e-6 and 'group'/'none' this is verl's
  `compute_grpo_outcome_advantage` (`norm_adv_by_std_in_grpo` True/False); with `ε` = 1e-4 it
  is TRL's GRPO advantage for `scale_rewards` 'group'/'batch'/'none'.

  Group size 1 (`G = 1`, one sample per prompt): verl's convention, a singleton group has
  `μ_g = 0` and `σ_g = 1`, so `A = r/(1 + ε)` ('group'), `r/(σ_batch + ε)` ('batch') or `r`
  ('none'): plain REINFORCE on the raw reward, never NaN (the unbiased std of one sample is
  0/0). TRL refuses `num_generations < 2` for training; at evaluation with one generation it
  uses `μ_g = r`, `σ_g = 0`, i.e. `A = 0`.
  """
  b = _check_rewards(rewards, group_size)
  if scale_rewards not in SCALE_REWARDS:
    raise ValueError(f"scale_rewards: expected one of {SCALE_REWARDS}, got {scale_rewards!r}")
  if ddof not in (0, 1):
    raise ValueError(f"ddof: expected 0 or 1, got {ddof!r}")
  r = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32)).reshape(b, group_size)  # [B,G]
  if group_size == 1:
    centred = r                                                 # verl: singleton μ_g = 0, σ_g = 1
    if scale_rewards == "group":
      centred = centred / (1.0 + epsilon)
  else:
    centred = r - r.mean(axis=1, keepdims=True)                 # [B,G]
    if scale_rewards == "group":
      if ddof >= group_size:
        raise ValueError(f"group_size: expected > ddof={ddof} for scale_rewards='group', "
                         f"got {group_size}")
      centred = centred / (r.std(axis=1, ddof=ddof, keepdims=True) + epsilon)
  if scale_rewards == "batch":
    if ddof >= r.size:
      raise ValueError(f"rewards: expected N > ddof={ddof} for scale_rewards='batch', "
                       f"got shape {rewards.shape}")
    centred = centred / (r.std(ddof=ddof) + epsilon)
  return centred.reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
  """REINFORCE leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

      A[i] = r[i] − (1/(G−1)) Σ_{j∈g(i), j≠i} r[j]  =  G/(G−1) · (r[i] − μ_g)

  `r` = `rewards [N]`, `G` = `group_size` ≥ 2, groups contiguous. Returns `[N]` f32.
  """
  b = _check_rewards(rewards, group_size)
  if group_size < 2:
    raise ValueError(f"group_size: expected >= 2 for a leave-one-out baseline, got {group_size}")
  r = rewards.astype(jnp.float32).reshape(b, group_size)        # [B,G]
  baseline = (r.sum(axis=1, keepdims=True) - r) / (group_size - 1)
  return (r - baseline).reshape(-1)


def masked_whiten(x: jax.Array, mask: jax.Array, *, epsilon: float = 1e-8,
                  unbiased: bool = True) -> jax.Array:
  """`(x − mean_m x) / sqrt(var_m x + ε)` over the positions where `mask` is 1; shapes `[N,T]`.

      mean_m x = Σ m·x / n,   var_m x = Σ m·(x − mean_m x)² / (n − 1)   n = Σ m, `unbiased=True`
                              var_m x = Σ m·(x − mean_m x)² / n         `unbiased=False`, population

  Statistics over all valid tokens of the batch. With the defaults this is verl's
  `masked_whiten(values, mask)` (shift_mean=True; its `masked_var` applies Bessel's correction
  n/(n−1)) on every valid position; invalid positions are returned as 0 here (verl whitens
  them too), and where n = 1 the result is 0 (verl raises). Returns `x`'s shape,
  f32 (f64 for f64 x).
  """
  if x.shape != mask.shape:
    raise ValueError(f"mask: expected shape {x.shape} (as x), got {mask.shape}")
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(dtype)
  m = mask.astype(dtype)
  n = m.sum()
  mean = (x * m).sum() / jnp.maximum(n, 1.0)
  var = (jnp.square(x - mean) * m).sum() / jnp.maximum(n - 1.0 if unbiased else n, 1.0)
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * m


def gae_advantages(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    gamma: float,
    lam: float,
    *,
    whiten: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation for PPO with a token-level value head (Schulman et al. 2016).

  Backwards over the valid positions t of each row (positions with `mask = 0` are skipped:
  they neither receive an advantage nor break the chain, as verl's
  `compute_gae_advantage_return`):

      δ_t = r_t + γ·V_{t'} − V_t          t' = next valid position (V_{t'} = 0 after the last)
      Â_t = δ_t + γ·λ·Â_{t'}
      R_t = Â_t + V_t                      (the value-head target, "returns")

  `r` = `rewards [N,T]` (usually the task reward on the last valid token, plus any per-token
  shaping), `V` = `values [N,T]`, `m` = `mask [N,T]`, `γ` = `gamma`, `λ` = `lam`. Outputs
  `(advantages [N,T], returns [N,T])` f32, zero where `m = 0`. With `whiten=True` the advantages
  (not the returns) are standardised over the valid tokens of the batch (`masked_whiten` with
  its defaults: unbiased variance, ε = 1e-8), as verl's `compute_gae_advantage_return` always
  does; the default leaves them raw so the estimator stays a pure function of the row. Values
  are constants (stop-gradient).
  """
  if rewards.ndim != 2:
    raise ValueError(f"rewards: expected shape [N,T], got {rewards.shape}")
  if values.shape != rewards.shape:
    raise ValueError(f"values: expected shape {rewards.shape} (as rewards), got {values.shape}")
  if mask.shape != rewards.shape:
    raise ValueError(f"mask: expected shape {rewards.shape} (as rewards), got {mask.shape}")
  r = rewards.astype(jnp.float32)
  v = jax.lax.stop_gradient(values).astype(jnp.float32)
  m = mask.astype(jnp.float32)

  def step(carry, xs):                                          # carry: ([N], [N]) next V, next Â
    next_v, next_adv = carry
    r_t, v_t, m_t = xs                                          # [N] each
    delta = r_t + gamma * next_v - v_t
    adv = delta + gamma * lam * next_adv
    # Invalid positions pass the carry through untouched and emit 0.
    carry = (m_t * v_t + (1 - m_t) * next_v, m_t * adv + (1 - m_t) * next_adv)
    return carry, m_t * adv

  zeros = jnp.zeros(r.shape[:1], jnp.float32)
  _, adv_tn = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)  # [T,N]
  advantages = adv_tn.T                                         # [N,T]
  returns = (advantages + v) * m
  if whiten:
    advantages = masked_whiten(advantages, m)
  return advantages, returns


# Sequence-level estimators take (rewards [N], group_size); GAE is token-level and takes values.
ADVANTAGE_ESTIMATORS = {
    "grpo": group_relative_advantages,
    "rloo": rloo_advantages,
    "gae": gae_advantages,
}
