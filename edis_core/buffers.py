"""The two buffers of the online phase.

ReplayBuffer: a preallocated float32 ring of transitions (real online data, optionally
offline data), sampled uniformly by the agent.
PositiveBuffer: a FIFO of the most recent *whole* trajectories; its states are the positives
of the state energy E_s, an approximation of d^π (docs/algorithm.md §5; Sinha et al. 2022).

Both refuse NaN/inf rows (−inf mc_returns mark an unknown return) and save to .npz without
pickle so a checkpoint can be read by another process. Neither is thread-safe: one owner
adds and samples.
"""

from __future__ import annotations

import itertools
import os
import zipfile
import zlib
from collections import deque
from pathlib import Path

import numpy as np

from edis_core.finite import require_finite
from edis_core.transitions import FIELDS, Transitions

_REPLAY_FORMAT = "edis-replay-buffer-v1"
_POSITIVE_FORMAT = "edis-positive-buffer-v1"


class ReplayBuffer:
    """A ring of `capacity` transitions; adding overwrites the oldest rows once full."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int) -> None:
        for name, value in (("capacity", capacity), ("obs_dim", obs_dim), ("act_dim", act_dim)):
            if value < 1:
                raise ValueError(f"ReplayBuffer {name} must be >= 1, got {value}")
        self.capacity = capacity
        self._data = Transitions.empty(obs_dim, act_dim, capacity).as_dict()
        self._pointer = 0  # the next row to write
        self._size = 0

    @property
    def obs_dim(self) -> int:
        return self._data["observations"].shape[1]

    @property
    def act_dim(self) -> int:
        return self._data["actions"].shape[1]

    def __len__(self) -> int:
        return self._size

    def add(self, t: Transitions) -> np.ndarray:
        """Insert a chunk (O(1) per row, wrapping around); returns the rows it went to.

        The rows stay valid for `set_mc_returns` until `capacity` more rows are added.
        """
        n = len(t)
        if (t.obs_dim, t.act_dim) != (self.obs_dim, self.act_dim):
            raise ValueError(f"transitions of dims (obs {t.obs_dim}, act {t.act_dim}) do not fit "
                             f"a buffer of dims (obs {self.obs_dim}, act {self.act_dim})")
        if n > self.capacity:
            raise ValueError(f"cannot add {n} rows to a buffer of capacity {self.capacity}; "
                             "add only the most recent rows or raise the capacity")
        require_finite(t, "rows added to a ReplayBuffer")
        head = min(n, self.capacity - self._pointer)  # rows before the wrap
        for name, value in t.as_dict().items():
            dest = self._data[name]
            dest[self._pointer:self._pointer + head] = value[:head]
            dest[:n - head] = value[head:]
        rows = (self._pointer + np.arange(n)) % self.capacity
        self._pointer = (self._pointer + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
        return rows

    def set_mc_returns(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Fill in the return-to-go of rows whose episode has ended (Cal-QL's reference)."""
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= self._size):
            raise ValueError(f"row indices must be in [0, {self._size}), the filled rows")
        self._data["mc_returns"][indices] = values

    def sample(self, batch_size: int, rng: np.random.Generator) -> Transitions:
        """Uniform over the filled rows, with replacement."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        return self._take(rng.integers(self._size, size=batch_size))

    def contents(self) -> Transitions:
        """A copy of every stored row, oldest first."""
        return self._take((self._pointer - self._size + np.arange(self._size)) % self.capacity)

    def save(self, path: str | os.PathLike) -> None:
        arrays = {name: value[:self._size] for name, value in self._data.items()}
        _write_npz(path, format=np.array(_REPLAY_FORMAT), capacity=np.int64(self.capacity),
                   pointer=np.int64(self._pointer), size=np.int64(self._size), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReplayBuffer:
        arrays = _read_npz(path, _REPLAY_FORMAT, ("capacity", "pointer", "size", *FIELDS))
        capacity, pointer, size = (_scalar(arrays, name, path)
                                   for name in ("capacity", "pointer", "size"))
        stored = _transitions(arrays, path)
        filled_ok = pointer == size or size == capacity  # rows [0, size) are the filled ones
        if not (0 <= size <= capacity and 0 <= pointer < capacity and filled_ok
                and len(stored) == size):
            raise ValueError(f"{path}: inconsistent buffer file (capacity {capacity}, pointer "
                             f"{pointer}, size {size}, {len(stored)} rows)")
        require_finite(stored, str(path))
        buffer = cls(capacity, stored.obs_dim, stored.act_dim)
        for name, value in stored.as_dict().items():
            buffer._data[name][:size] = value
        buffer._pointer, buffer._size = pointer, size
        return buffer

    def _take(self, rows: np.ndarray) -> Transitions:
        return Transitions(**{name: value[rows] for name, value in self._data.items()})


class PositiveBuffer:
    """The most recent whole trajectories, at most `capacity` transitions in all.

    Adding an episode evicts the oldest episodes, whole, until the total fits; an episode
    longer than `capacity` keeps its last `capacity` rows.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"PositiveBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._episodes: deque[Transitions] = deque()
        self._size = 0
        self._contents: Transitions | None = None  # cached concatenation, reset on change

    def __len__(self) -> int:
        return self._size

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def add_episode(self, t: Transitions) -> None:
        if len(t) == 0:
            raise ValueError("cannot add an empty episode")
        require_finite(t, "episode added to a PositiveBuffer")
        if self._episodes:
            first = self._episodes[0]
            if (t.obs_dim, t.act_dim) != (first.obs_dim, first.act_dim):
                raise ValueError(f"episode of dims (obs {t.obs_dim}, act {t.act_dim}) differs "
                                 f"from the buffer's (obs {first.obs_dim}, act {first.act_dim})")
        tail = t.take(slice(max(0, len(t) - self.capacity), None))
        self._episodes.append(Transitions(**{name: np.array(value, np.float32)
                                             for name, value in tail.as_dict().items()}))
        self._size += len(tail)
        while self._size > self.capacity:
            self._size -= len(self._episodes.popleft())
        self._contents = None

    def contents(self) -> Transitions:
        """Every stored row, oldest episode first (shared, do not modify)."""
        if not self._episodes:
            raise ValueError("the PositiveBuffer is empty")
        if self._contents is None:
            self._contents = Transitions.concatenate(list(self._episodes))
        return self._contents

    def sample(self, n: int, rng: np.random.Generator) -> Transitions:
        """Uniform over stored transitions, with replacement."""
        contents = self.contents()
        return contents.take(rng.integers(len(contents), size=n))

    def save(self, path: str | os.PathLike) -> None:
        lengths = np.array([len(e) for e in self._episodes], np.int64)
        arrays = self.contents().as_dict() if self._episodes else {}
        _write_npz(path, format=np.array(_POSITIVE_FORMAT), capacity=np.int64(self.capacity),
                   lengths=lengths, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PositiveBuffer:
        arrays = _read_npz(path, _POSITIVE_FORMAT, ("capacity", "lengths"))
        buffer = cls(_scalar(arrays, "capacity", path))
        lengths = arrays["lengths"]
        if lengths.size == 0:
            return buffer
        stored = _transitions(arrays, path)
        if (lengths.ndim != 1 or np.any(lengths < 1) or lengths.sum() != len(stored)
                or len(stored) > buffer.capacity):
            raise ValueError(f"{path}: episode lengths {lengths.tolist()} do not match "
                             f"{len(stored)} stored rows within capacity {buffer.capacity}")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        for start, end in itertools.pairwise(starts):
            buffer.add_episode(stored.take(slice(start, end)))
        return buffer


def _write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write through a temporary file so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _read_npz(path: str | os.PathLike, expected_format: str,
              required: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"cannot read buffer file {path}: {e}") from e
    if "format" not in arrays:
        raise ValueError(f"{path} is not a buffer file written by this project")
    if str(arrays["format"]) != expected_format:
        raise ValueError(f"{path} holds a {arrays['format']}, expected a {expected_format}")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing}")
    return arrays


def _scalar(arrays: dict[str, np.ndarray], name: str, path: str | os.PathLike) -> int:
    value = arrays[name]
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"{path}: {name} must be an integer scalar, got {value!r}")
    return int(value)


def _transitions(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Transitions:
    missing = [name for name in FIELDS if name not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing}")
    try:
        t = Transitions(**{name: arrays[name] for name in FIELDS})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if t.observations.ndim != 2 or t.actions.ndim != 2 or any(
            arrays[name].ndim != 1 for name in ("rewards", "terminals", "timeouts", "mc_returns")):
        raise ValueError(f"{path}: observations/actions must be 2-D and the other fields 1-D")
    return t
