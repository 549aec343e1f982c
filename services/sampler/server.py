"""The diffusion-sampler service, the server side of protos/edis/sampler/v1/sampler.proto:
generation scheduling and the RPC handlers (publishes are checked by publish.py; the
process that serves it is serve.py).

One asyncio loop (grpc.aio) owns every piece of state. Generation runs one batch at a time
in a worker thread, so the loop keeps answering while torch computes; published weights
are checked on arrival and swapped in by the generation loop between two batches, which is
why a batch never mixes two versions. Each stream has its own queue, filled ahead of
demand up to `queue_batches`; a full queue is skipped, so a stalled consumer holds at most
its queue and never stops the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import torch
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from edis_core.generator import SyntheticGenerator
from protos.edis.sampler.v1 import sampler_pb2 as pb
from protos.edis.sampler.v1 import sampler_pb2_grpc as pb_grpc
from services.metrics.sampler import SamplerMetrics
from services.sampler import weights as w
from services.sampler.options import ServeOptions
from services.sampler.publish import HeldModel, PublishRejected, StagedPublish, receive_publish
from services.sampler.snapshot import SamplerSnapshot
from services.sampler.wire import (
    SERVICE_NAME,
    GeneratedBatch,
    batch_messages,
    layout_to_proto,
    versions_to_proto,
    wire_layout,
)

SERVING, NOT_SERVING = (health_pb2.HealthCheckResponse.SERVING,
                        health_pb2.HealthCheckResponse.NOT_SERVING)
MAX_CONSUMER_NAME = 64


@dataclass
class Consumer:
    id: int
    name: str
    batch_size: int
    guided: bool
    max_batches: int  # 0: unbounded
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    generating: bool = False
    generated: int = 0
    sent: int = 0

    def wants_more(self, capacity: int) -> bool:
        room = self.queue.qsize() + int(self.generating) < capacity
        return room and (self.max_batches == 0 or self.generated < self.max_batches)


@dataclass
class GenerationFailure:
    message: str


class SamplerService(pb_grpc.SamplerServicer):
    def __init__(self, options: ServeOptions, health: health_aio.HealthServicer,
                 metrics: SamplerMetrics):
        self.options = options
        self.health = health
        self.metrics = metrics
        self.device = torch.device(options.device)
        self.model: HeldModel | None = None
        self.consumers: dict[int, Consumer] = {}
        self._next_consumer_id = 0
        self._last_served = -1
        self._staged: list[StagedPublish] = []
        self._publish_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.started = time.monotonic()
        self.counters = dict.fromkeys(("batches", "transitions", "dropped", "accepted",
                                       "rejected"), 0)

    # ------------------------------------------------------------------ generation loop
    async def generate_forever(self) -> None:
        while not self.stopping.is_set():
            self._apply_staged()
            consumer = self._next_consumer()
            if consumer is None:
                self._wake.clear()  # nothing awaits between here and wait(): no lost wake-up
                await self._wake.wait()
                continue
            consumer.generating = True
            try:
                batch = await asyncio.to_thread(self._generate, self.model, consumer)
            except Exception as err:  # one bad batch must not stop the service
                batch = GenerationFailure(f"{type(err).__name__}: {err}")
            finally:
                consumer.generating = False
            consumer.generated += 1
            if isinstance(batch, GeneratedBatch):
                self.counters["batches"] += 1
                self.counters["transitions"] += len(batch.rows)
                self.counters["dropped"] += batch.dropped_nonfinite_rows
                self.metrics.generation_seconds.labels(str(batch.guided).lower()).observe(
                    batch.generation_seconds)
            consumer.queue.put_nowait(batch)

    def _next_consumer(self) -> Consumer | None:
        """Round robin over the streams whose queue has room and whose weights are loaded."""
        model, capacity = self.model, self.options.queue_batches
        eligible = sorted(
            (c for c in self.consumers.values()
             if model is not None and model.ready(c.guided) and c.wants_more(capacity)),
            key=lambda c: (c.id <= self._last_served, c.id))
        if not eligible:
            return None
        self._last_served = eligible[0].id
        return eligible[0]

    @staticmethod
    def _generate(model: HeldModel, consumer: Consumer) -> GeneratedBatch:
        generator = model.generator
        start, dropped_before = time.perf_counter(), generator.dropped_rows
        transitions = generator.generate(consumer.batch_size, guided=consumer.guided)
        layout = wire_layout(model.spec.obs_dim, model.spec.act_dim)
        return GeneratedBatch(
            rows=layout.to_array(transitions), layout=layout_to_proto(layout),
            versions=dict(model.versions), guided=consumer.guided,
            generated_unix_time=time.time(), generation_seconds=time.perf_counter() - start,
            dropped_nonfinite_rows=generator.dropped_rows - dropped_before)

    def _apply_staged(self) -> None:
        """Swap published weights in: only here, between two batches."""
        for staged in self._staged:
            target = staged.target
            for model, tensors in staged.tensors.items():
                w.load_model_tensors(target.generator, model, tensors)
            target.versions.update(staged.versions)
            target.generator.energies_trained = all(target.versions[m] for m in target.energies)
            self.model = target
            staged.done.set_result(dict(target.versions))
        if self._staged:
            self._staged.clear()
            self._set_health(SERVING if self.model.versions[w.PRIOR] else NOT_SERVING)

    def load(self, generator: SyntheticGenerator, versions: dict[str, int]) -> None:
        """Hold a generator whose weights are already in place (`--from-run`)."""
        w.check_generator(generator)
        self.metrics.observe_guidance(generator)
        self.model = HeldModel(generator, w.ModelSpec.of(generator), versions)
        self._set_health(SERVING if versions[w.PRIOR] else NOT_SERVING)

    def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            asyncio.get_running_loop().create_task(self.health.set(service, status))

    # -------------------------------------------------------------------- StreamBatches
    async def StreamBatches(self, request: pb.StreamBatchesRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TransitionBatch]:
        problem = self._check_stream_request(request)
        if problem is not None:
            await context.abort(*problem)
        if self.stopping.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the sampler is shutting down")
        consumer = Consumer(self._next_consumer_id, request.consumer, request.batch_size,
                            request.guidance == pb.GUIDANCE_GUIDED, request.max_batches)
        self._next_consumer_id += 1
        self.consumers[consumer.id] = consumer
        self._wake.set()
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while consumer.max_batches == 0 or consumer.sent < consumer.max_batches:
                item = await self._next_item(consumer, stop)
                if item is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        "the sampler is shutting down")
                if isinstance(item, GenerationFailure):
                    await context.abort(grpc.StatusCode.INTERNAL,
                                        f"generating a batch failed: {item.message}")
                for message in batch_messages(item, consumer.sent):
                    yield message
                consumer.sent += 1
        finally:
            stop.cancel()
            del self.consumers[consumer.id]
            self._wake.set()

    async def _next_item(self, consumer: Consumer,
                         stop: asyncio.Future) -> GeneratedBatch | GenerationFailure | None:
        """The consumer's next batch, or None once the sampler stops."""
        get = asyncio.ensure_future(consumer.queue.get())
        await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not get.done():
            get.cancel()
            return None
        self._wake.set()  # the queue has room again
        return get.result()

    def _check_stream_request(
            self, request: pb.StreamBatchesRequest) -> tuple[grpc.StatusCode, str] | None:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if not 1 <= request.batch_size <= self.options.max_batch_rows:
            return invalid, (f"batch_size must be in [1, {self.options.max_batch_rows}], got "
                             f"{request.batch_size}")
        if request.guidance not in (pb.GUIDANCE_GUIDED, pb.GUIDANCE_UNGUIDED):
            return invalid, "guidance must be GUIDANCE_GUIDED or GUIDANCE_UNGUIDED"
        if len(request.consumer) > MAX_CONSUMER_NAME:
            return invalid, f"consumer must be at most {MAX_CONSUMER_NAME} characters"
        if (request.guidance == pb.GUIDANCE_GUIDED and self.model is not None
                and not self.model.energies):
            return (grpc.StatusCode.FAILED_PRECONDITION,
                    "guidance asked of a model without energies (its spec switches them all "
                    "off); ask for GUIDANCE_UNGUIDED or publish a model with energies")
        if len(self.consumers) >= self.options.max_consumers:
            return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the sampler already serves {self.options.max_consumers} streams "
                    "(--max-consumers)")
        return None

    # ------------------------------------------------------------------- PublishWeights
    async def PublishWeights(self, request_iterator: AsyncIterator[pb.PublishWeightsRequest],
                             context: grpc.aio.ServicerContext) -> pb.PublishWeightsResponse:
        async with self._publish_lock:
            try:
                staged = await receive_publish(request_iterator, self.model, self.options,
                                               self.device)
            except PublishRejected as err:
                self.counters["rejected"] += 1
                await context.abort(err.code, str(err))
            if staged.target is not self.model:
                self.metrics.observe_guidance(staged.target.generator)
            self._staged.append(staged)
            self._wake.set()
            versions = await staged.done
            self.counters["accepted"] += 1
        return pb.PublishWeightsResponse(versions=versions_to_proto(versions))

    # ------------------------------------------------------------------------ GetStatus
    async def GetStatus(self, request: pb.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> pb.SamplerStatus:
        model, now = self.model, self.snapshot()
        status = pb.SamplerStatus(
            serving=model is not None and model.ready(False) and not self.stopping.is_set(),
            queue_capacity=now.queue_capacity,
            queue_depth=now.queue_depth,
            batches_produced=now.batches,
            transitions_produced=now.transitions,
            dropped_nonfinite_rows=now.dropped_nonfinite_rows,
            consumers_connected=now.consumers,
            publishes_accepted=now.publishes_accepted,
            publishes_rejected=now.publishes_rejected,
            uptime_seconds=now.uptime_seconds,
            device=str(self.device),
            torch_threads=torch.get_num_threads(),
        )
        status.versions.SetInParent()  # all zeros before the first model: present all the same
        status.spec.SetInParent()
        if model is not None:
            status.versions.CopyFrom(versions_to_proto(model.versions))
            status.spec.CopyFrom(pb.ModelSpec(obs_dim=model.spec.obs_dim,
                                              act_dim=model.spec.act_dim,
                                              edis_config_json=model.spec.config_json()))
            status.energies.extend(model.energies)
        for c in self.consumers.values():
            status.consumers.append(pb.ConsumerStatus(
                id=c.id, name=c.name, batch_size=c.batch_size, guided=c.guided,
                queue_depth=c.queue.qsize(), batches_generated=c.generated,
                batches_sent=c.sent,
                waiting_for_weights=model is None or not model.ready(c.guided)))
        return status

    def snapshot(self) -> SamplerSnapshot:
        counters, consumers = self.counters, list(self.consumers.values())
        return SamplerSnapshot(
            batches=counters["batches"], transitions=counters["transitions"],
            dropped_nonfinite_rows=counters["dropped"],
            publishes_accepted=counters["accepted"], publishes_rejected=counters["rejected"],
            queue_depth=sum(c.queue.qsize() for c in consumers),
            queue_capacity=self.options.queue_batches, consumers=len(consumers),
            versions=dict(self.model.versions) if self.model is not None else {},
            uptime_seconds=time.monotonic() - self.started)

    # ------------------------------------------------------------------------- shutdown
    async def shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()
        self.stopping.set()
        self._wake.set()
        for staged in self._staged:
            staged.done.cancel()
