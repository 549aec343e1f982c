"""Checkpoints: everything needed to continue a run at the same step.

Layout of `RUN_DIR/checkpoint/`:
  state.pt       torch tensors and plain values only (agent, generator, torch RNG),
                 read back with `torch.load(weights_only=True)`: no arbitrary unpickling
  progress.json  step counters and the numpy RNG state
  *.npz          buffers (allow_pickle=False)
A checkpoint is written to a sibling temp directory and renamed into place, so a
crash while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or unreadable; the message says which file and what to do."""


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def save(run_dir: Path, state: dict[str, Any], progress: dict[str, Any],
         buffers: dict[str, Any]) -> Path:
    """`buffers` maps a name to an object with `.save(path)`; written as NAME.npz."""
    final = checkpoint_path(run_dir)
    tmp = run_dir / f"{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
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
    if not (directory / PROGRESS_FILE).is_file():
        raise CheckpointError(
            f"no checkpoint in {run_dir}: expected {directory / PROGRESS_FILE}. "
            "Start a new run with `edis train ... --run-dir DIR` instead of --resume.")
    try:
        progress = json.loads((directory / PROGRESS_FILE).read_text())
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # any parse failure means the same thing to the user
        raise CheckpointError(
            f"checkpoint in {directory} is corrupt or unreadable ({type(err).__name__}: {err}). "
            "Delete the run directory and start again, or restore it from a backup.") from err
    return state, progress, directory
