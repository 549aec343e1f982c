"""The agent interface every base agent implements and EDIS plugs into."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from edis_core.transitions import Batch


class Agent(Protocol):
    """An off-policy agent: acts, updates on a batch, and round-trips its whole state."""

    device: torch.device

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions for a (B, obs_dim) array of observations, as a (B, act_dim) array."""
        ...

    def sample_actions(self, observations: torch.Tensor) -> torch.Tensor:
        """a ~ π(·|s) for a batch of observations (no gradient); EDIS's policy positives."""
        ...

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) per row (no gradient); used by the diagnostics."""
        ...

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on every network; returns scalar losses for logging."""
        ...

    def start_online(self) -> None:
        """Called once between the offline and the online phase."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Networks, target networks, optimisers and counters: tensors and plain values only."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
