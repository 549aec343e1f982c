"""A load probe of a running sampler: N concurrent stream consumers for a while, optionally
with a publish every few seconds, measuring what each consumer received, the queue depths
GetStatus reports and the sampler process's resident memory over time. The load benchmark
(benchmarks/bench_sampler_load.py) and the load test use it alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.sampler.client import SamplerClient


@dataclass
class LoadResult:
    seconds: float
    batches: list[int]
    """Batches each consumer received."""
    queue_depths: list[int] = field(default_factory=list)
    """Every per-consumer queue depth GetStatus reported during the run."""
    queue_capacity: int = 0
    rss_bytes: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, the sampler's resident memory)."""
    publishes: int = 0

    @property
    def shares(self) -> list[float]:
        """Each consumer's batches over the mean (1 = a fair share)."""
        mean = sum(self.batches) / len(self.batches)
        return [b / mean for b in self.batches] if mean else [0.0] * len(self.batches)

    def rss_growth(self, window: float) -> float:
        """Mean RSS over the last `window` seconds minus the mean over the first `window`
        seconds after the first third of the run (a warmed-up start)."""
        start = self.seconds / 3
        early = [r for t, r in self.rss_bytes if start <= t < start + window]
        late = [r for t, r in self.rss_bytes if t >= self.seconds - window]
        if not early or not late:
            return 0.0
        return sum(late) / len(late) - sum(early) / len(early)

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "batches": self.batches, "shares": self.shares,
                "max_queue_depth": max(self.queue_depths, default=0),
                "queue_capacity": self.queue_capacity, "publishes": self.publishes,
                "rss_bytes": self.rss_bytes}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


def run_load(address: str, pid: int, *, consumers: int, seconds: float, batch_size: int,
             guided: bool, publish: Callable[[int], None] | None = None,
             publish_every: float = 5.0, sample_every: float = 0.5) -> LoadResult:
    """`consumers` streams for `seconds`; `publish(version)` is called every
    `publish_every` seconds with versions 2, 3, ... (None: no publishes)."""
    stop = threading.Event()
    counts = [0] * consumers

    def consume(i: int) -> None:
        with SamplerClient(address) as client:
            stream = client.stream(batch_size, guided=guided, consumer=f"load-{i}")
            for _ in stream:
                counts[i] += 1
                if stop.is_set():
                    stream.close()
                    return

    threads = [threading.Thread(target=consume, args=(i,), daemon=True)
               for i in range(consumers)]
    result = LoadResult(seconds, counts)
    start = time.monotonic()
    for thread in threads:
        thread.start()
    next_publish, version = start + publish_every, 2
    with SamplerClient(address) as client:
        while (now := time.monotonic()) - start < seconds:
            status = client.status()
            result.queue_capacity = status["queue_capacity"]
            result.queue_depths += [c["queue_depth"] for c in status["consumers"]]
            result.rss_bytes.append((now - start, rss_bytes(pid)))
            if publish is not None and now >= next_publish:
                publish(version)
                version, next_publish = version + 1, now + publish_every
                result.publishes += 1
            time.sleep(sample_every)
    stop.set()
    result.batches = list(counts)
    for thread in threads:
        thread.join(timeout=30)
    return result
