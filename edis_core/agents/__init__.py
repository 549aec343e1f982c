"""The base agents EDIS plugs into, built by name."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edis_core.agents.base import Agent
from edis_core.agents.calql import CalQLAgent, CalQLConfig
from edis_core.agents.iql import IQLAgent, IQLConfig
from edis_core.agents.networks import GaussianActor, TanhGaussianActor

AGENT_CONFIGS = {"iql": IQLConfig, "calql": CalQLConfig}
_AGENTS = {"iql": IQLAgent, "calql": CalQLAgent}
_ACTORS = {"iql": GaussianActor, "calql": TanhGaussianActor}


def make_agent(name: str, config: IQLConfig | CalQLConfig, obs_dim: int, act_dim: int,
               device: str | torch.device = "cpu") -> Agent:
    """The agent called `name`, built from its config for the given dimensions and device."""
    if name not in _AGENTS:
        raise ValueError(f"unknown agent {name!r}; valid names: {sorted(_AGENTS)}")
    if not isinstance(config, AGENT_CONFIGS[name]):
        raise ValueError(f"agent {name!r} needs a {AGENT_CONFIGS[name].__name__}, "
                         f"got {type(config).__name__}")
    return _AGENTS[name](config, obs_dim, act_dim, device)


def actor_hidden(config: IQLConfig | CalQLConfig) -> tuple[int, ...]:
    """Hidden widths of the agent's actor (IQL shares one width list among its networks)."""
    return tuple(config.actor_hidden if isinstance(config, CalQLConfig) else config.hidden)


def make_actor(name: str, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> nn.Module:
    """The policy network of agent `name` alone (the `actor` of its agent, same parameter
    names), for processes that only act."""
    if name not in _ACTORS:
        raise ValueError(f"unknown agent {name!r}; valid names: {sorted(_ACTORS)}")
    return _ACTORS[name](obs_dim, act_dim, tuple(hidden))


__all__ = ["AGENT_CONFIGS", "Agent", "CalQLAgent", "CalQLConfig", "IQLAgent", "IQLConfig",
           "actor_hidden", "make_actor", "make_agent"]
