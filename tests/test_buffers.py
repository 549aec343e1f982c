"""Replay ring and positive (recent whole trajectories) buffer."""

from __future__ import annotations

import numpy as np
import pytest

from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.transitions import FIELDS, Transitions

OBS, ACT = 3, 2


def rows(ids: np.ndarray | range) -> Transitions:
    """Transitions whose every field is a function of an integer id, so rows can be traced."""
    ids = np.asarray(ids, np.float32)
    return Transitions(
        observations=np.stack([ids, ids + 0.25, -ids], axis=1),
        actions=np.stack([2 * ids, ids - 1], axis=1),
        rewards=ids / 10,
        next_observations=np.stack([ids + 1, ids + 1.25, -ids - 1], axis=1),
        terminals=(ids % 7 == 6).astype(np.float32),
        timeouts=(ids % 11 == 10).astype(np.float32),
        mc_returns=ids * 3,
    )


def ids_of(t: Transitions) -> np.ndarray:
    """The ids of t's rows, after checking that every field of each row agrees on its id."""
    ids = t.observations[:, 0]
    expected = rows(ids)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(t, name), getattr(expected, name), err_msg=name)
    return ids.astype(int)


def test_ring_wraps_around_and_keeps_the_newest_rows():
    buffer = ReplayBuffer(10, OBS, ACT)
    np.testing.assert_array_equal(buffer.add(rows(range(7))), np.arange(7))
    assert len(buffer) == 7
    np.testing.assert_array_equal(buffer.add(rows(range(7, 12))), [7, 8, 9, 0, 1])
    assert len(buffer) == 10
    np.testing.assert_array_equal(ids_of(buffer.contents()), np.arange(2, 12))
    buffer.add(rows(range(12, 22)))  # exactly one full turn
    np.testing.assert_array_equal(ids_of(buffer.contents()), np.arange(12, 22))
    for start in range(22, 60, 3):  # many small wraps
        buffer.add(rows(range(start, start + 3)))
    np.testing.assert_array_equal(ids_of(buffer.contents()), np.arange(51, 61))


def test_add_refuses_wrong_dims_and_oversized_chunks():
    buffer = ReplayBuffer(5, OBS, ACT)
    with pytest.raises(ValueError, match="capacity 5"):
        buffer.add(rows(range(6)))
    wrong = Transitions.empty(OBS + 1, ACT, 2)
    with pytest.raises(ValueError, match="dims"):
        buffer.add(wrong)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, OBS, ACT)
    assert len(buffer) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_draws_only_filled_rows_uniformly(seed):
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(100, OBS, ACT)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(4, rng)
    buffer.add(rows(range(10)))
    ids = ids_of(buffer.sample(5000, rng))
    counts = np.bincount(ids, minlength=10)
    assert len(counts) == 10  # never an unfilled (all-zero, id 0 duplicate) row beyond id 9
    assert counts.min() > 400 and counts.max() < 600  # 500 ± ~4.5σ
    buffer.add(rows(range(10, 90)))
    buffer.add(rows(range(90, 150)))  # wrapped: ids 50..149 remain
    ids = ids_of(buffer.sample(5000, rng))
    assert ids.min() >= 50 and ids.max() <= 149 and len(np.unique(ids)) > 95


def test_set_mc_returns_fills_rows_of_a_finished_episode():
    buffer = ReplayBuffer(8, OBS, ACT)
    buffer.add(rows(range(6)))
    episode = rows(range(6, 10))
    episode.mc_returns[:] = -np.inf  # unknown until the episode ends
    written = buffer.add(episode)
    np.testing.assert_array_equal(written, [6, 7, 0, 1])
    values = np.array([4.0, 3.0, 2.0, 1.0], np.float32)
    buffer.set_mc_returns(written, values)
    np.testing.assert_array_equal(buffer.contents().mc_returns[-4:], values)
    np.testing.assert_array_equal(buffer.contents().mc_returns[:4], [6, 9, 12, 15])
    with pytest.raises(ValueError, match="filled rows"):
        ReplayBuffer(8, OBS, ACT).set_mc_returns(np.array([0]), np.array([1.0]))


@pytest.mark.parametrize("added", [4, 10, 23])
def test_save_and_load_restore_identical_state(tmp_path, added):
    buffer = ReplayBuffer(10, OBS, ACT)
    for start in range(0, added, 3):
        buffer.add(rows(range(start, min(start + 3, added))))
    path = tmp_path / "replay.npz"
    buffer.save(path)
    restored = ReplayBuffer.load(path)
    assert (restored.capacity, len(restored)) == (buffer.capacity, len(buffer))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(restored.contents(), name),
                                      getattr(buffer.contents(), name))
    # the write position survives too: both continue identically
    np.testing.assert_array_equal(restored.add(rows(range(100, 104))),
                                  buffer.add(rows(range(100, 104))))
    np.testing.assert_array_equal(ids_of(restored.contents()), ids_of(buffer.contents()))


def test_corrupt_or_mismatched_files_raise_value_error(tmp_path):
    buffer = ReplayBuffer(10, OBS, ACT)
    buffer.add(rows(range(6)))
    good = tmp_path / "good.npz"
    buffer.save(good)
    data = good.read_bytes()

    cases = {
        "garbage.npz": b"not a numpy file at all" * 10,
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="cannot read buffer file"):
            ReplayBuffer.load(tmp_path / name)

    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError):
        ReplayBuffer.load(tmp_path / "plain.npy")

    with np.load(good) as npz:
        arrays = dict(npz)
    tampered = {
        "pointer": {**arrays, "pointer": np.int64(12)},
        "rows": {**arrays, "rewards": arrays["rewards"][:-1]},
        "format": {k: v for k, v in arrays.items() if k != "format"},
        "missing": {k: v for k, v in arrays.items() if k != "actions"},
        "scalar": {**arrays, "size": np.arange(3)},
    }
    for name, content in tampered.items():
        np.savez(tmp_path / f"{name}.npz", **content)
        with pytest.raises(ValueError):
            ReplayBuffer.load(tmp_path / f"{name}.npz")

    positive = PositiveBuffer(10)
    positive.add_episode(rows(range(3)))
    positive.save(tmp_path / "positive.npz")
    with pytest.raises(ValueError, match="expected a edis-replay-buffer"):
        ReplayBuffer.load(tmp_path / "positive.npz")
    with pytest.raises(ValueError, match="expected a edis-positive-buffer"):
        PositiveBuffer.load(good)
    with pytest.raises(FileNotFoundError):
        ReplayBuffer.load(tmp_path / "absent.npz")


def test_positive_buffer_evicts_whole_oldest_episodes():
    buffer = PositiveBuffer(10)
    for start, length in ((0, 4), (100, 3), (200, 2)):
        buffer.add_episode(rows(range(start, start + length)))
    assert (len(buffer), buffer.num_episodes) == (9, 3)
    buffer.add_episode(rows(range(300, 303)))  # 12 > 10: the first episode goes, whole
    assert (len(buffer), buffer.num_episodes) == (8, 3)
    np.testing.assert_array_equal(ids_of(buffer.contents()),
                                  [100, 101, 102, 200, 201, 300, 301, 302])
    buffer.add_episode(rows(range(400, 415)))  # longer than capacity: its last 10 rows
    assert (len(buffer), buffer.num_episodes) == (10, 1)
    np.testing.assert_array_equal(ids_of(buffer.contents()), np.arange(405, 415))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_positive_buffer_holds_the_longest_fitting_suffix_of_episodes(seed):
    rng = np.random.default_rng(seed)
    capacity = 20
    buffer = PositiveBuffer(capacity)
    history: list[np.ndarray] = []
    for e in range(60):
        ids = 1000 * e + np.arange(rng.integers(1, 9))
        history.append(ids)
        buffer.add_episode(rows(ids))
        kept, total = [], 0
        for episode in reversed(history):
            if total + len(episode) > capacity:
                break
            kept.insert(0, episode)
            total += len(episode)
        np.testing.assert_array_equal(ids_of(buffer.contents()), np.concatenate(kept))
        assert (len(buffer), buffer.num_episodes) == (total, len(kept))
    sample_ids = ids_of(buffer.sample(2000, rng))
    assert set(sample_ids) == set(buffer.contents().observations[:, 0].astype(int))


def test_positive_buffer_copies_checks_dims_and_round_trips(tmp_path):
    buffer = PositiveBuffer(12)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(3, np.random.default_rng(0))
    buffer.save(tmp_path / "empty.npz")
    assert len(PositiveBuffer.load(tmp_path / "empty.npz")) == 0

    episode = rows(range(5))
    buffer.add_episode(episode)
    episode.observations[:] = 99.0  # the caller's arrays are not shared
    buffer.add_episode(rows(range(10, 14)))
    with pytest.raises(ValueError, match="dims"):
        buffer.add_episode(Transitions.empty(OBS, ACT + 1, 3))
    with pytest.raises(ValueError, match="empty episode"):
        buffer.add_episode(Transitions.empty(OBS, ACT, 0))

    buffer.save(tmp_path / "positive.npz")
    restored = PositiveBuffer.load(tmp_path / "positive.npz")
    assert (restored.capacity, len(restored), restored.num_episodes) == (12, 9, 2)
    np.testing.assert_array_equal(ids_of(restored.contents()), [0, 1, 2, 3, 4, 10, 11, 12, 13])
    restored.add_episode(rows(range(20, 24)))  # episode boundaries survived: 5 rows evicted
    np.testing.assert_array_equal(ids_of(restored.contents()), [10, 11, 12, 13, 20, 21, 22, 23])

    with np.load(tmp_path / "positive.npz") as npz:
        arrays = dict(npz)
    np.savez(tmp_path / "bad.npz", **{**arrays, "lengths": np.array([5, 5])})
    with pytest.raises(ValueError, match="episode lengths"):
        PositiveBuffer.load(tmp_path / "bad.npz")
