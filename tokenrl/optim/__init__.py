"""Optimizers: Lion-κ (an optax GradientTransformation) and the config-driven optimizer builder."""
from tokenrl.optim.builder import build_optimizer
from tokenrl.optim.builder import build_schedule
from tokenrl.optim.builder import optimizer_config
from tokenrl.optim.lion_kappa import KAPPAS
from tokenrl.optim.lion_kappa import kappa_direction
from tokenrl.optim.lion_kappa import lion_kappa
from tokenrl.optim.lion_kappa import scale_by_lion_kappa

__all__ = [
    "KAPPAS",
    "build_optimizer",
    "build_schedule",
    "kappa_direction",
    "lion_kappa",
    "optimizer_config",
    "scale_by_lion_kappa",
]
