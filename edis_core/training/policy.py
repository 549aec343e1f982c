"""Loading a trained agent back from a run directory (dataset making, diagnostics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edis_core.agents import make_agent
from edis_core.agents.base import Agent
from edis_core.training import checkpoint
from edis_core.training.config import TrainConfig
from edis_core.training.envs import ActionScaler
from edis_core.training.run_dir import read_run_config
from edis_core.training.trainer import resolve_device


def load_trained_agent(run_dir: Path, device: str = "cpu") -> tuple[Agent, TrainConfig,
                                                                   dict[str, Any]]:
    """The agent of the run's latest checkpoint, its config and the checkpoint's progress."""
    config = read_run_config(run_dir)
    state, progress, _ = checkpoint.load(run_dir)
    agent = make_agent(config.agent, config.agent_config, progress["obs_dim"],
                       progress["act_dim"], resolve_device(device))
    try:
        agent.load_state_dict(state["agent"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise checkpoint.CheckpointError(
            f"the agent in {run_dir} does not match its config ({type(err).__name__}: {err})"
        ) from err
    return agent, config, progress


def env_policy(agent: Agent, scaler: ActionScaler,
               deterministic: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """One observation in, one action in the env's units out."""

    def policy(obs: np.ndarray) -> np.ndarray:
        action = agent.act(np.asarray(obs, np.float32)[None], deterministic=deterministic)[0]
        return scaler.to_env(action)

    return policy
