"""One environment stepped under a policy: the loop every part of the project acts through.

Training's own env, the rollout actors, evaluation, the held-out episodes of the diagnostics,
dataset making and the behaviour policy's SAC training all step an env with `EnvStepper`, and
a finished episode is an `Episode` whichever of them made it.

Rows are recorded as the learner's buffers hold them: observations as float32, actions in the
policy's own units, `terminals` = terminated and `timeouts` = truncated kept apart, and the
next observation the true successor (the episode's last observation, never the next reset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from edis_core.transitions import Transitions

Policy = Callable[[np.ndarray], np.ndarray]
"""An observation to an action, in the policy's own units."""


def _identity(action: np.ndarray) -> np.ndarray:
    return action


@dataclass(frozen=True)
class Step:
    """One transition (s, a, r, s′) and how the episode stands after it."""

    observation: np.ndarray
    action: np.ndarray
    """In the policy's units (what `Policy` returned), not the env's."""
    reward: float
    next_observation: np.ndarray
    terminated: bool
    truncated: bool

    @property
    def ends_episode(self) -> bool:
        return self.terminated or self.truncated

    def transitions(self) -> Transitions:
        """This step as a one-row batch."""
        return Transitions(
            observations=self.observation[None].astype(np.float32),
            actions=np.asarray(self.action)[None],
            rewards=np.array([self.reward], np.float32),
            next_observations=self.next_observation[None].astype(np.float32),
            terminals=np.array([float(self.terminated)], np.float32),
            timeouts=np.array([float(self.truncated)], np.float32),
            mc_returns=np.array([-np.inf], np.float32))


@dataclass
class Episode:
    """One finished episode of T steps."""

    observations: np.ndarray
    """(T + 1, obs_dim): s_0 .. s_T, s_T the observation the last step returned."""
    actions: np.ndarray
    """(T, act_dim), in the policy's units."""
    rewards: np.ndarray
    """(T,) as the env returned them (float64)."""
    terminated: bool
    truncated: bool
    """The time limit ended it, or a step budget cut it short."""

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def total_reward(self) -> float:
        """The undiscounted return, summed in step order."""
        return float(sum(self.rewards.tolist()))

    @staticmethod
    def from_steps(steps: list[Step]) -> Episode:
        last = steps[-1]
        return Episode(np.stack([steps[0].observation, *(s.next_observation for s in steps)]),
                       np.stack([s.action for s in steps]),
                       np.array([s.reward for s in steps], np.float64), last.terminated,
                       last.truncated or not last.terminated)

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


class EnvStepper:
    """`env` stepped one transition at a time, across episodes.

    `to_env` maps the policy's actions to the env's units (e.g. `ActionScaler.to_env`). The
    step after an episode's last one begins with an unseeded reset, so a run of episodes
    resets exactly once each: the env's own random stream decides their starts after the
    first seeded reset.
    """

    def __init__(self, env: gym.Env, to_env: Callable[[np.ndarray], np.ndarray] = _identity):
        self.env, self.to_env = env, to_env
        self.observation: np.ndarray | None = None
        """The current observation; None until the first reset and after an episode ends."""

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.observation, _ = self.env.reset(seed=seed)
        return self.observation

    def step(self, policy: Policy) -> Step:
        if self.observation is None:
            self.reset()
        assert self.observation is not None
        action = policy(self.observation)
        next_obs, reward, terminated, truncated, _ = self.env.step(self.to_env(action))
        step = Step(self.observation, action, float(reward), next_obs, bool(terminated),
                    bool(truncated))
        self.observation = None if step.ends_episode else next_obs
        return step

    def episode(self, policy: Policy, seed: int | None = None, max_steps: int | None = None,
                on_step: Callable[[Step], None] | None = None) -> Episode:
        """One episode from a reset (seeded if `seed` is given), cut after `max_steps` steps
        (then `truncated`); `on_step` sees each step as it happens."""
        self.reset(seed)
        steps: list[Step] = []
        while not steps or not (steps[-1].ends_episode or len(steps) == max_steps):
            steps.append(self.step(policy))
            if on_step is not None:
                on_step(steps[-1])
        self.observation = None
        return Episode.from_steps(steps)
