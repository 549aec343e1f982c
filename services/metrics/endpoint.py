"""The /metrics endpoint of one process, serving its own registry."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from services import logs

DEFAULT_HOST = "127.0.0.1"  # this machine only; containers pass 0.0.0.0


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where a process serves /metrics; port 0 takes any free port (printed at start)."""

    host: str = DEFAULT_HOST
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--metrics-port must be in [0, 65535], got {self.port}")


def new_registry(process: str) -> CollectorRegistry:
    """A registry with the process's CPU, memory and file-descriptor metrics as
    `edis_<process>_process_*`."""
    disable_created_metrics()  # no `_created` series beside every counter and histogram
    registry = CollectorRegistry()
    ProcessCollector(namespace=f"edis_{process}", registry=registry)
    return registry


@contextlib.contextmanager
def serving(endpoint: MetricsEndpoint | None, registry: CollectorRegistry,
            name: str) -> Iterator[int | None]:
    """Serve `registry` at http://HOST:PORT/metrics for the length of the block; yields the
    bound port (None when `endpoint` is None: no endpoint)."""
    if endpoint is None:
        yield None
        return
    try:
        server, thread = start_http_server(endpoint.port, endpoint.host, registry=registry)
    except OSError as err:
        raise ValueError(f"cannot serve metrics on {endpoint.host}:{endpoint.port} ({err}); "
                         "choose another --metrics-port, or 0 for any free one") from err
    port = server.server_address[1]
    logs.event(f"{name} metrics on http://{endpoint.host}:{port}/metrics", metrics_port=port)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (omitted: "
                             "no endpoint; 0: any free port, printed at start)")
    parser.add_argument("--metrics-host", default=DEFAULT_HOST,
                        help="address the metrics endpoint binds (default %(default)s: this "
                             "machine only)")


def metrics_endpoint(args: argparse.Namespace) -> MetricsEndpoint | None:
    if args.metrics_port is None:
        return None
    return MetricsEndpoint(args.metrics_host, args.metrics_port)
