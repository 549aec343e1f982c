"""Networks shared by the base agents (MLPs, a batched Q ensemble, a value net, two actors),
and the two update helpers they share (one fused Adam, Polyak averaging).

Every network maps a batch of rows to a batch of rows and never loops in Python over rows or
ensemble members: the twin critics are one set of stacked weights evaluated with batched matmuls.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
# A tanh-squashed policy has no density at |a| = 1; actions are pulled this far inside.
ACTION_EPS = 1e-6
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """Linear-ReLU layers of the given widths, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """`members` independent linear layers stored stacked: (E, N, in) -> (E, N, out) in one bmm."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Same init as nn.Linear, member by member: U(-1/sqrt(in), 1/sqrt(in)).
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if frozen:
            weight, bias = weight.detach(), bias.detach()
        return torch.baddbmm(bias, x, weight)


class QEnsemble(nn.Module):
    """E critics Q_1..Q_E(s, a) evaluated together; returns (E, *leading dims of the actions)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], members: int = 2) -> None:
        super().__init__()
        self.members, self.in_dim = members, obs_dim + act_dim
        widths = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(members, i, o)
                                    for i, o in itertools.pairwise(widths))

    def forward(self, observations: torch.Tensor, actions: torch.Tensor,
                frozen: bool = False) -> torch.Tensor:
        """Q-values of every (s, a) row; `observations` broadcasts against `actions`.

        `frozen=True` lets gradients reach the inputs but not the critic's weights (the
        actor's loss differentiates Q(s, π(s)) with respect to the action only).
        """
        lead = actions.shape[:-1]
        observations = observations.expand(*lead, observations.shape[-1])
        x = torch.cat([observations, actions], dim=-1).reshape(1, -1, self.in_dim)
        h = x.expand(self.members, -1, -1)
        for layer in self.layers[:-1]:
            # In place: baddbmm's backward does not need its output, ReLU's needs only its own.
            h = layer(h, frozen).relu_()
        return self.layers[-1](h, frozen).view(self.members, *lead)


class ValueNet(nn.Module):
    """State value V(s)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, 1)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations).squeeze(-1)


def gaussian_log_prob(noise: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(mean + std·noise; mean, std), summed over the action dimensions."""
    return (-0.5 * noise.square() - log_std - _HALF_LOG_2PI).sum(-1)


class GaussianActor(nn.Module):
    """IQL's policy: N(tanh(f(s)), diag σ²) with a state-independent log σ, not squashed."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, A) and log σ (A,)."""
        return torch.tanh(self.net(observations)), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(observations)
        return gaussian_log_prob((actions - mean) * torch.exp(-log_std), log_std)

    def sample(self, observations: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action clipped to [-1, 1] (the mean when deterministic)."""
        mean, log_std = self(observations)
        if deterministic:
            return mean
        return (mean + log_std.exp() * torch.randn_like(mean)).clamp_(-1.0, 1.0)


def squash_log_det(pre_tanh: torch.Tensor) -> torch.Tensor:
    """Σ log(1 - tanh(u)²), written as 2(log 2 - u - softplus(-2u)) to stay finite for large |u|."""
    return (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


class TanhGaussianActor(nn.Module):
    """SAC's policy: a = tanh(u), u ~ N(μ(s), σ(s)²) (Haarnoja et al. 2018, appendix C)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim)

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ, each (B, A)."""
        mean, log_std = self.net(observations).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    @staticmethod
    def rsample(mean: torch.Tensor, log_std: torch.Tensor,
                samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised a ~ π(·|s) and log π(a|s).

        With `samples=K` the K draws share one evaluation of μ, log σ: shapes (B, K, A), (B, K).
        """
        if samples is not None:
            mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
            noise = torch.randn(mean.shape[0], samples, mean.shape[2], device=mean.device,
                                dtype=mean.dtype)
        else:
            noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        return torch.tanh(pre_tanh), gaussian_log_prob(noise, log_std) - squash_log_det(pre_tanh)

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(observations)
        pre_tanh = torch.atanh(actions.clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS))
        noise = (pre_tanh - mean) * torch.exp(-log_std)
        return gaussian_log_prob(noise, log_std) - squash_log_det(pre_tanh)

    def sample(self, observations: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mean, log_std = self(observations)
        if deterministic:
            return torch.tanh(mean)
        return self.rsample(mean, log_std)[0]


def adam(groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Adam:
    """One Adam over every network, as a single fused kernel where torch has one for the device."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(groups, fused=fused, foreach=None if fused else True)


def polyak_update(target: torch.nn.Module, online: torch.nn.Module, rate: float) -> None:
    """θ̄ ← (1 − rate) θ̄ + rate θ, for all tensors in one foreach call."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), rate)
