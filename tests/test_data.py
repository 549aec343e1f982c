"""Minari datasets -> flat transitions, dataset creation, compatibility checks, scores."""

from __future__ import annotations

import shutil
import time
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from edis_core.data import (
    DatasetError,
    check_compatible,
    dataset_info,
    load_dataset,
    make_dataset,
    normalized_score,
)

HOPPER_ID = "edistest/hopper-random-v0"
HOPPER_STEPS = 600
GAMMA = 0.9


@pytest.fixture(scope="module")
def hopper_root(tmp_path_factory):
    """A private datasets folder holding one small random Hopper dataset."""
    root = tmp_path_factory.mktemp("minari_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        info = make_dataset("Hopper-v5", None, HOPPER_STEPS, HOPPER_ID, seed=3, progress=False)
        yield root, info


@pytest.fixture
def hopper(hopper_root, monkeypatch):
    root, info = hopper_root
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return info


def returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    powers = gamma ** np.arange(len(rewards))
    return np.array([np.sum(powers[: len(rewards) - t] * rewards[t:]) for t in range(len(rewards))])


def split_episodes(terminals: np.ndarray, timeouts: np.ndarray) -> list[slice]:
    ends = np.flatnonzero((terminals > 0) | (timeouts > 0)) + 1
    return [slice(a, b) for a, b in zip(np.r_[0, ends[:-1]], ends, strict=True)]


def write_known_dataset(dataset_id: str) -> list[dict]:
    """Three episodes whose observations encode (episode, step), ending in every possible way."""
    specs = [(4, "terminal"), (3, "timeout"), (2, "cut")]
    episodes, buffers = [], []
    for e, (length, end) in enumerate(specs):
        obs = np.stack([np.full(length + 1, 100.0 * e) + np.arange(length + 1),
                        -np.arange(length + 1.0)], axis=1)
        actions = (np.linspace(-1, 1, length)[:, None] * (e + 1) / 3).astype(np.float32)
        rewards = 1.0 + e + 0.5 * np.arange(length)
        term = np.zeros(length, bool)
        trunc = np.zeros(length, bool)
        term[-1] = end == "terminal"
        trunc[-1] = end == "timeout"
        episodes.append(dict(obs=obs, actions=actions, rewards=rewards, end=end))
        buffers.append(EpisodeBuffer(id=e, observations=obs, actions=actions,
                                     rewards=list(rewards), terminations=list(term),
                                     truncations=list(trunc)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id, buffers, algorithm_name="test", data_format="arrow",
            observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
            action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32))
    return episodes


def test_episode_boundaries_terminals_timeouts_and_returns(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episodes = write_known_dataset("known-v0")
    data = load_dataset("known-v0", gamma=GAMMA)
    t = data.transitions

    assert len(t) == 9 and data.episodes == 3 and data.env_id is None
    assert (data.obs_dim, data.act_dim) == (2, 1)
    for name in ("observations", "actions", "rewards", "next_observations", "terminals",
                 "timeouts", "mc_returns"):
        assert getattr(t, name).dtype == np.float32, name
    rows = split_episodes(t.terminals, t.timeouts)
    assert [r.stop - r.start for r in rows] == [4, 3, 2]
    for ep, row in zip(episodes, rows, strict=True):
        # next_obs is the episode's own successor everywhere, the last step included
        np.testing.assert_array_equal(t.observations[row], ep["obs"][:-1])
        np.testing.assert_array_equal(t.next_observations[row], ep["obs"][1:])
        np.testing.assert_allclose(t.actions[row], ep["actions"], rtol=1e-6)
        np.testing.assert_allclose(t.mc_returns[row], returns_to_go(ep["rewards"], GAMMA),
                                   rtol=1e-5)
    # the terminal ends episode 0 only; truncations (and the unflagged cut) are timeouts
    np.testing.assert_array_equal(t.terminals, [0, 0, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(t.timeouts, [0, 0, 0, 0, 0, 0, 1, 0, 1])
    assert t.next_observations[3, 0] == 4.0 and t.observations[4, 0] == 100.0
    np.testing.assert_allclose(data.episode_returns, [ep["rewards"].sum() for ep in episodes])


def test_made_dataset_replays_exactly_in_the_env(hopper):
    """Every stored transition, including each episode's last, is what the env produced."""
    t = load_dataset(HOPPER_ID, gamma=GAMMA).transitions
    seeds = [m["seed"] for m in minari.load_dataset(HOPPER_ID).storage.get_episode_metadata(
        range(hopper["episodes"]))]
    rows = split_episodes(t.terminals, t.timeouts)
    assert len(rows) == len(seeds) == hopper["episodes"] > 5
    assert len(set(seeds)) == len(seeds)
    env = gym.make("Hopper-v5")
    for seed, row in zip(seeds, rows, strict=True):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_allclose(t.observations[row.start], obs, rtol=1e-5, atol=1e-6)
        for i in range(row.start, row.stop):
            obs, reward, terminated, _, _ = env.step(t.actions[i])
            np.testing.assert_allclose(t.next_observations[i], obs, rtol=1e-5, atol=1e-5)
            assert t.rewards[i] == pytest.approx(reward, rel=1e-5)
            assert t.terminals[i] == terminated
            if i + 1 < row.stop:
                np.testing.assert_array_equal(t.observations[i + 1], t.next_observations[i])
        np.testing.assert_allclose(t.mc_returns[row], returns_to_go(t.rewards[row], GAMMA),
                                   rtol=1e-4)
    env.close()
    assert np.all(np.abs(t.actions) <= 1.0)
    # random Hopper falls over: every episode but the budget-cut last one ends in a terminal
    assert t.terminals.sum() == len(rows) - 1 and t.timeouts[-1] == 1
    # and the stored Minari data itself says so: the budget cut is recorded as a truncation
    raw = list(minari.load_dataset(HOPPER_ID).iterate_episodes())
    assert all(ep.terminations[-1] != ep.truncations[-1] for ep in raw)
    assert raw[-1].truncations[-1] and not raw[-1].terminations[-1]


def test_dataset_info_fields(hopper):
    info = dataset_info(HOPPER_ID)
    t = load_dataset(HOPPER_ID).transitions
    returns = [t.rewards[r].sum() for r in split_episodes(t.terminals, t.timeouts)]
    assert info["dataset_id"] == HOPPER_ID and info["env_id"] == "Hopper-v5"
    assert (info["transitions"], info["obs_dim"], info["act_dim"]) == (HOPPER_STEPS, 11, 3)
    assert info["episodes"] == len(returns)
    assert info["terminals"] + info["timeouts"] == info["episodes"]
    assert info["return_mean"] == pytest.approx(np.mean(returns), rel=1e-4)
    assert info["return_min"] == pytest.approx(min(returns), rel=1e-4)
    assert info["return_max"] == pytest.approx(max(returns), rel=1e-4)
    assert info["normalized_return_mean"] == pytest.approx(
        normalized_score("Hopper-v5", np.mean(returns)), rel=1e-4)
    assert "policy=random" in info["algorithm_name"] and info["data_format"] == "arrow"
    assert hopper["transitions_per_s"] > 0
    assert {k: v for k, v in hopper.items() if k in info} == info


def test_datasets_path_is_read_at_call_time(hopper, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError, match="not in the local datasets folder"):
        load_dataset(HOPPER_ID)
    monkeypatch.setenv("MINARI_DATASETS_PATH", hopper["path"].removesuffix(HOPPER_ID))
    assert len(load_dataset(HOPPER_ID).transitions) == HOPPER_STEPS


def test_policy_actions_are_clipped_and_pendulum_timeouts(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    info = make_dataset("Pendulum-v1", lambda obs: np.array([3.0 * obs[0]]), 500, "pend-v0",
                        seed=0, policy_name="push", progress=False)
    t = load_dataset("pend-v0").transitions
    assert (info["episodes"], info["terminals"], info["timeouts"]) == (3, 0, 3)
    np.testing.assert_array_equal(np.flatnonzero(t.timeouts), [199, 399, 499])
    # the policy saw each stored observation; its action was clipped to Pendulum's [-2, 2]
    np.testing.assert_allclose(t.actions[:, 0], np.clip(3.0 * t.observations[:, 0], -2, 2),
                               rtol=1e-6)
    assert np.abs(t.actions).max() == 2.0
    assert info["algorithm_name"] == "edis data make, policy=push"
    assert info["normalized_return_mean"] is None


def test_make_dataset_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    first = make_dataset("Pendulum-v1", None, 30, "ns/pend-v1", seed=0, progress=False)
    with pytest.raises(DatasetError, match="already exists"):
        make_dataset("Pendulum-v1", None, 40, "ns/pend-v1", seed=0, progress=False)
    assert dataset_info("ns/pend-v1")["transitions"] == first["transitions"] == 30
    make_dataset("Pendulum-v1", None, 40, "ns/pend-v1", seed=1, progress=False, overwrite=True)
    assert dataset_info("ns/pend-v1")["transitions"] == 40
    with pytest.raises(DatasetError, match="Cannot make environment"):
        make_dataset("NoSuchEnv-v0", None, 10, "ns/x-v0", seed=0, progress=False)


def test_seeded_creation_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    for name, seed in (("a-v0", 5), ("b-v0", 5), ("c-v0", 6)):
        make_dataset("Pendulum-v1", None, 50, name, seed=seed, progress=False)
    a, b, c = (load_dataset(n).transitions for n in ("a-v0", "b-v0", "c-v0"))
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.allclose(a.actions, c.actions)


def test_missing_remote_id_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(DatasetError) as error:
        load_dataset("D4RL/hopper/medium-v2")
    assert time.perf_counter() - start < 2.0
    message = str(error.value)
    for expected in ("minari download D4RL/hopper/medium-v2", "MINARI_DATASETS_PATH",
                     "edis data make", str(tmp_path)):
        assert expected in message
    with pytest.raises(DatasetError):
        dataset_info("D4RL/hopper/medium-v2")


@pytest.mark.parametrize("bad", ["hopper", "a b-v0", "../escape-v0", "", "x/-v"])
def test_malformed_ids_are_refused(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError, match="Malformed dataset id"):
        load_dataset(bad)
    with pytest.raises(DatasetError, match="Malformed dataset id"):
        make_dataset("Pendulum-v1", None, 5, bad, seed=0, progress=False)


def test_unreadable_dataset_folder_is_a_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    for name in ("bad-metadata-v0", "lost-episode-v0"):
        make_dataset("Pendulum-v1", None, 20, name, seed=0, progress=False)
    (tmp_path / "bad-metadata-v0" / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="Cannot read dataset bad-metadata-v0"):
        load_dataset("bad-metadata-v0")
    shutil.rmtree(tmp_path / "lost-episode-v0" / "data" / "0")
    with pytest.raises(DatasetError, match="lost-episode-v0"):
        load_dataset("lost-episode-v0")


def test_only_box_spaces_are_supported(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    buffer = EpisodeBuffer(observations=np.zeros((3, 4), np.float32), actions=[0, 1],
                           rewards=[1.0, 1.0], terminations=[False, True],
                           truncations=[False, False])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("cartpole-v0", [buffer], env="CartPole-v1",
                                           algorithm_name="test", data_format="arrow")
    with pytest.raises(DatasetError, match="only flat Box"):
        load_dataset("cartpole-v0")
    with pytest.raises(DatasetError, match="only flat Box"):
        make_dataset("CartPole-v1", None, 10, "cp-v0", seed=0, progress=False)


def test_check_compatible(hopper):
    data = load_dataset(HOPPER_ID)
    check_compatible(data, gym.make("Hopper-v5"))
    with pytest.raises(DatasetError) as error:
        check_compatible(data, gym.make("Walker2d-v5"))
    assert "(11,)" in str(error.value) and "(17,)" in str(error.value)
    assert "(3,)" in str(error.value) and "(6,)" in str(error.value)
    rescaled = gym.wrappers.RescaleAction(gym.make("Hopper-v5"), np.full(3, -0.5, np.float32),
                                          np.full(3, 0.5, np.float32))
    with pytest.raises(DatasetError, match="action bounds"):
        check_compatible(data, rescaled)


def test_normalized_score():
    assert normalized_score("Hopper-v5", 3234.3) == pytest.approx(100.0)
    assert normalized_score("Hopper-v4", -20.272305) == pytest.approx(0.0)
    mid = (-280.178953 + 12135.0) / 2
    assert normalized_score("HalfCheetah-v5", mid) == pytest.approx(50.0)
    assert normalized_score("Walker2d-v5", 1.629008) == pytest.approx(0.0)
    assert normalized_score("Ant-v5", 3879.7) == pytest.approx(100.0)
    assert normalized_score("Pendulum-v1", 0.0) is None
