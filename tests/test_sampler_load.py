"""Load: eight concurrent consumers of one sampler each get a fair share, every queue stays
at its bound, and memory stays flat while weights are published every two seconds (the
five-minute soak is benchmarks/bench_sampler_load.py)."""

from __future__ import annotations

import pytest

from services.sampler.client import SamplerClient
from services.sampler.load import run_load
from services.sampler.process import SamplerProcess
from tests.test_sampler_service import ENERGY_MODELS, MODELS, QUEUE, generator  # noqa: F401

pytestmark = pytest.mark.slow


def test_eight_consumers_share_fairly_within_their_queues_and_memory_stays_flat(
        generator, tmp_path):  # noqa: F811
    with SamplerProcess("--queue-batches", str(QUEUE), log=tmp_path / "sampler.log") as sampler, \
            SamplerClient(sampler.address) as client:
        client.publish(generator, dict.fromkeys(MODELS, 1))
        result = run_load(sampler.address, sampler.pid, consumers=8, seconds=30,
                          batch_size=50, guided=True, publish_every=2.0,
                          publish=lambda v: client.publish(generator,
                                                           dict.fromkeys(ENERGY_MODELS, v)))
    assert min(result.batches) > 10, result.batches
    assert all(0.75 <= share <= 1.25 for share in result.shares), result.shares
    assert result.queue_capacity == QUEUE and max(result.queue_depths) <= QUEUE
    assert result.publishes >= 10
    assert result.rss_growth(window=5.0) < 30 * 2**20, result.rss_bytes
