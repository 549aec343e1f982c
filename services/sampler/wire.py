"""Between the sampler's wire messages (protos/edis/sampler/v1) and numpy / Transitions.

Both ends import their limits from here, so the server and the client agree on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edis_core.diffusion.layout import TransitionLayout
from edis_core.generator_config import ENERGIES
from edis_core.transitions import Transitions
from protos.edis.sampler.v1 import sampler_pb2 as pb
from services.sampler.weights import ENERGY_PREFIX, PRIOR

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default; set on both ends explicitly
PART_BYTES = 3 * 1024 * 1024  # transition bytes per TransitionBatch, leaving room for metadata
CHUNK_BYTES = 1024 * 1024  # weights bytes per WeightsChunk
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Sampler"].full_name

# The proto's WeightVersions field of each model (weights.py names them): "prior", then
# "<energy>_energy".
VERSION_FIELDS = {PRIOR: "prior", **{ENERGY_PREFIX + e: f"{e}_energy" for e in ENERGIES}}
# Wire names of the parts of a row, in TransitionLayout's order [s, a, r, s', done].
SEGMENTS = {
    "observations": "state",
    "actions": "action",
    "rewards": "reward",
    "next_observations": "next_state",
    "terminals": "done",
}


class ProtocolError(RuntimeError):
    """A message that breaks the contract of sampler.proto."""


def versions_to_proto(versions: Mapping[str, int]) -> pb.WeightVersions:
    return pb.WeightVersions(**{VERSION_FIELDS[model]: v for model, v in versions.items()})


def versions_from_proto(message: pb.WeightVersions) -> dict[str, int]:
    return {model: getattr(message, field) for model, field in VERSION_FIELDS.items()}


def wire_layout(obs_dim: int, act_dim: int) -> TransitionLayout:
    """Rows on the wire hold the next state itself, whatever the prior models (s' or s' − s)."""
    return TransitionLayout(obs_dim, act_dim, next_state_delta=False)


def layout_to_proto(layout: TransitionLayout) -> pb.TransitionLayout:
    segments = []
    for name, part in SEGMENTS.items():
        columns = layout.slice(part)
        size = columns.stop - columns.start
        segments.append(pb.Segment(name=name, start=columns.start, size=size))
    return pb.TransitionLayout(segments=segments, width=layout.dim)


def array_to_tensor(name: str, array: np.ndarray) -> pb.Tensor:
    array = np.ascontiguousarray(array, dtype="<f4")
    return pb.Tensor(name=name, dtype=pb.DTYPE_FLOAT32, shape=array.shape, data=array.tobytes())


def tensor_to_array(tensor: pb.Tensor) -> np.ndarray:
    """A read-only view of the message's bytes (no copy)."""
    if tensor.dtype != pb.DTYPE_FLOAT32:
        raise ProtocolError(f"tensor {tensor.name!r}: dtype {tensor.dtype} is not DTYPE_FLOAT32")
    shape = tuple(tensor.shape)
    if len(tensor.data) != 4 * math.prod(shape):
        raise ProtocolError(f"tensor {tensor.name!r}: {len(tensor.data)} bytes do not hold "
                            f"float32 of shape {shape}")
    return np.frombuffer(tensor.data, dtype="<f4").reshape(shape)


@dataclass
class GeneratedBatch:
    """A batch as the server generated it, before it is cut into messages."""

    rows: np.ndarray  # (n, width) float32 in the wire layout
    layout: pb.TransitionLayout
    versions: dict[str, int]
    guided: bool
    generated_unix_time: float
    generation_seconds: float
    dropped_nonfinite_rows: int


def batch_messages(batch: GeneratedBatch, sequence: int) -> list[pb.TransitionBatch]:
    """The batch as TransitionBatch parts of at most PART_BYTES of rows each."""
    n, width = batch.rows.shape
    rows_per_part = max(1, PART_BYTES // (4 * width))
    parts = max(1, math.ceil(n / rows_per_part))
    versions = versions_to_proto(batch.versions)
    return [
        pb.TransitionBatch(
            sequence=sequence, part=part, parts=parts, rows=n,
            transitions=array_to_tensor(
                "transitions", batch.rows[part * rows_per_part:(part + 1) * rows_per_part]),
            layout=batch.layout, versions=versions, guided=batch.guided,
            generated_unix_time=batch.generated_unix_time,
            generation_seconds=batch.generation_seconds,
            dropped_nonfinite_rows=batch.dropped_nonfinite_rows,
        )
        for part in range(parts)
    ]


@dataclass
class SyntheticBatch:
    """A batch as a consumer receives it: transitions in raw units and where they came from.

    The transitions' arrays are read-only views of the received bytes where the batch came
    in one message; `ReplayBuffer.add` copies them.
    """

    transitions: Transitions
    versions: dict[str, int]
    guided: bool
    sequence: int
    generated_unix_time: float
    generation_seconds: float
    dropped_nonfinite_rows: int

    def __len__(self) -> int:
        return len(self.transitions)


def assemble(parts: list[pb.TransitionBatch]) -> SyntheticBatch:
    """One batch from its parts, in order; checks they belong together."""
    first = parts[0]
    if [p.part for p in parts] != list(range(first.parts)) or any(
            (p.sequence, p.parts, p.versions, p.guided)
            != (first.sequence, first.parts, first.versions, first.guided) for p in parts):
        raise ProtocolError(f"batch {first.sequence}: parts out of order or of different "
                            f"batches ({[(p.sequence, p.part, p.parts) for p in parts]})")
    arrays = [tensor_to_array(p.transitions) for p in parts]
    rows = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    if len(rows) != first.rows:
        raise ProtocolError(f"batch {first.sequence}: {len(rows)} rows received, "
                            f"{first.rows} announced")
    return SyntheticBatch(
        transitions=rows_to_transitions(rows, first.layout),
        versions=versions_from_proto(first.versions),
        guided=first.guided,
        sequence=first.sequence,
        generated_unix_time=first.generated_unix_time,
        generation_seconds=first.generation_seconds,
        dropped_nonfinite_rows=first.dropped_nonfinite_rows,
    )


def rows_to_transitions(rows: np.ndarray, layout: pb.TransitionLayout) -> Transitions:
    """Column views of (n, width) rows as Transitions (timeouts 0, return-to-go unknown)."""
    if rows.ndim != 2 or rows.shape[1] != layout.width:
        raise ProtocolError(f"rows of shape {rows.shape} do not match the layout's width "
                            f"{layout.width}")
    columns = {s.name: rows[:, s.start:s.start + s.size] for s in layout.segments}
    if set(columns) != set(SEGMENTS):
        raise ProtocolError(f"layout segments {sorted(columns)} are not {sorted(SEGMENTS)}")
    n = len(rows)
    return Transitions(
        observations=columns["observations"],
        actions=columns["actions"],
        rewards=columns["rewards"][:, 0],
        next_observations=columns["next_observations"],
        terminals=columns["terminals"][:, 0],
        timeouts=np.zeros(n, np.float32),
        mc_returns=np.full(n, -np.inf, np.float32),
    )
