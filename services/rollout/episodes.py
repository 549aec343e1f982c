"""The block of flat transitions a rollout actor's sample call returns: whole episodes
(`edis_core.episodes.Episode`, rows as the one-process loop records them), concatenated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edis_core.episodes import Episode
from edis_core.transitions import Transitions


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
