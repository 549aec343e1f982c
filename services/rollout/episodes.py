"""Whole episodes, and the block of flat transitions a sample call returns.

Rows are recorded exactly as the one-process loop records them
(`edis_core.training.trainer.Trainer._env_step`): observations as float32, actions in agent
units, `terminals` = terminated and `timeouts` = truncated kept apart, and next_obs the true
successor (the final observation of the episode, never the next reset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edis_core.transitions import Transitions


@dataclass
class Episode:
    """One finished episode of T steps."""

    observations: np.ndarray
    """(T + 1, obs_dim): s_0 .. s_T, s_T the observation the last step returned."""
    actions: np.ndarray
    """(T, act_dim), agent units."""
    rewards: np.ndarray
    terminated: bool
    truncated: bool

    def __len__(self) -> int:
        return len(self.actions)

    def transitions(self) -> Transitions:
        steps = len(self)
        observations = np.asarray(self.observations, np.float32)
        terminals, timeouts = np.zeros(steps, np.float32), np.zeros(steps, np.float32)
        terminals[-1], timeouts[-1] = float(self.terminated), float(self.truncated)
        return Transitions(
            observations=observations[:-1], actions=np.asarray(self.actions, np.float32),
            rewards=np.asarray(self.rewards, np.float32), next_observations=observations[1:],
            terminals=terminals, timeouts=timeouts,
            # Discounted returns-to-go need the learner's γ: it fills them.
            mc_returns=np.full(steps, -np.inf, np.float32))


@dataclass
class EpisodeBlock:
    """What one finished sample call returns.

    Received through Ray, its arrays are read-only views of Ray's object store (kept alive
    while referenced): copy rows before writing to them in place or holding them for long.
    """

    transitions: Transitions
    """Whole episodes concatenated in order."""
    episode_ends: np.ndarray
    """Exclusive end row of each episode in `transitions`."""
    returns: np.ndarray
    """Undiscounted return of each episode."""
    policy_version: int
    """The weights version the actor acted with."""
    actor_index: int
    sample_seconds: float

    @staticmethod
    def from_episodes(episodes: list[Episode], policy_version: int, actor_index: int,
                      sample_seconds: float) -> EpisodeBlock:
        if not episodes or not all(e.terminated or e.truncated for e in episodes):
            raise ValueError("an episode block needs at least one episode, each finished")
        parts = [e.transitions() for e in episodes]
        return EpisodeBlock(
            transitions=Transitions.concatenate(parts),
            episode_ends=np.cumsum([len(p) for p in parts]),
            returns=np.array([float(p.rewards.sum()) for p in parts]),
            policy_version=policy_version, actor_index=actor_index,
            sample_seconds=sample_seconds)

    @property
    def env_steps(self) -> int:
        return len(self.transitions)
