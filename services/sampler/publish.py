"""PublishWeights, received and checked: the sampler's side of the weights upload of
protos/edis/sampler/v1/sampler.proto. Every check runs before anything is swapped in, so a
refused publish (PublishRejected, with its gRPC status) leaves the served weights as they
were."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import torch

from edis_core.generator import SyntheticGenerator
from protos.edis.sampler.v1 import sampler_pb2 as pb
from services.sampler import weights as w
from services.sampler.options import ServeOptions


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
class StagedPublish:
    target: HeldModel  # the held model, or a new one built from the publish's spec
    tensors: dict[str, dict[str, torch.Tensor]]
    versions: dict[str, int]
    done: asyncio.Future


async def receive_publish(requests: AsyncIterator[pb.PublishWeightsRequest],
                          held: HeldModel | None, options: ServeOptions,
                          device: torch.device) -> StagedPublish:
    """Read one PublishWeights stream and check all of it against `held` (the model the
    sampler serves, None before the first) and the limits of `options`. A publish bringing
    the prior with a new spec gets a new model, loaded here; one for the held model is
    staged for the generation loop to swap in. Raises PublishRejected."""
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
            announced = _check_header(header, options)
            blobs = {name: bytearray() for name in announced}
        elif kind == "header":
            raise PublishRejected(invalid, "a publish has exactly one header")
        else:
            _take_chunk(request.chunk, announced, blobs)
    if header is None:
        raise PublishRejected(invalid, "empty publish: no header")
    target = await _target_model(header, held, options, device)
    tensors = {}
    for name, blob in blobs.items():
        tensors[name] = _check_blob(name, announced[name], bytes(blob), target)
        _check_version(name, announced[name].version, target)
    if target is not held:  # a new model: load now, it serves nothing yet
        for name, received in tensors.items():
            w.load_model_tensors(target.generator, name, received)
        tensors = {}
    return StagedPublish(target, tensors,
                         {name: blob.version for name, blob in announced.items()},
                         asyncio.get_running_loop().create_future())


def _check_header(header: pb.PublishHeader,
                  options: ServeOptions) -> dict[str, pb.ModelBlob]:
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
        if not 0 < blob.size_bytes <= options.max_publish_bytes:
            raise PublishRejected(invalid, f"{where}.size_bytes must be in [1, "
                                           f"{options.max_publish_bytes}] "
                                           f"(--max-publish-bytes), got {blob.size_bytes}")
        if len(blob.sha256) != 32:
            raise PublishRejected(invalid, f"{where}.sha256 must be 32 bytes")
        announced[blob.model] = blob
    if w.PRIOR in announced and not header.HasField("spec"):
        raise PublishRejected(invalid, "header.spec is required when the prior is published")
    return announced


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


async def _target_model(header: pb.PublishHeader, held: HeldModel | None,
                        options: ServeOptions, device: torch.device) -> HeldModel:
    """The held model, or a new one when the publish brings the prior with a new spec."""
    spec = None
    if header.HasField("spec"):
        s = header.spec
        try:
            spec = w.ModelSpec.parse(s.obs_dim, s.act_dim, s.edis_config_json)
        except w.WeightsError as err:
            raise PublishRejected(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
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
    if parameters > options.max_parameters:
        raise PublishRejected(grpc.StatusCode.INVALID_ARGUMENT,
                              f"header.spec describes ~{parameters:,} parameters, over the "
                              f"sampler's --max-parameters {options.max_parameters:,}")
    try:
        generator = await asyncio.to_thread(w.build_generator, spec, device,
                                            options.seed)
    except w.WeightsError as err:
        raise PublishRejected(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
    return HeldModel.empty(generator, spec)


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


def _check_version(name: str, version: int, target: HeldModel) -> None:
    held = target.versions[name]
    if version <= held:
        raise PublishRejected(grpc.StatusCode.FAILED_PRECONDITION,
                              f"model {name!r}: version {version} is not newer than the "
                              f"held version {held}")
