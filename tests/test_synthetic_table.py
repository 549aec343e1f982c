"""The synthetic buffer's freshness and reuse rules."""

from __future__ import annotations

import numpy as np
import pytest

from edis_core.training.synthetic_table import SyntheticRateLimit, SyntheticTable
from edis_core.transitions import Transitions


def rows(n: int, version: int) -> Transitions:
    """n rows whose reward is the version that made them, so a sample shows where it came
    from."""
    t = Transitions.empty(2, 1, n)
    t.rewards[:] = version
    return t


def table(capacity: int = 100, **limit) -> SyntheticTable:
    return SyntheticTable(capacity, 2, 1, SyntheticRateLimit(**limit))


def test_rows_older_than_the_lag_are_refused_and_evicted_never_sampled():
    t = table(max_version_lag=1)
    assert t.insert(rows(30, 1), 1) == 30
    assert t.insert(rows(30, 2), 2) == 30
    assert len(t) == 60
    assert t.insert(rows(30, 3), 3) == 30  # version 1 is now two behind: evicted
    assert len(t) == 60 and t.dropped_stale == 30
    assert t.insert(rows(10, 1), 1) == 0  # arrives late: refused
    assert t.dropped_stale == 40
    drawn = t.sample(500, np.random.default_rng(0)).rewards
    assert set(np.unique(drawn)) == {2.0, 3.0}
    t.advance(5)
    assert len(t) == 0
    assert len(t.sample(10, np.random.default_rng(0))) == 0


def test_draws_are_limited_to_samples_per_insert_and_resume_with_new_rows():
    rng = np.random.default_rng(0)
    t = table(samples_per_insert=2.0, error_buffer=5.0)
    t.insert(rows(10, 0), 0)
    assert len(t.sample(15, rng)) == 15
    assert len(t.sample(15, rng)) == 5  # 2 x 10 draws in all
    assert len(t.sample(15, rng)) == 0
    assert t.wants_rows()
    t.insert(rows(10, 0), 0)
    assert t.credit == 20 and not t.wants_rows()  # enough unused credit: stop reading
    assert len(t.sample(17, rng)) == 17 and t.wants_rows()


def test_rows_evicted_as_stale_take_their_credit_with_them():
    # A stream reader stops while the credit is high; if a version change then empties the
    # table, the credit those rows held must not keep the stream closed for good.
    rng = np.random.default_rng(0)
    t = table(samples_per_insert=4.0, error_buffer=50.0, max_version_lag=1)
    t.insert(rows(20, 1), 1)
    assert t.credit == 80 and not t.wants_rows()
    t.advance(2)  # version 1 rows are still fresh: nothing forfeited
    assert t.credit == 80 and len(t) == 20
    t.advance(3)
    assert len(t) == 0 and t.credit == 0 and t.wants_rows()
    t.insert(rows(10, 3), 3)
    t.insert(rows(10, 4), 4)
    t.sample(30, rng)  # 80 - 30 = 50 unused, more than 4 x the 10 rows that stay
    t.advance(5)
    assert len(t) == 10 and t.credit == 40
    assert len(t.sample(100, rng)) == 40


def test_the_version_record_follows_the_ring_when_it_overwrites():
    t = table(capacity=50, max_version_lag=10)
    for version in range(1, 8):
        t.insert(rows(20, version), version)
        assert sum(n for _, n in t.state()["chunks"]) == len(t) == min(50, 20 * version)
    assert t.state()["chunks"] == [[5, 10], [6, 20], [7, 20]]
    t.insert(rows(80, 8), 8)  # more than the capacity: the newest 50 rows are kept
    assert t.state()["chunks"] == [[8, 50]] and len(t) == 50


def test_state_round_trip(tmp_path):
    from edis_core.buffers import ReplayBuffer

    t = table()
    t.insert(rows(30, 1), 1)
    t.insert(rows(30, 2), 2)
    t.sample(7, np.random.default_rng(0))
    t.buffer.save(tmp_path / "synthetic.npz")
    restored = table()
    restored.load(ReplayBuffer.load(tmp_path / "synthetic.npz"), t.state())
    assert restored.state() == t.state()
    restored.advance(3)
    assert set(np.unique(restored.buffer.contents().rewards)) == {2.0}


def test_a_record_that_does_not_fit_its_buffer_is_refused():
    from edis_core.buffers import ReplayBuffer

    state = table().state() | {"chunks": [[1, 5]]}
    with pytest.raises(ValueError, match="version record"):
        table().load(ReplayBuffer(10, 2, 1), state)


@pytest.mark.parametrize(("field", "value"), [("max_version_lag", -1),
                                              ("samples_per_insert", 0.0),
                                              ("samples_per_insert", float("nan")),
                                              ("error_buffer", float("inf"))])
def test_limits_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticRateLimit(**{field: value})
