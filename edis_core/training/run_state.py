"""What a run's checkpoint holds, and putting a trainer back to it.

A checkpoint (training/checkpoint.py writes it) is the agent, the generator's models and
the random states (`state`, safetensors), the buffers (`buffers`), and the run's progress
with the data and environment it was made on (`progress`, JSON). Restored, a run continues
from the step the checkpoint was taken at, with the random states it had there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.training import checkpoint, provenance

if TYPE_CHECKING:
    from edis_core.training.trainer import Trainer


def save(trainer: Trainer) -> Path:
    state: dict[str, Any] = {"agent": trainer.agent.state_dict(),
                             "torch_rng": torch.get_rng_state()}
    if trainer.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    buffers: dict[str, Any] = {"replay": trainer.replay, "positive": trainer.positive}
    if trainer.generator is not None:
        state["generator"] = trainer.supply.generator_state()
    if trainer.supply is not None:
        buffers["synthetic"] = trainer.synthetic.buffer
    env = trainer.env
    progress = {
        "phase": trainer.phase, "steps": trainer.steps, "online_updates": trainer.updates,
        "numpy_rng": trainer.rng.bit_generator.state,
        "synthetic": trainer.supply.state() if trainer.supply else None,
        "env_id": env.spec.id if env.spec else None,
        "obs_dim": trainer.offline.obs_dim, "act_dim": trainer.offline.act_dim,
        "dataset": trainer.data_fingerprint, "env": provenance.environment_spec(env),
    }
    return checkpoint.save(trainer.run_dir, state, progress, buffers)


def restore(trainer: Trainer, accept_changed_data: bool) -> None:
    """Refuses a dataset or environment that changed since the checkpoint unless
    `accept_changed_data`, and a checkpoint that does not fit the run's configuration."""
    state, progress, directory = checkpoint.load(trainer.run_dir)
    provenance.check(trainer.run_dir, progress, trainer.data_fingerprint,
                     provenance.environment_spec(trainer.env), accept_changed_data)
    try:
        trainer.agent.load_state_dict(state["agent"])
        torch.set_rng_state(state["torch_rng"])
        if trainer.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if trainer.generator is not None:
            trainer.generator.load_state_dict(state["generator"])
        trainer.rng.bit_generator.state = progress["numpy_rng"]
        trainer.phase, trainer.steps = progress["phase"], progress["steps"]
        trainer.updates = progress["online_updates"]
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise checkpoint.CheckpointError(
            f"checkpoint in {directory} does not match this run's configuration "
            f"({type(err).__name__}: {err})") from err
    trainer.replay = checkpoint.load_buffer(directory, "replay", ReplayBuffer.load)
    trainer.positive = checkpoint.load_buffer(directory, "positive", PositiveBuffer.load)
    if trainer.supply is not None:
        synthetic = checkpoint.load_buffer(directory, "synthetic", ReplayBuffer.load)
        try:
            trainer.supply.load_state(progress["synthetic"], synthetic)
        except (KeyError, ValueError, TypeError) as err:
            raise checkpoint.CheckpointError(
                f"checkpoint in {directory}: its synthetic-data record does not fit "
                f"({type(err).__name__}: {err})") from err
