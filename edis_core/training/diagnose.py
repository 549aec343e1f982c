"""`edis diagnose RUN_DIR`: guided vs unguided samples of a run's latest models (EDIS.md §3).

Both batches come from the same prior; the guided one through the energies of the run's
last refresh. They are compared on state alignment with the positive buffer, likelihood
under the current policy, dynamics fidelity against the simulator and validity.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from edis_core.diagnostics import compare
from edis_core.training.envs import ActionScaler
from edis_core.training.trainer import Trainer
from edis_core.transitions import Transitions


def diagnose_run(run_dir: Path, samples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    if samples < 1:
        raise ValueError(f"--samples must be >= 1 (guided and unguided samples each), got "
                         f"{samples}")
    trainer = Trainer.inspect(run_dir)
    if trainer.supply is None:
        raise ValueError(f"{run_dir} was trained with synthetic=none: it has no diffusion prior "
                         "to diagnose; train with --synthetic edis (or unguided)")
    if len(trainer.positive) == 0:
        raise ValueError(f"{run_dir} has no online episodes in its positive buffer yet; "
                         "diagnose it after the online phase has started")
    generator = trainer.supply.generator
    torch.manual_seed(seed)
    energies_from = "run"
    if not generator.energies_trained:
        # An unguided run (or one stopped before its first guided refresh) has untrained
        # energies: train them now, on the run's own buffers, as a refresh would.
        generator.train_energies(trainer.positive.contents(), trainer.replay.contents(),
                                 trainer.agent.sample_actions, generator.config.energy_steps)
        energies_from = "trained for this diagnosis"
    guided = generator.generate(samples, guided=True)
    unguided = generator.generate(samples, guided=False)
    to_env = _to_env_units(trainer.scaler)
    report = compare(to_env(guided), to_env(unguided), to_env(trainer.positive.contents()),
                     to_env(trainer.offline), trainer.agent, trainer.env.spec.id,
                     trainer.scaler.low, trainer.scaler.high, seed=seed)
    report["run"] = {"run_dir": str(run_dir), "steps": trainer.steps, "samples": samples,
                     "energies": energies_from, "dropped_nonfinite_rows": generator.dropped_rows}
    return report


def _to_env_units(scaler: ActionScaler):
    """Buffers hold actions in the agents' [-1, 1]; the simulator and the report use env units."""

    def convert(t: Transitions) -> Transitions:
        return dataclasses.replace(t, actions=scaler.to_env(t.actions))

    return convert
