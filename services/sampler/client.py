"""The learner's side of the sampler service: a thin, synchronous client.

    with SamplerClient("127.0.0.1:50051") as sampler:
        sampler.publish(generator, {"prior": 1})                 # after offline training
        sampler.publish(generator, {"energy/state": 1, ...})     # after each energy refresh
        for batch in sampler.stream(1000, guided=True):          # e.g. in a reader thread
            synthetic_buffer.add(batch.transitions)

Every call waits for the channel to be ready (within `connect_timeout`); a stream that the
server drops (UNAVAILABLE: restart, shutdown) is reopened with exponential backoff for up to
`reconnect_seconds`, continuing the count of `max_batches`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edis_core.generator import SyntheticGenerator
from protos.edis.sampler.v1 import sampler_pb2 as pb
from protos.edis.sampler.v1 import sampler_pb2_grpc as pb_grpc
from services.sampler import weights as w
from services.sampler.security import ClientSecurity
from services.sampler.wire import (
    CHUNK_BYTES,
    SERVICE_NAME,
    SyntheticBatch,
    assemble,
    versions_from_proto,
)


class SamplerError(RuntimeError):
    """A call the sampler refused, or a sampler that could not be reached; the message gives
    the status code and the server's reason."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


def _refused(call: str, err: grpc.RpcError) -> SamplerError:
    return SamplerError(f"{call}: {err.code().name}: {err.details()}", err.code())


class SamplerClient:
    def __init__(self, address: str, *, connect_timeout: float = 30.0, call_timeout: float = 120.0,
                 reconnect_seconds: float = 60.0, security: ClientSecurity | None = None):
        self.address = address
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.reconnect_seconds = reconnect_seconds
        self.security = security or ClientSecurity()
        self._metadata = self.security.metadata()
        self._channel = self.security.channel(address)
        self._stub = pb_grpc.SamplerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SamplerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the sampler answers (a health check that waits for the connection)."""
        timeout = timeout or self.connect_timeout
        try:
            self._health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True,
                               timeout=timeout)
        except grpc.RpcError as err:
            raise SamplerError(f"no sampler answers at {self.address} after {timeout:.0f} s "
                               f"({err.code().name}); start one with `edis sampler serve` or "
                               "check the address", grpc.StatusCode.UNAVAILABLE) from err

    # ---------------------------------------------------------------------------- calls
    def status(self, timeout: float | None = None) -> dict[str, Any]:
        """GetStatus as a plain dict: proto field names, every field present, integers as
        ints; `timeout`: how long to wait for the sampler (default `connect_timeout`)."""
        self.wait_ready(timeout)
        try:
            reply = self._stub.GetStatus(pb.GetStatusRequest(), timeout=self.call_timeout,
                                         metadata=self._metadata)
        except grpc.RpcError as err:
            raise _refused("GetStatus", err) from err
        return _with_ints(reply, MessageToDict(reply, preserving_proto_field_name=True,
                                               always_print_fields_with_no_presence=True))

    def health(self) -> str:
        """"SERVING" or "NOT_SERVING" (grpc.health.v1, the sampler service's entry)."""
        self.wait_ready()
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                       timeout=self.call_timeout)
        except grpc.RpcError as err:
            raise _refused("Health.Check", err) from err
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def publish(self, generator: SyntheticGenerator, versions: Mapping[str, int], *,
                chunk_bytes: int = CHUNK_BYTES) -> dict[str, int]:
        """Publish the models named in `versions` ("prior", "energy/state", ...) of
        `generator` at those versions; returns the versions the sampler holds after the
        swap. Raises SamplerError if the sampler refuses (the old weights keep serving)."""
        blobs = {model: (version, w.encode(w.model_tensors(generator, model)))
                 for model, version in versions.items()}
        return self.publish_messages(publish_messages(w.ModelSpec.of(generator), blobs,
                                                      chunk_bytes))

    def publish_messages(self, messages: list[pb.PublishWeightsRequest]) -> dict[str, int]:
        self.wait_ready()
        try:
            reply = self._stub.PublishWeights(iter(messages), timeout=self.call_timeout,
                                              metadata=self._metadata)
        except grpc.RpcError as err:
            raise _refused("PublishWeights", err) from err
        return versions_from_proto(reply.versions)

    def stream(self, batch_size: int, *, guided: bool, max_batches: int = 0,
               consumer: str = "") -> Iterator[SyntheticBatch]:
        """Whole batches as they arrive, until `max_batches` (0: until the iterator is
        closed). Closing the iterator cancels the stream."""
        received, backoff, failing_since = 0, 0.1, None
        while max_batches == 0 or received < max_batches:
            self.wait_ready(self.reconnect_seconds)
            request = pb.StreamBatchesRequest(
                batch_size=batch_size, max_batches=max_batches - received if max_batches else 0,
                guidance=pb.GUIDANCE_GUIDED if guided else pb.GUIDANCE_UNGUIDED,
                consumer=consumer)
            call = self._stub.StreamBatches(request, wait_for_ready=True,
                                            metadata=self._metadata)
            try:
                for batch in _whole_batches(call):
                    received += 1
                    backoff, failing_since = 0.1, None
                    yield batch
                return
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise _refused("StreamBatches", err) from err
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.reconnect_seconds:
                    raise _refused("StreamBatches (gave up reconnecting)", err) from err
                time.sleep(backoff)
                backoff = min(2 * backoff, 5.0)
            finally:
                call.cancel()


def _with_ints(message: Message, values: dict[str, Any]) -> dict[str, Any]:
    """Proto JSON writes 64-bit integers as strings; a Python caller wants numbers."""
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.type == field.TYPE_MESSAGE and not field.is_repeated:
            _with_ints(value, values[field.name])
        elif field.type == field.TYPE_MESSAGE:
            for item, item_values in zip(value, values[field.name], strict=True):
                _with_ints(item, item_values)
        elif field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
            values[field.name] = list(value) if field.is_repeated else value
    return values


def _whole_batches(call: Iterator[pb.TransitionBatch]) -> Iterator[SyntheticBatch]:
    parts: list[pb.TransitionBatch] = []
    for message in call:
        parts.append(message)
        if len(parts) == message.parts:
            yield assemble(parts)
            parts = []


def publish_messages(spec: w.ModelSpec | None, blobs: Mapping[str, tuple[int, bytes]],
                     chunk_bytes: int = CHUNK_BYTES) -> list[pb.PublishWeightsRequest]:
    """A publish as its message stream: the header (spec, each model's version, size and
    digest), then each blob in chunks of `chunk_bytes`."""
    header = pb.PublishHeader(models=[
        pb.ModelBlob(model=model, version=version, size_bytes=len(blob), sha256=w.digest(blob))
        for model, (version, blob) in blobs.items()])
    if spec is not None:
        header.spec.CopyFrom(pb.ModelSpec(obs_dim=spec.obs_dim, act_dim=spec.act_dim,
                                          edis_config_json=spec.config_json()))
    messages = [pb.PublishWeightsRequest(header=header)]
    for model, (_, blob) in blobs.items():
        for offset in range(0, len(blob), chunk_bytes):
            chunk = pb.WeightsChunk(model=model, offset=offset,
                                    data=blob[offset:offset + chunk_bytes])
            messages.append(pb.PublishWeightsRequest(chunk=chunk))
    return messages
