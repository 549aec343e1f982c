"""The vector the diffusion prior models, x = [s, a, r, s', done], and its normaliser."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from edis_core.transitions import Transitions

PARTS = ("state", "action", "reward", "next_state", "done", "state_action")


class TransitionLayout:
    """Where each part of a transition sits in x = [s, a, r, s', done] (docs/algorithm.md §2).

    With `next_state_delta` the next-state slot holds s' − s instead of s'. The map is linear
    with unit Jacobian, so the clean target p_θ·e^{−E} of Theorem 3.1 and its ratios are the
    same in either coordinate system (the noised ones of §4 are not: noise is added in the
    modelled coordinates); what changes is what a finite model gets right. In locomotion
    s' − s is 2-30x narrower than s' per dim, so the same normalised error is that much
    smaller in s', and a guidance step that moves s carries s' along with it instead of
    leaving it where it was (docs/implementation.md, docs/diagnostics.md).
    """

    def __init__(self, obs_dim: int, act_dim: int, *, next_state_delta: bool):
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.next_state_delta = next_state_delta
        o, a = obs_dim, act_dim
        self.state = slice(0, o)
        self.action = slice(o, o + a)
        self.reward = slice(o + a, o + a + 1)
        self.next_state = slice(o + a + 1, 2 * o + a + 1)
        self.done = slice(2 * o + a + 1, 2 * o + a + 2)
        self.state_action = slice(0, o + a)
        self.dim = 2 * o + a + 2

    def slice(self, part: str) -> slice:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; allowed: {PARTS}")
        return getattr(self, part)

    def index(self, part: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """The dims of `part` as a LongTensor."""
        s = self.slice(part)
        return torch.arange(s.start, s.stop, device=device)

    def mask(self, *parts: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """(D,) bool, True on the dims of the given parts."""
        mask = torch.zeros(self.dim, dtype=torch.bool, device=device)
        for part in parts:
            mask[self.slice(part)] = True
        return mask

    def to_array(self, t: Transitions) -> np.ndarray:
        """(N, D) float32 with done = terminals (a truncation is not an MDP end)."""
        if t.obs_dim != self.obs_dim or t.act_dim != self.act_dim:
            raise ValueError(
                f"transitions have obs/act dims {t.obs_dim}/{t.act_dim}, layout "
                f"expects {self.obs_dim}/{self.act_dim}"
            )
        return np.concatenate(
            [
                t.observations,
                t.actions,
                t.rewards.reshape(-1, 1),
                t.next_observations - t.observations
                if self.next_state_delta
                else t.next_observations,
                t.terminals.reshape(-1, 1),
            ],
            axis=1,
            dtype=np.float32,
        )

    def to_transitions(self, x: np.ndarray) -> Transitions:
        """Inverse of to_array for generated rows: done thresholded at 0.5, timeouts 0 and
        mc_returns -inf (unknown for generated data)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected an (N, {self.dim}) array, got shape {x.shape}")
        x = np.asarray(x, dtype=np.float32)
        n = len(x)
        next_observations = x[:, self.next_state].copy()
        if self.next_state_delta:
            next_observations += x[:, self.state]
        return Transitions(
            observations=x[:, self.state].copy(),
            actions=x[:, self.action].copy(),
            rewards=x[:, self.reward.start].copy(),
            next_observations=next_observations,
            terminals=(x[:, self.done.start] > 0.5).astype(np.float32),
            timeouts=np.zeros(n, np.float32),
            mc_returns=np.full(n, -np.inf, np.float32),
        )


class Normalizer:
    """Per-dimension z-score fit on the dataset; `raw_dims` (the done flag) pass unchanged.

    The std is floored at `min_std` so that constant dimensions map to 0 instead of NaN.
    """

    def __init__(
        self,
        dim: int,
        raw_dims: Sequence[int] = (),
        min_std: float = 1e-6,
        device: torch.device | str = "cpu",
    ):
        if min_std <= 0:
            raise ValueError(f"min_std must be > 0, got {min_std}")
        self.dim, self.raw_dims, self.min_std = dim, tuple(raw_dims), min_std
        self.mean = torch.zeros(dim, device=device)
        self.std = torch.ones(dim, device=device)
        self.fitted = False

    def fit(self, x: np.ndarray | torch.Tensor) -> None:
        data = torch.as_tensor(x, dtype=torch.float64)
        if data.ndim != 2 or data.shape[1] != self.dim or len(data) < 2:
            raise ValueError(f"fit needs an (N >= 2, {self.dim}) array, got {tuple(data.shape)}")
        mean, std = data.mean(0), data.std(0).clamp_min(self.min_std)
        mean[list(self.raw_dims)], std[list(self.raw_dims)] = 0.0, 1.0
        self.mean = mean.float().to(self.mean.device)
        self.std = std.float().to(self.std.device)
        self.fitted = True

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def state_dict(self) -> dict:
        return {"mean": self.mean.cpu(), "std": self.std.cpu(), "fitted": self.fitted}

    def load_state_dict(self, state: dict) -> None:
        device = self.mean.device
        self.mean, self.std = state["mean"].to(device), state["std"].to(device)
        self.fitted = bool(state["fitted"])
