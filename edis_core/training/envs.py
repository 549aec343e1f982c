"""Environment construction and the map between env action units and the agent's [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class ActionScaler:
    """Affine map between the env's Box [low, high] and the agents' [-1, 1]."""

    low: np.ndarray
    high: np.ndarray

    @staticmethod
    def for_space(space: gym.spaces.Space) -> ActionScaler:
        if not isinstance(space, gym.spaces.Box) or not np.all(np.isfinite(space.low)) or not (
            np.all(np.isfinite(space.high))
        ):
            raise ValueError(f"only bounded Box action spaces are supported, got {space}")
        return ActionScaler(space.low.astype(np.float32), space.high.astype(np.float32))

    def to_agent(self, action: np.ndarray) -> np.ndarray:
        scaled = 2.0 * (action - self.low) / (self.high - self.low) - 1.0
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)

    def to_env(self, action: np.ndarray) -> np.ndarray:
        clipped = np.clip(action, -1.0, 1.0)
        return (self.low + (clipped + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)


def make_env(env_id: str, seed: int) -> gym.Env:
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise ValueError(f"cannot create environment {env_id!r}: {err}") from err
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env
