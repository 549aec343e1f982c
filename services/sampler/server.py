"""The diffusion-sampler service (`edis sampler serve`), the server side of
protos/edis/sampler/v1/sampler.proto.

One asyncio loop (grpc.aio) owns every piece of state. Generation runs one batch at a time
in a worker thread, so the loop keeps answering while torch computes; published weights
are checked on arrival and swapped in by the generation loop between two batches, which is
why a batch never mixes two versions. Each stream has its own queue, filled ahead of
demand up to `queue_batches`; a full queue is skipped, so a stalled consumer holds at most
its queue and never stops the others.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from edis_core.generator import SyntheticGenerator
from protos.edis.sampler.v1 import sampler_pb2 as pb
from protos.edis.sampler.v1 import sampler_pb2_grpc as pb_grpc
from services.metrics.endpoint import MetricsEndpoint, serving
from services.metrics.sampler import SamplerMetrics
from services.sampler import weights as w
from services.sampler.security import ServerSecurity
from services.sampler.wire import (
    CHANNEL_OPTIONS,
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


class PublishRejected(Exception):
    """A publish refused with a gRPC status; the sampler goes on serving the old weights."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class HeldModel:
    """A generator and the version of each of its models (0: not loaded yet)."""

    generator: SyntheticGenerator
    spec: w.ModelSpec
    versions: dict[str, int]

    @classmethod
    def empty(cls, generator: SyntheticGenerator, spec: w.ModelSpec) -> HeldModel:
        return cls(generator, spec, dict.fromkeys(w.model_names(generator), 0))

    @property
    def energies(self) -> list[str]:
        return [m for m in self.versions if m != w.PRIOR]

    def ready(self, guided: bool) -> bool:
        if not self.versions[w.PRIOR]:
            return False
        return not guided or all(self.versions[m] for m in self.energies)


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


@dataclass
class StagedPublish:
    target: HeldModel  # the held model, or a new one built from the publish's spec
    tensors: dict[str, dict[str, torch.Tensor]]
    versions: dict[str, int]
    done: asyncio.Future


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
                staged = await self._receive_publish(request_iterator)
            except PublishRejected as err:
                self.counters["rejected"] += 1
                await context.abort(err.code, str(err))
            self._staged.append(staged)
            self._wake.set()
            versions = await staged.done
            self.counters["accepted"] += 1
        return pb.PublishWeightsResponse(versions=versions_to_proto(versions))

    async def _receive_publish(
            self, requests: AsyncIterator[pb.PublishWeightsRequest]) -> StagedPublish:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        header: pb.PublishHeader | None = None
        blobs: dict[str, bytearray] = {}
        announced: dict[str, pb.ModelBlob] = {}
        async for request in requests:
            kind = request.WhichOneof("kind")
            if header is None:
                if kind != "header":
                    raise PublishRejected(invalid, "the first message of a publish must be its "
                                                   "header")
                header = request.header
                announced = self._check_header(header)
                blobs = {name: bytearray() for name in announced}
            elif kind == "header":
                raise PublishRejected(invalid, "a publish has exactly one header")
            else:
                self._take_chunk(request.chunk, announced, blobs)
        if header is None:
            raise PublishRejected(invalid, "empty publish: no header")
        target = await self._target_model(header)
        tensors = {}
        for name, blob in blobs.items():
            tensors[name] = self._check_blob(name, announced[name], bytes(blob), target)
            self._check_version(name, announced[name].version, target)
        if target is not self.model:  # a new model: load now, it serves nothing yet
            for name, received in tensors.items():
                w.load_model_tensors(target.generator, name, received)
            tensors = {}
        return StagedPublish(target, tensors,
                             {name: blob.version for name, blob in announced.items()},
                             asyncio.get_running_loop().create_future())

    def _check_header(self, header: pb.PublishHeader) -> dict[str, pb.ModelBlob]:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if not header.models:
            raise PublishRejected(invalid, "header.models is empty: nothing to publish")
        announced: dict[str, pb.ModelBlob] = {}
        for blob in header.models:
            where = f"header.models[{blob.model!r}]"
            if blob.model in announced:
                raise PublishRejected(invalid, f"{where}: model announced twice")
            if blob.version < 1:
                raise PublishRejected(invalid, f"{where}.version must be >= 1")
            if not 0 < blob.size_bytes <= self.options.max_publish_bytes:
                raise PublishRejected(invalid, f"{where}.size_bytes must be in [1, "
                                               f"{self.options.max_publish_bytes}] "
                                               f"(--max-publish-bytes), got {blob.size_bytes}")
            if len(blob.sha256) != 32:
                raise PublishRejected(invalid, f"{where}.sha256 must be 32 bytes")
            announced[blob.model] = blob
        if w.PRIOR in announced and not header.HasField("spec"):
            raise PublishRejected(invalid, "header.spec is required when the prior is published")
        return announced

    @staticmethod
    def _take_chunk(chunk: pb.WeightsChunk, announced: dict[str, pb.ModelBlob],
                    blobs: dict[str, bytearray]) -> None:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if chunk.model not in announced:
            raise PublishRejected(invalid, f"chunk for model {chunk.model!r}, which the header "
                                           f"does not announce ({sorted(announced)})")
        blob = blobs[chunk.model]
        if chunk.offset != len(blob):
            raise PublishRejected(invalid, f"chunk of {chunk.model!r} at offset {chunk.offset}, "
                                           f"expected {len(blob)}: chunks out of order")
        if len(blob) + len(chunk.data) > announced[chunk.model].size_bytes:
            raise PublishRejected(invalid, f"chunks of {chunk.model!r} exceed the announced "
                                           f"size_bytes {announced[chunk.model].size_bytes}")
        blob.extend(chunk.data)

    async def _target_model(self, header: pb.PublishHeader) -> HeldModel:
        """The held model, or a new one when the publish brings the prior with a new spec."""
        spec = None
        if header.HasField("spec"):
            s = header.spec
            try:
                spec = w.ModelSpec.parse(s.obs_dim, s.act_dim, s.edis_config_json)
            except w.WeightsError as err:
                raise PublishRejected(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
        held = self.model
        if held is not None and (spec is None or spec == held.spec):
            return held
        if not any(m.model == w.PRIOR for m in header.models):
            if held is None:
                raise PublishRejected(grpc.StatusCode.FAILED_PRECONDITION,
                                      "the sampler holds no model yet: publish the prior first")
            raise PublishRejected(grpc.StatusCode.FAILED_PRECONDITION,
                                  "header.spec differs from the held model's; publish the "
                                  "prior with it to replace the model")
        assert spec is not None
        parameters = spec.approximate_parameters()
        if parameters > self.options.max_parameters:
            raise PublishRejected(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"header.spec describes ~{parameters:,} parameters, over the "
                                  f"sampler's --max-parameters {self.options.max_parameters:,}")
        try:
            generator = await asyncio.to_thread(w.build_generator, spec, self.device,
                                                self.options.seed)
        except w.WeightsError as err:
            raise PublishRejected(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
        self.metrics.observe_guidance(generator)
        return HeldModel.empty(generator, spec)

    @staticmethod
    def _check_blob(name: str, blob_header: pb.ModelBlob, blob: bytes,
                    target: HeldModel) -> dict[str, torch.Tensor]:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if name not in target.versions:
            raise PublishRejected(invalid, f"unknown model {name!r}; this model has "
                                           f"{list(target.versions)}")
        if len(blob) != blob_header.size_bytes:
            raise PublishRejected(invalid, f"incomplete chunk stream: model {name!r} received "
                                           f"{len(blob)} of {blob_header.size_bytes} bytes")
        if w.digest(blob) != blob_header.sha256:
            raise PublishRejected(invalid, f"model {name!r}: the received bytes do not match "
                                           "header sha256")
        try:
            tensors = w.decode(name, blob)
            w.check_tensors(name, w.model_tensors(target.generator, name), tensors)
        except w.WeightsError as err:
            raise PublishRejected(invalid, str(err)) from err
        return tensors

    @staticmethod
    def _check_version(name: str, version: int, target: HeldModel) -> None:
        held = target.versions[name]
        if version <= held:
            raise PublishRejected(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"model {name!r}: version {version} is not newer than the "
                                  f"held version {held}")

    # ------------------------------------------------------------------------ GetStatus
    async def GetStatus(self, request: pb.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> pb.SamplerStatus:
        model, capacity = self.model, self.options.queue_batches
        status = pb.SamplerStatus(
            serving=model is not None and model.ready(False) and not self.stopping.is_set(),
            queue_capacity=capacity,
            queue_depth=sum(c.queue.qsize() for c in self.consumers.values()),
            batches_produced=self.counters["batches"],
            transitions_produced=self.counters["transitions"],
            dropped_nonfinite_rows=self.counters["dropped"],
            consumers_connected=len(self.consumers),
            publishes_accepted=self.counters["accepted"],
            publishes_rejected=self.counters["rejected"],
            uptime_seconds=time.monotonic() - self.started,
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

    # ------------------------------------------------------------------------- shutdown
    async def shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()
        self.stopping.set()
        self._wake.set()
        for staged in self._staged:
            staged.done.cancel()


def generator_from_run(run_dir: Path, device: torch.device) -> tuple[SyntheticGenerator,
                                                                   dict[str, int]]:
    """The generator of an `edis train` run's latest checkpoint, at version 1 for every model
    it has trained (a publisher continues from version 2)."""
    from edis_core.training import checkpoint

    state, _, _ = checkpoint.load(run_dir)
    if "generator" not in state:
        raise ValueError(f"{run_dir} was trained with synthetic=none: it has no diffusion prior "
                         "to serve")
    generator = SyntheticGenerator.from_state_dict(state["generator"], device=device)
    if not generator.prior.normalizer.fitted:
        raise ValueError(f"{run_dir} has not trained its prior yet; serve it after the prior "
                         "phase, or start without --from-run and publish")
    versions = {name: 1 for name in w.model_names(generator)}
    if not generator.energies_trained:
        versions.update({name: 0 for name in versions if name != w.PRIOR})
    return generator, versions


async def serve(options: ServeOptions) -> int:
    torch.set_num_threads(options.threads)
    metrics = SamplerMetrics()
    # Metrics first, so that calls the token check refuses are counted too.
    server = grpc.aio.server(options=CHANNEL_OPTIONS,
                             interceptors=[metrics.interceptor(),
                                           *options.security.interceptors()])
    health = health_aio.HealthServicer()
    service = SamplerService(options, health, metrics)
    metrics.watch(service)
    for name in ("", SERVICE_NAME):
        await health.set(name, NOT_SERVING)
    if options.from_run:
        service.load(*generator_from_run(Path(options.from_run), service.device))
    pb_grpc.add_SamplerServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{options.host}:{options.port}"
    credentials = options.security.credentials()
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError as err:
        raise ValueError(f"cannot listen on {address} ({err}); choose another --port or "
                         "--port 0 for any free one") from err
    with serving(options.metrics, metrics.registry, "sampler"):
        await server.start()
        await _serve_until_stopped(server, service, options, port)
    return 0


async def _serve_until_stopped(server: grpc.aio.Server, service: SamplerService,
                               options: ServeOptions, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    generation = asyncio.create_task(service.generate_forever())
    security = options.security
    transport = ("mutual TLS" if security.client_ca else "TLS" if security.cert
                 else "plaintext") + (", bearer token" if security.token_file else "")
    print(f"edis sampler listening on {options.host}:{port} "
          f"(device {service.device}, {options.threads} torch thread(s), {transport})",
          flush=True)
    await stop_requested.wait()
    print("edis sampler: shutting down", file=sys.stderr, flush=True)
    await service.shutdown()
    await server.stop(options.grace_seconds)
    generation.cancel()


def run(options: ServeOptions) -> int:
    return asyncio.run(serve(options))
