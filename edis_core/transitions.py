"""Flat transitions: the data type shared by datasets, buffers, agents and the diffusion prior."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
          "mc_returns")


@dataclass
class Transitions:
    """A set of transitions as numpy arrays, one row per transition.

    `terminals` marks a true end of the MDP (no bootstrapping); `timeouts` marks a
    truncation (the episode stops but the value of `next_observations` still counts).
    `mc_returns` is the discounted return-to-go within the episode (Cal-QL's reference
    value); it is -inf where it is unknown (generated transitions), which disables
    Cal-QL's calibration for that row.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    mc_returns: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.observations)
        for f in fields(self):
            value = getattr(self, f.name)
            if len(value) != n:
                raise ValueError(f"Transitions.{f.name} has {len(value)} rows, expected {n}")
        if self.next_observations.shape != self.observations.shape:
            raise ValueError("next_observations and observations differ in shape: "
                             f"{self.next_observations.shape} vs {self.observations.shape}")

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELDS}

    def take(self, index: np.ndarray | slice) -> Transitions:
        return Transitions(**{name: value[index] for name, value in self.as_dict().items()})

    @staticmethod
    def concatenate(parts: list[Transitions]) -> Transitions:
        return Transitions(**{name: np.concatenate([getattr(p, name) for p in parts])
                              for name in FIELDS})

    @staticmethod
    def empty(obs_dim: int, act_dim: int, size: int = 0) -> Transitions:
        return Transitions(
            observations=np.zeros((size, obs_dim), np.float32),
            actions=np.zeros((size, act_dim), np.float32),
            rewards=np.zeros(size, np.float32),
            next_observations=np.zeros((size, obs_dim), np.float32),
            terminals=np.zeros(size, np.float32),
            timeouts=np.zeros(size, np.float32),
            mc_returns=np.full(size, -np.inf, np.float32),
        )


def discounted_returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + γ G_{t+1} within one episode (truncated episodes give a lower bound)."""
    returns = np.zeros(len(rewards), np.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        returns[t] = running
    return returns


@dataclass
class Batch:
    """A training batch of torch tensors on the agent's device (rewards etc. are 1-D)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    mc_returns: torch.Tensor

    @staticmethod
    def from_transitions(t: Transitions, device: torch.device | str = "cpu") -> Batch:
        def to(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, dtype=torch.float32, device=device)

        return Batch(to(t.observations), to(t.actions), to(t.rewards),
                     to(t.next_observations), to(t.terminals), to(t.mc_returns))

    def __len__(self) -> int:
        return self.observations.shape[0]
