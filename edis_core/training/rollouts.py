"""Whole episodes of an agent acting as it does in training, in a simulator of their own:
the held-out episodes of the diagnostics and the oracle's on-policy transitions."""

from __future__ import annotations

import numpy as np
import torch

from edis_core.agents.base import Agent
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
    episodes, rows = [], 0
    try:
        obs, _ = env.reset(seed=seed)
        columns: dict[str, list] = {key: [] for key in "oarndt"}
        while rows < transitions:
            action = agent.act(obs[None].astype(np.float32), deterministic=False)[0]
            next_obs, reward, terminated, truncated, _ = env.step(scaler.to_env(action))
            for key, value in zip("oarndt", (obs, action, reward, next_obs, terminated,
                                              truncated), strict=True):
                columns[key].append(value)
            obs = next_obs
            if terminated or truncated:
                episodes.append(_episode(columns))
                rows += len(episodes[-1])
                columns = {key: [] for key in columns}
                obs, _ = env.reset()
    finally:
        env.close()
    return Transitions.concatenate(episodes)


def _episode(columns: dict[str, list]) -> Transitions:
    f32 = {key: np.asarray(values, np.float32) for key, values in columns.items()}
    n = len(f32["r"])
    return Transitions(f32["o"], f32["a"], f32["r"], f32["n"], f32["d"], f32["t"],
                       np.full(n, -np.inf, np.float32))
