"""Whole episodes of an agent acting as it does in training, in a simulator of their own:
the held-out episodes of the diagnostics and the oracle's on-policy transitions."""

from __future__ import annotations

import numpy as np
import torch

from edis_core.agents.base import Agent
from edis_core.episodes import EnvStepper
from edis_core.training.envs import ActionScaler, make_env
from edis_core.transitions import Transitions


def collect_episodes(agent: Agent, env_id: str, scaler: ActionScaler, transitions: int,
                     seed: int) -> Transitions:
    """Whole episodes of `agent` acting as it does in training (exploration on), at least
    `transitions` rows; actions in the agent's [-1, 1], as the buffers hold them. `seed`
    sets the env and the exploration noise, so the same seed gives the same episodes
    whatever the caller drew before."""
    if transitions < 1:
        raise ValueError(f"transitions must be >= 1, got {transitions}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _episodes(agent, env_id, scaler, transitions, seed)


def _episodes(agent: Agent, env_id: str, scaler: ActionScaler, transitions: int,
              seed: int) -> Transitions:
    env = make_env(env_id, seed)
    stepper = EnvStepper(env, scaler.to_env)

    def policy(obs: np.ndarray) -> np.ndarray:
        return agent.act(obs[None].astype(np.float32), deterministic=False)[0]

    episodes: list[Transitions] = []
    try:
        while sum(map(len, episodes)) < transitions:
            # Seeded once: the env's own stream starts the episodes after the first.
            episodes.append(stepper.episode(policy, seed=None if episodes else seed)
                            .transitions())
    finally:
        env.close()
    return Transitions.concatenate(episodes)
