"""The sampler service's counters and state at one moment: what GetStatus answers and what
its Prometheus endpoint serves, read through one method (SamplerService.snapshot)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSnapshot:
    batches: int  # batches generated
    transitions: int  # finite rows generated
    dropped_nonfinite_rows: int
    publishes_accepted: int
    publishes_rejected: int
    queue_depth: int  # batches generated and waiting, all streams
    queue_capacity: int  # batches generated ahead per stream
    consumers: int  # open StreamBatches calls
    versions: dict[str, int]  # of each held model; empty before the first
    uptime_seconds: float
