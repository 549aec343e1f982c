"""`edis sampler serve`'s settings (services/sampler/cli.py parses them from flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from services.metrics.endpoint import MetricsEndpoint
from services.sampler.security import ServerSecurity


@dataclass
class ServeOptions:
    """`edis sampler serve` settings; validated at start-up."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (the bound one is printed)
    device: str = "cpu"
    threads: int = 1  # torch threads: two torch processes with default threads on 2 cores
    # slow each other down up to 100x (docs/runtime.md, Threads)
    queue_batches: int = 4  # batches generated ahead, per stream
    seed: int = 0  # seeds the sampler's RNG whenever a model is built
    max_consumers: int = 16
    max_batch_rows: int = 100_000
    max_publish_bytes: int = 256 * 1024 * 1024  # per model blob
    max_parameters: int = 100_000_000
    from_run: str | None = None  # start with the generator of an `edis train` run
    grace_seconds: float = 5.0  # on SIGTERM, how long open RPCs get to end
    metrics: MetricsEndpoint | None = None  # Prometheus /metrics; None: no endpoint
    security: ServerSecurity = field(default_factory=ServerSecurity)  # TLS, bearer token

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")
        for name in ("threads", "queue_batches", "max_consumers", "max_batch_rows",
                     "max_publish_bytes", "max_parameters"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device} requested but CUDA is not available; "
                             "use --device cpu")
