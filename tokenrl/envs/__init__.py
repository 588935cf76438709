"""Embedded multi-turn environments (plain Python, no downloads) for agent-style methods (POAD).

  arith_chain   K turns of running arithmetic; each action is a number + delimiter, reward per
                action (see arith_chain.py)

`episodes.assemble_episodes` turns action/observation segments into the [N,T] training arrays
(observation tokens are outside the loss mask).
"""

from tokenrl.envs.arith_chain import ArithChainEnv
from tokenrl.envs.arith_chain import ENVS
from tokenrl.envs.episodes import EpisodeArrays
from tokenrl.envs.episodes import Segment
from tokenrl.envs.episodes import assemble_episodes

__all__ = ["ArithChainEnv", "ENVS", "EpisodeArrays", "Segment", "assemble_episodes"]
