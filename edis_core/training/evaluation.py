"""Policy evaluation: mean undiscounted return and the D4RL-style normalised score."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from edis_core.agents.base import Agent
from edis_core.data.scores import normalized_score
from edis_core.episodes import EnvStepper
from edis_core.training.envs import ActionScaler


def evaluate(agent: Agent, env: gym.Env, scaler: ActionScaler, episodes: int,
             seed: int) -> dict[str, float | None]:
    """Run `episodes` deterministic episodes; seeds differ per episode but not per call."""
    stepper = EnvStepper(env, scaler.to_env)

    def policy(obs: np.ndarray) -> np.ndarray:
        return agent.act(obs[None].astype(np.float32), deterministic=True)[0]

    runs = [stepper.episode(policy, seed=seed + episode) for episode in range(episodes)]
    returns, lengths = [run.total_reward for run in runs], [len(run) for run in runs]
    mean_return = float(np.mean(returns))
    env_id = env.spec.id if env.spec is not None else ""
    return {
        "return_mean": mean_return,
        "return_std": float(np.std(returns)),
        "episode_length": float(np.mean(lengths)),
        "normalized_score": normalized_score(env_id, mean_return),
    }
