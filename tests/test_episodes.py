"""The one stepping loop (edis_core/episodes.py): what it records and when it resets."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from edis_core.data.minari_io import minari_episode
from edis_core.episodes import EnvStepper


class Corridor(gym.Env):
    """Position x starts at the reset seed (0 unseeded); each step adds the action and pays
    it; x ≥ 3 terminates, and the 5th step of an episode is truncated."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self) -> None:
        self.resets: list[int | None] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.resets.append(seed)
        self.x, self.t = float(seed or 0), 0
        return np.array([self.x]), {}

    def step(self, action):
        self.x += float(action[0])
        self.t += 1
        return np.array([self.x]), float(action[0]), self.x >= 3.0, self.t == 5, {}


def test_an_episode_records_its_true_successors_and_ends_with_the_env():
    env = Corridor()
    episode = EnvStepper(env, to_env=lambda a: 2.0 * a).episode(
        lambda obs: np.array([0.5], np.float32), seed=1)
    # agent units 0.5 are 1.0 for the env: x 1 → 2 → 3 (terminated)
    assert episode.observations[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert episode.actions[:, 0].tolist() == [0.5, 0.5]          # the policy's units
    assert episode.rewards.tolist() == [1.0, 1.0] and episode.total_reward == 2.0
    assert (episode.terminated, episode.truncated) == (True, False)
    rows = episode.transitions()
    assert rows.next_observations[:, 0].tolist() == [2.0, 3.0]   # never the next reset
    assert rows.terminals.tolist() == [0.0, 1.0] and rows.timeouts.tolist() == [0.0, 0.0]


def test_a_cut_or_timed_out_episode_is_truncated_and_the_next_step_resets_once_unseeded():
    env = Corridor()
    stepper = EnvStepper(env)
    cut = stepper.episode(lambda obs: np.array([0.1], np.float32), seed=0, max_steps=2)
    assert len(cut) == 2 and (cut.terminated, cut.truncated) == (False, True)
    timed_out = stepper.episode(lambda obs: np.array([0.1], np.float32))
    assert len(timed_out) == 5 and (timed_out.terminated, timed_out.truncated) == (False, True)
    # one step at a time across an episode's end: one reset, unseeded, before the next step
    stepper.reset(seed=2)
    first = stepper.step(lambda obs: np.array([1.0], np.float32))
    assert first.ends_episode and first.next_observation[0] == 3.0
    assert stepper.observation is None
    after = stepper.step(lambda obs: np.array([1.0], np.float32))
    assert after.observation[0] == 0.0 and not after.ends_episode
    assert env.resets == [0, None, 2, None]
    row = after.transitions()
    assert row.observations.dtype == np.float32 and row.rewards.tolist() == [1.0]


def test_minari_records_exactly_one_of_terminated_and_truncated_at_the_end():
    env = Corridor()
    stepper = EnvStepper(env)
    ended = minari_episode(stepper.episode(lambda obs: np.array([1.0], np.float32), seed=1), 0, 1)
    cut = minari_episode(stepper.episode(lambda obs: np.array([0.1], np.float32), seed=0,
                                         max_steps=2), 1, 0, actions=np.zeros((2, 1)))
    assert ended.terminations == [False, True] and ended.truncations == [False, False]
    assert cut.terminations == [False, False] and cut.truncations == [False, True]
    assert cut.actions.tolist() == [[0.0], [0.0]]                 # the env's units, given
