"""The base agents EDIS plugs into, built by name."""

from __future__ import annotations

import torch

from edis_core.agents.base import Agent
from edis_core.agents.calql import CalQLAgent, CalQLConfig
from edis_core.agents.iql import IQLAgent, IQLConfig

AGENT_CONFIGS = {"iql": IQLConfig, "calql": CalQLConfig}
_AGENTS = {"iql": IQLAgent, "calql": CalQLAgent}


def make_agent(name: str, config: IQLConfig | CalQLConfig, obs_dim: int, act_dim: int,
               device: str | torch.device = "cpu") -> Agent:
    """The agent called `name`, built from its config for the given dimensions and device."""
    if name not in _AGENTS:
        raise ValueError(f"unknown agent {name!r}; valid names: {sorted(_AGENTS)}")
    if not isinstance(config, AGENT_CONFIGS[name]):
        raise ValueError(f"agent {name!r} needs a {AGENT_CONFIGS[name].__name__}, "
                         f"got {type(config).__name__}")
    return _AGENTS[name](config, obs_dim, act_dim, device)


__all__ = ["AGENT_CONFIGS", "Agent", "CalQLAgent", "CalQLConfig", "IQLAgent", "IQLConfig",
           "make_agent"]
