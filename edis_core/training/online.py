"""Where the online phase's transitions come from.

`edis train` steps one environment in the learner's own process (`LocalEnvSource`, below);
`edis run` collects whole episodes from rollout actors (services/learner/actors_source.py).
A source sees the learner only through `Learner` (its counters, its policy, its log) and
returns what it collected as `Arrival`s; the loop that stores them and advances the env-step
count is the same for both (Trainer._run_online).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from edis_core.episodes import EnvStepper
from edis_core.training.envs import ActionScaler
from edis_core.transitions import Transitions

if TYPE_CHECKING:
    import gymnasium as gym


@dataclass
class Arrival:
    """Consecutive transitions of one episode; `ends_episode`: its last row is the episode's
    last (the loop then labels the whole episode and hands it to the positive buffer)."""

    transitions: Transitions
    ends_episode: bool


class Learner(Protocol):
    """What a source reads of the learner."""

    @property
    def env_steps(self) -> int:
        """Online env steps stored so far."""
        ...

    @property
    def updates(self) -> int:
        """Online agent updates done so far."""
        ...

    def act(self, observations: np.ndarray) -> np.ndarray:
        """Exploratory actions of the current policy, in the agent's [-1, 1] units."""
        ...

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The current policy's weights, on the CPU."""
        ...

    def write(self, record: dict[str, Any]) -> None:
        """Append a record to the run's metrics log."""
        ...


class OnlineSource(Protocol):
    def start(self, learner: Learner) -> None:
        """The online phase begins or resumes."""
        ...

    def collect(self, learner: Learner, wait: bool) -> list[Arrival]:
        """New transitions, in the order they happened; `wait`: the learner has no update to
        do until data arrive, so the source may block a little for them."""
        ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, float]:
        """Counters for the metrics log (empty if the source has none)."""
        ...


class LocalEnvSource:
    """One environment in the learner's process: one step per `collect`, acting with the
    learner's current policy (exploration on). An episode in progress at a checkpoint is not
    resumable (the simulator state is not saved): a resumed run starts a fresh one."""

    def __init__(self, env: gym.Env, scaler: ActionScaler, seed: int):
        self.stepper, self.seed = EnvStepper(env, scaler.to_env), seed
        self.started = False

    def start(self, learner: Learner) -> None:
        if not self.started:
            self.stepper.reset(seed=self.seed + learner.env_steps)
            self.started = True

    def collect(self, learner: Learner, wait: bool) -> list[Arrival]:
        step = self.stepper.step(lambda obs: learner.act(obs[None].astype(np.float32))[0])
        return [Arrival(step.transitions(), ends_episode=step.ends_episode)]

    def close(self) -> None:
        """The environment belongs to the learner, which closes nothing here."""

    def stats(self) -> dict[str, float]:
        return {}
