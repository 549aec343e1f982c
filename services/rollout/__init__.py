"""Rollout actors on Ray: whole episodes as numpy transition blocks for the learner, policy
weights out through Ray's object store (pool.py). Two interchangeable backends run the same
policy network: plain Ray actors (actors.py) and RLlib env runners (runners.py, module.py)."""

from services.rollout.episodes import EpisodeBlock
from services.rollout.module import save_policy_module
from services.rollout.pool import BACKENDS, DEFAULT_BACKEND, RolloutPool
from services.rollout.spec import RolloutSpec

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "EpisodeBlock", "RolloutPool", "RolloutSpec",
           "save_policy_module"]
