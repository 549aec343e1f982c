"""Checkpoints: everything needed to continue a run at the same step.

Layout of `RUN_DIR/checkpoint/`:
  state.pt       torch tensors and plain values only (agent, generator, torch RNG),
                 read back with `torch.load(weights_only=True)`: no arbitrary unpickling
  progress.json  step counters and the numpy RNG state
  *.npz          buffers (allow_pickle=False)
A checkpoint is written to a sibling temp directory named after the writing process and
renamed into place, so a crash while writing leaves the previous checkpoint intact. Weights
are checked finite both ways: NaN/inf weights are never written over a good checkpoint, and
never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from edis_core.finite import NonFiniteError, require_finite_weights

T = TypeVar("T")

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or unreadable; the message says which file and what to do."""


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def save(run_dir: Path, state: dict[str, Any], progress: dict[str, Any],
         buffers: dict[str, Any]) -> Path:
    """`buffers` maps a name to an object with `.save(path)`; written as NAME.npz.

    The caller owns `run_dir` (RunDirLock): temp directories of other processes are stale."""
    require_finite_weights(state, "the state to checkpoint")
    final = checkpoint_path(run_dir)
    for stale in run_dir.glob(f"{CHECKPOINT_DIR}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir / f"{CHECKPOINT_DIR}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)
    (tmp / PROGRESS_FILE).write_text(json.dumps(progress, indent=1))
    for name, buffer in buffers.items():
        buffer.save(tmp / f"{name}.npz")
    old = _previous_path(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _previous_path(run_dir: Path) -> Path:
    """Where `save` parks the previous checkpoint while the new one is renamed into place."""
    return run_dir / f"{CHECKPOINT_DIR}.old"


def has_checkpoint(run_dir: Path) -> bool:
    return checkpoint_path(run_dir).exists() or _previous_path(run_dir).exists()


def load(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Return (state, progress, checkpoint directory) or raise CheckpointError.

    A crash between the two renames of `save` leaves only `checkpoint.old`: use it."""
    directory = checkpoint_path(run_dir)
    if not directory.exists() and _previous_path(run_dir).exists():
        directory = _previous_path(run_dir)
    if not directory.exists():
        raise CheckpointError(
            f"{run_dir} has no checkpoint: the run stopped before its first one. Start it "
            f"again with the `edis train ... --run-dir {run_dir}` command it was started with.")
    if not (directory / PROGRESS_FILE).is_file():
        raise CheckpointError(
            f"checkpoint in {directory} is incomplete (no {PROGRESS_FILE}). Restore it from a "
            f"backup, or delete {directory} and start the run again with `edis train ... "
            f"--run-dir {run_dir}`.")
    try:
        progress = json.loads((directory / PROGRESS_FILE).read_text())
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        require_finite_weights(state, STATE_FILE)
    except Exception as err:  # any parse failure means the same thing to the user
        raise CheckpointError(_corrupt(directory, err)) from err
    return state, progress, directory


def load_buffer(directory: Path, name: str, reader: Callable[[Path], T]) -> T:
    """Read NAME.npz of a checkpoint with `reader`, naming a missing or corrupt file."""
    path = directory / f"{name}.npz"
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint in {directory} is incomplete: {path.name} is missing. Restore it from "
            "a backup, or delete the run directory and start again.")
    try:
        return reader(path)
    except (ValueError, OSError) as err:
        raise CheckpointError(_corrupt(directory, err)) from err


def _corrupt(directory: Path, err: Exception) -> str:
    if isinstance(err, NonFiniteError):
        what = "holds non-finite values"
    else:
        what = "is corrupt or unreadable"
    first_line = next(iter(str(err).splitlines()), "")  # torch's unpickling errors run long
    return (f"checkpoint in {directory} {what} ({type(err).__name__}: {first_line}). Restore "
            "it from a backup, or delete the run directory and start again.")
