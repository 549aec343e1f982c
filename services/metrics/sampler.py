"""Metrics of the sampler service (`edis sampler serve --metrics-port PORT`).

What the service already counts (batches, transitions, dropped rows, publishes, queues,
consumers, weight versions) is read from its snapshot at scrape time; generation latency,
guidance norms (the generator's guidance observer) and gRPC calls are observed as they
happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.metrics.endpoint import new_registry

if TYPE_CHECKING:
    from edis_core.generator import SyntheticGenerator
    from services.sampler.snapshot import SamplerSnapshot

# One batch of 1,000 rows takes ~0.1 s unguided at the demo size on a CPU core and ~10 s at
# the paper size; 128-step paper-size guided batches of 10k rows take minutes.
GENERATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
# ‖σ·Σ w∇E‖ per row, the guidance's share of the ODE velocity; the default clip bounds it
# at guidance_clip·√dim (1·√29 ≈ 5.4 for Hopper).
NORM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)


class SamplerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or new_registry("sampler")
        self.generation_seconds = Histogram(
            "edis_sampler_generation_seconds", "Wall clock of generating one batch",
            ["guided"], buckets=GENERATION_BUCKETS, registry=self.registry)
        self.guidance_norm = Histogram(
            "edis_sampler_guidance_norm",
            "Mean per-row norm of the applied guidance term sigma*sum(w*grad E) at one "
            "guided denoiser evaluation (levels where guidance is off are not counted)",
            buckets=NORM_BUCKETS, registry=self.registry)
        self.grpc_handled = Counter(
            "edis_sampler_grpc_handled_total", "gRPC calls finished, by method and status code",
            ["method", "code"], registry=self.registry)
        self.grpc_started = Counter(
            "edis_sampler_grpc_started_total", "gRPC calls started, by method", ["method"],
            registry=self.registry)

    def watch(self, snapshot: Callable[[], SamplerSnapshot]) -> None:
        """Read the service's counters and state (`snapshot()`) at every scrape."""
        self.registry.register(_ServiceState(snapshot))

    def observe_guidance(self, generator: SyntheticGenerator) -> None:
        """Observe the norm of every guidance term `generator` applies from now on."""
        generator.guidance_observer = self.guidance_norm.observe

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _CallCounter(self)


class _ServiceState(Collector):
    def __init__(self, snapshot: Callable[[], SamplerSnapshot]):
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        now = self.snapshot()
        for name, value, text in (
                ("batches", now.batches, "Batches generated"),
                ("transitions", now.transitions, "Transitions generated (finite rows)"),
                ("dropped_nonfinite_rows", now.dropped_nonfinite_rows,
                 "Generated rows dropped for NaN/inf")):
            yield CounterMetricFamily(f"edis_sampler_{name}", text, value=value)
        publishes = CounterMetricFamily("edis_sampler_publishes", "PublishWeights calls",
                                        labels=["result"])
        publishes.add_metric(["accepted"], now.publishes_accepted)
        publishes.add_metric(["rejected"], now.publishes_rejected)
        yield publishes
        yield GaugeMetricFamily("edis_sampler_queue_depth_batches",
                                "Batches generated and waiting, all streams",
                                value=now.queue_depth)
        yield GaugeMetricFamily("edis_sampler_queue_capacity_batches",
                                "Batches generated ahead per stream (--queue-batches)",
                                value=now.queue_capacity)
        yield GaugeMetricFamily("edis_sampler_stream_consumers", "Open StreamBatches calls",
                                value=now.consumers)
        versions = GaugeMetricFamily("edis_sampler_weights_version",
                                     "Version of each held model (0: not loaded)",
                                     labels=["model"])
        for name, version in now.versions.items():
            versions.add_metric([name], version)
        yield versions
        yield GaugeMetricFamily("edis_sampler_uptime_seconds", "Seconds since start",
                                value=now.uptime_seconds)


class _CallCounter(grpc.aio.ServerInterceptor):
    """Counts every call as it starts and, with its status code, as it ends."""

    def __init__(self, metrics: SamplerMetrics):
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        metrics = self.metrics

        def started(context: grpc.aio.ServicerContext) -> None:
            metrics.grpc_started.labels(method).inc()
            context.add_done_callback(
                lambda ctx: metrics.grpc_handled.labels(method, _code_name(ctx)).inc())

        return _wrapped(handler, started)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    if context.cancelled():
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


# Handler kind -> (its constructor, whether the response is a stream).
_HANDLER_KINDS = {
    "unary_unary": (grpc.unary_unary_rpc_method_handler, False),
    "unary_stream": (grpc.unary_stream_rpc_method_handler, True),
    "stream_unary": (grpc.stream_unary_rpc_method_handler, False),
    "stream_stream": (grpc.stream_stream_rpc_method_handler, True),
}


def _wrapped(handler: grpc.RpcMethodHandler,
             started: Callable[[grpc.aio.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """The same handler, calling `started(context)` first."""
    kind = next((k for k in _HANDLER_KINDS if getattr(handler, k) is not None), None)
    if kind is None:
        return handler
    behaviour = getattr(handler, kind)
    make_handler, streams = _HANDLER_KINDS[kind]
    if streams:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext):
            started(context)
            async for message in behaviour(request, context):
                yield message
    else:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext):
            started(context)
            return await behaviour(request, context)
    return make_handler(wrapped, handler.request_deserializer, handler.response_serializer)
