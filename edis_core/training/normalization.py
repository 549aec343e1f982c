"""CORL's input normalisation, the one the like-for-like comparison uses (Tarasov et al. 2022).

Observations: standardised with the offline dataset's per-dimension mean and std (+ 1e-3),
for both agents. Rewards: IQL on locomotion multiplies them by 1000 / (max − min undiscounted
episode return of the dataset); Cal-QL keeps raw rewards (its Monte-Carlo floor is in raw
units). Both live inside the agent (agents/base.py `set_normalization`), so they apply
identically to offline, online and generated rows, and to every copy of the policy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from edis_core.agents.base import Agent
from edis_core.data.minari_io import OfflineDataset

Normalization = Literal["corl", "none"]
STD_EPS = 1e-3


def observation_statistics(dataset: OfflineDataset) -> tuple[torch.Tensor, torch.Tensor]:
    obs = dataset.transitions.observations.astype(np.float64)
    return (torch.as_tensor(obs.mean(0), dtype=torch.float32),
            torch.as_tensor(obs.std(0) + STD_EPS, dtype=torch.float32))


def reward_scale(dataset: OfflineDataset, agent: str) -> float:
    if agent != "iql":
        return 1.0
    returns = dataset.episode_returns
    spread = float(returns.max() - returns.min()) if len(returns) else 0.0
    return 1000.0 / spread if spread > 0 else 1.0


def normalize_agent(agent: Agent, dataset: OfflineDataset, agent_name: str,
                    mode: Normalization) -> None:
    """Apply `mode` to a freshly built agent (a loaded state brings its own statistics)."""
    if mode == "none":
        return
    mean, std = observation_statistics(dataset)
    agent.set_normalization(mean.to(agent.device), std.to(agent.device),
                            reward_scale(dataset, agent_name))
