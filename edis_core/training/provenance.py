"""What a checkpoint records about the data and environment it was trained on.

Resuming after the dataset was remade, or with another version of the environment, would
continue one experiment on another's data under the same name. The checkpoint therefore
holds the dataset's fingerprint (id, size, a content hash) and the environment's spec, and a
resume compares them with what it finds now.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from edis_core.data.minari_io import OfflineDataset
from edis_core.training.checkpoint import CheckpointError


class ChangedDataWarning(UserWarning):
    """A run continued on a dataset or environment other than its checkpoint's."""


# mc_returns are left out: they are derived from the rewards with the run's own γ.
HASHED_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals",
                 "timeouts")


def dataset_fingerprint(dataset: OfflineDataset) -> dict[str, Any]:
    """Id, size and a SHA-256 of every stored value, in dataset order."""
    digest = hashlib.sha256()
    for name in HASHED_FIELDS:
        digest.update(np.ascontiguousarray(getattr(dataset.transitions, name)).tobytes())
    return {"id": dataset.dataset_id, "transitions": len(dataset.transitions),
            "episodes": dataset.episodes, "sha256": digest.hexdigest()}


def environment_spec(env: gym.Env) -> dict[str, Any]:
    """The environment's id, episode limit and space shapes."""
    spec = env.spec
    return {"id": spec.id if spec else type(env).__name__,
            "max_episode_steps": spec.max_episode_steps if spec else None,
            "observation_shape": list(env.observation_space.shape),
            "action_shape": list(env.action_space.shape)}


def changes(what: str, saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'dataset transitions 3000 -> 400', ... for every recorded key that differs now."""
    return [f"{what} {key} {_short(saved.get(key))} -> {_short(value)}"
            for key, value in now.items() if saved.get(key) != value]


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "..." if len(text) > 40 else text  # content hashes


def check(run_dir: Path, progress: dict[str, Any], dataset: dict[str, Any],
          env: dict[str, Any], accept: bool) -> None:
    """A resume's data must be what the checkpoint (`progress`) was made on: `dataset` (its
    fingerprint) and `env` (its spec) now. A change is refused, or with `accept` warned of."""
    missing = [key for key in ("dataset", "env") if key not in progress]
    if missing:
        raise CheckpointError(
            f"checkpoint in {run_dir} records no {' or '.join(missing)}: it was not "
            "written by this version of edis; start the run again")
    changed = (changes("dataset", progress["dataset"], dataset)
               + changes("environment", progress["env"], env))
    if not changed:
        return
    listing = "; ".join(changed)
    if not accept:
        raise CheckpointError(
            f"the data of {run_dir} changed since its checkpoint: {listing}. Restore "
            f"them, or continue on the new ones with `edis train --resume {run_dir} "
            "--accept-changed-data`")
    warnings.warn(f"the data of {run_dir} changed since its checkpoint ({listing}); "
                  "continuing on the new ones", ChangedDataWarning, stacklevel=4)
