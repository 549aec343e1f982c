"""How an online batch is composed: one rule for every `--synthetic` mode."""

from __future__ import annotations

import numpy as np
import pytest

from edis_core.buffers import ReplayBuffer
from edis_core.config import build
from edis_core.training.config import TrainConfig
from edis_core.training.mixing import BatchMixer
from edis_core.training.synthetic_table import SyntheticRateLimit, SyntheticTable
from edis_core.transitions import Transitions

OFFLINE, ONLINE, SYNTHETIC = 0.0, 1.0, 2.0


def rows(n: int, source: float) -> Transitions:
    """n rows whose reward names their source."""
    t = Transitions.empty(2, 1, n)
    t.rewards[:] = source
    return t


def mixer(synthetic_ratio: float, synthetic_rows: int = 0, online_rows: int = 500,
          samples_per_insert: float = 32.0, rule: str = "fixed",
          offline_rows: int = 1000) -> BatchMixer:
    online = ReplayBuffer(1000, 2, 1)
    if online_rows:
        online.add(rows(online_rows, ONLINE))
    table = SyntheticTable(1000, 2, 1, SyntheticRateLimit(samples_per_insert=samples_per_insert,
                                                           error_buffer=1.0))
    if synthetic_rows:
        table.insert(rows(synthetic_rows, SYNTHETIC), 0)
    return BatchMixer(rows(offline_rows, OFFLINE), online, table, batch_size=256, rule=rule,
                      offline_ratio=0.5, synthetic_ratio=synthetic_ratio)


def sources(batch: Transitions) -> dict[float, int]:
    values, counts = np.unique(batch.rewards, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_synthetic_rows_replace_offline_rows_and_the_online_share_never_changes(ratio):
    batch = mixer(ratio, synthetic_rows=500).sample_online(np.random.default_rng(0))
    counts = sources(batch)
    assert len(batch) == 256
    assert counts[ONLINE] == 128                          # the same in every mode
    assert counts.get(SYNTHETIC, 0) == round(ratio * 128)  # ρ of the offline-sourced rows
    assert counts.get(OFFLINE, 0) == 128 - round(ratio * 128)


def test_offline_rows_fill_in_when_the_synthetic_table_is_short():
    m = mixer(1.0, synthetic_rows=10, samples_per_insert=3.0)   # credit: 30 draws
    counts = sources(m.sample_online(np.random.default_rng(0)))
    assert counts == {OFFLINE: 98, ONLINE: 128, SYNTHETIC: 30}
    counts = sources(m.sample_online(np.random.default_rng(1)))
    assert counts == {OFFLINE: 128, ONLINE: 128}


@pytest.mark.parametrize("rule", ["fixed", "uniform"])
def test_before_any_online_row_the_batch_is_offline_sourced(rule):
    counts = sources(mixer(0.5, synthetic_rows=500, online_rows=0, rule=rule)
                     .sample_online(np.random.default_rng(0)))
    assert counts == {OFFLINE: 128, SYNTHETIC: 128}


@pytest.mark.parametrize(("online_rows", "offline_rows"), [(100, 900), (500, 500), (30, 970)])
def test_the_uniform_rule_draws_online_rows_as_often_as_uniform_sampling_of_the_union(
        online_rows, offline_rows):
    """Online rows ~ Binomial(B, n_on / (n_on + n_off)), as sampling the union uniformly
    gives: mean within 4 standard errors over 400 batches, and its spread that of the
    binomial."""
    m = mixer(0.0, online_rows=online_rows, offline_rows=offline_rows, rule="uniform")
    rng = np.random.default_rng(0)
    counts = np.array([sources(m.sample_online(rng)).get(ONLINE, 0) for _ in range(400)])
    p = online_rows / (online_rows + offline_rows)
    sd = np.sqrt(256 * p * (1 - p))
    assert abs(counts.mean() - 256 * p) < 4 * sd / np.sqrt(400)
    assert 0.8 * sd < counts.std(ddof=1) < 1.2 * sd


def test_under_the_uniform_rule_synthetic_rows_replace_offline_sourced_rows_only():
    m = mixer(1.0, synthetic_rows=900, online_rows=200, offline_rows=800, rule="uniform",
              samples_per_insert=1e6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = sources(m.sample_online(rng))
        assert OFFLINE not in counts and counts[ONLINE] + counts[SYNTHETIC] == 256


def test_a_synthetic_ratio_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"schedule\.ratio"):
        build(TrainConfig, None, {}, ["synthetic=edis", "schedule.ratio=1.5"])
    assert build(TrainConfig, None, {}, ["synthetic=edis", "schedule.ratio=1"]).schedule.ratio == 1
