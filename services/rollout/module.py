"""The agent's policy network as an RLlib RLModule, and its checkpoint.

The module computes actions itself with the actor's own `sample` (RLlib's `GetActions`
connector passes module-made actions through untouched), so what RLlib runs is exactly the
learner's policy: `forward_inference` gives `Agent.act(obs, deterministic=True)`,
`forward_exploration` a draw from π(·|s). Actions are in agent units, [-1, 1]; a connector
(runners.py) maps them to the env's bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule

from edis_core.agents import make_actor


def policy_model_config(agent: str, hidden: tuple[int, ...]) -> dict[str, Any]:
    return {"agent": agent, "hidden": list(hidden)}


class PolicyModule(TorchRLModule):
    """`self.actor` is the agent's actor network (same parameter names, under `actor.`).

    model_config: {"agent": "iql" | "calql", "hidden": [widths]}. For acting only: there is
    no training forward pass.
    """

    def setup(self) -> None:
        self.actor = make_actor(self.model_config["agent"], self.observation_space.shape[0],
                                self.action_space.shape[0], self.model_config["hidden"])
        # Acting only. In eval mode from the start, TorchRLModule's forward_exploration does
        # not switch the module back to train mode after every step (a measurable cost).
        self.eval()

    @torch.no_grad()
    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTIONS: self.actor.sample(batch[Columns.OBS], deterministic=True)}

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTIONS: self.actor.sample(batch[Columns.OBS])}


def module_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The module's state dict for the agent actor's state dict `weights`."""
    return {f"actor.{name}": value for name, value in weights.items()}


def agent_spaces(obs_dim: int, act_dim: int) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """Observation space and the agent-unit action space [-1, 1]^act_dim."""
    return (gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
            gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32))


def save_policy_module(agent_kind: str, hidden: tuple[int, ...], obs_dim: int, act_dim: int,
                       weights: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write the policy as an RLlib RLModule checkpoint; `RLModule.from_checkpoint(path)`
    loads it. Its action space is agent units [-1, 1]: scale to the env's bounds to act.

    RLlib's checkpoint format is pickle-based: load only checkpoints you wrote.
    """
    observation_space, action_space = agent_spaces(obs_dim, act_dim)
    module = PolicyModule(observation_space=observation_space, action_space=action_space,
                          inference_only=True,
                          model_config=policy_model_config(agent_kind, tuple(hidden)))
    try:
        module.actor.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"weights do not fit a {agent_kind} actor with hidden {tuple(hidden)}, "
                         f"obs_dim {obs_dim}, act_dim {act_dim}: "
                         f"{str(err).splitlines()[0]}") from err
    path = Path(path).absolute()
    module.save_to_path(path)
    return path
