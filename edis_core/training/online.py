"""Where the online phase's transitions come from.

`edis train` steps one environment in the learner's own process (`LocalEnvSource`, below);
`edis run` collects whole episodes from rollout actors (services/learner/actors_source.py).
Either advances the learner's env-step count and hands the data over with
`learner.record_episode`; the loop that uses them is the same (Trainer._run_online).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from edis_core.training.envs import ActionScaler
from edis_core.transitions import Transitions

if TYPE_CHECKING:
    import gymnasium as gym

    from edis_core.training.trainer import Trainer


class OnlineSource(Protocol):
    def start(self, learner: Trainer) -> None:
        """The online phase begins or resumes."""
        ...

    def collect(self, learner: Trainer, wait: bool) -> None:
        """Add new transitions to the learner; `wait`: the learner has no update to do until
        data arrive, so the source may block a little for them."""
        ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, float]:
        """Counters for the metrics log (empty if the source has none)."""
        ...


class LocalEnvSource:
    """One environment in the learner's process: one step per `collect`, acting with the
    agent's current policy (exploration on). An episode in progress at a checkpoint is not
    resumable (the simulator state is not saved): a resumed run starts a fresh one."""

    def __init__(self, env: gym.Env, scaler: ActionScaler, seed: int):
        self.env, self.scaler, self.seed = env, scaler, seed
        self.obs: np.ndarray | None = None
        self.episode: list[Transitions] = []
        self.replay_rows: list[int] = []

    def start(self, learner: Trainer) -> None:
        if self.obs is None:
            self.obs, _ = self.env.reset(seed=self.seed + learner.steps["online"])

    def collect(self, learner: Trainer, wait: bool) -> None:
        assert self.obs is not None
        learner.steps["online"] += 1  # first, so an episode ending now is logged at it
        action = learner.agent.act(self.obs[None].astype(np.float32), deterministic=False)[0]
        next_obs, reward, terminated, truncated, _ = self.env.step(self.scaler.to_env(action))
        row = Transitions(
            observations=self.obs[None].astype(np.float32), actions=action[None],
            rewards=np.array([reward], np.float32),
            next_observations=next_obs[None].astype(np.float32),
            terminals=np.array([float(terminated)], np.float32),
            timeouts=np.array([float(truncated)], np.float32),
            mc_returns=np.array([-np.inf], np.float32))
        self.replay_rows.extend(learner.replay.add(row).tolist())
        self.episode.append(row)
        self.obs = next_obs
        if terminated or truncated:
            learner.record_episode(Transitions.concatenate(self.episode),
                                   np.asarray(self.replay_rows))
            self.episode, self.replay_rows = [], []
            self.obs, _ = self.env.reset()

    def close(self) -> None:
        """The environment belongs to the learner, which closes nothing here."""

    def stats(self) -> dict[str, float]:
        return {}
