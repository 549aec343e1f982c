"""`offline_from`: a run that starts from another run's finished offline phase.

Every arm of a comparison can share one offline pre-training (the same agent, and the same
diffusion prior where both train one), so that arms differ only online. The source must have
been made with the settings that act offline; its agent and prior are read from its latest
checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edis_core.training import checkpoint
from edis_core.training.config import GENERATED_MODES, TrainConfig
from edis_core.training.run_dir import read_run_config


def offline_part(config: TrainConfig) -> dict[str, Any]:
    """The agent's settings that act in the offline phase (all but its `online_only`)."""
    agent = config.agent_config
    return {k: v for k, v in dataclasses.asdict(agent).items() if k not in agent.online_only}


def source_state(source: Path, ours: TrainConfig) -> dict[str, Any]:
    """`source`'s checkpoint state, once its settings and progress are known to fit `ours`."""
    theirs = read_run_config(source)
    fields = ("agent", "dataset", "normalization", "offline_steps", "batch_size")
    differ = [f for f in fields if getattr(theirs, f) != getattr(ours, f)]
    differ += ["agent config"] if offline_part(theirs) != offline_part(ours) else []
    if differ:
        raise checkpoint.CheckpointError(f"offline_from={source}: its {', '.join(differ)} "
                                         "differ from this run's; use a run made with the "
                                         "same settings")
    state, progress, _ = checkpoint.load(source)
    if progress["steps"]["offline"] < ours.offline_steps:
        raise checkpoint.CheckpointError(
            f"offline_from={source}: its offline phase stopped at step "
            f"{progress['steps']['offline']} of {ours.offline_steps}; finish it first "
            f"(`edis train --resume {source}`)")
    return state


def shares_prior(source: Path, ours: TrainConfig) -> bool:
    """`source` trained a diffusion prior with `ours`' prior settings, so that the run can
    sample from it rather than train its own."""
    theirs = read_run_config(source)
    return theirs.synthetic in GENERATED_MODES and (
        theirs.edis.diffusion, theirs.edis.next_state_delta) == (ours.edis.diffusion,
                                                                 ours.edis.next_state_delta)
