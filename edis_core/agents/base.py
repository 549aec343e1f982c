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

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The policy network's weights, detached, on the CPU: what rollout actors and the
        saved policy module load."""
        ...

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on every network; returns scalar losses for logging."""
        ...

    def start_online(self) -> None:
        """Called once between the offline and the online phase."""
        ...

    def set_normalization(self, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                          reward_scale: float) -> None:
        """Standardise observations inside every network (so every copy of the policy acts on
        raw observations) and multiply rewards by `reward_scale` inside the update; both are
        part of `state_dict`."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Networks, target networks, optimisers and counters: tensors and plain values only."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StochasticActor(Protocol):
    def sample(self, observations: torch.Tensor, deterministic: bool = False) -> torch.Tensor: ...

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...


class ActorPolicy:
    """The acting half of the Agent interface, for agents whose policy is `self.actor`."""

    actor: StochasticActor
    device: torch.device

    @torch.no_grad()
    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        return self.actor.sample(obs, deterministic).cpu().numpy()

    @torch.no_grad()
    def sample_actions(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor.sample(observations)

    @torch.no_grad()
    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.actor.log_prob(observations, actions)

    def policy_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.actor.state_dict().items()}
