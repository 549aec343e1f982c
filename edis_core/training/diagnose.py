"""`edis diagnose RUN_DIR`: guided vs unguided samples of a run's latest models
(docs/algorithm.md §3).

Both batches come from the same prior; the guided one through the energies of the run's
last refresh. They are compared on state alignment with fresh episodes of the run's current
policy (collected now, after the last refresh, so the energies never saw them), on how
typical their actions are of that policy, on dynamics fidelity against the simulator and on
validity; a third guided batch with the transition energy switched on (or off) shows what
it does to the dynamics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from edis_core.diagnostics import compare
from edis_core.generator import SyntheticGenerator
from edis_core.training.envs import ActionScaler
from edis_core.training.rollouts import collect_episodes
from edis_core.training.trainer import Trainer
from edis_core.transitions import Transitions

HELD_OUT_SEED = 30_000  # env seeds of the held-out episodes: seed + this, unlike any run's
# Samples a side for the guidance benchmarks' verdicts: on the demo runs the 95% interval of
# the s' error ratio is ±0.02-0.04 at 100,000, hence ±0.07-0.14 at 10,000 (`edis diagnose`'s
# default, quick).
BENCHMARK_SAMPLES = 100_000


def diagnose_run(run_dir: Path, samples: int = 10_000, seed: int = 0,
                 held_out: int = 5_000, transition_weight: float = 1.0) -> dict[str, Any]:
    if samples < 1:
        raise ValueError(f"--samples must be >= 1 (guided and unguided samples each), got "
                         f"{samples}")
    trainer = Trainer.inspect(run_dir)
    if trainer.generator is None:
        raise ValueError(f"{run_dir} was trained with synthetic={trainer.config.synthetic}: it "
                         "has no diffusion prior to diagnose; train with --synthetic edis (or "
                         "unguided)")
    if len(trainer.positive) == 0:
        raise ValueError(f"{run_dir} has no online episodes in its positive buffer yet; "
                         "diagnose it after the online phase has started")
    generator = trainer.generator
    torch.manual_seed(seed)
    energies_from = "run"
    if not generator.energies_trained:
        # An unguided run (or one stopped before its first guided refresh) has untrained
        # energies: train them now, on the run's own buffers, as a refresh would.
        generator.train_energies(trainer.positive.contents(), trainer.replay.contents(),
                                 trainer.agent.sample_actions, generator.config.energy_steps)
        energies_from = "trained for this diagnosis"
    report = diagnose_generator(trainer, generator, samples, seed, held_out, transition_weight)
    report["run"] = {"run_dir": str(run_dir), "steps": trainer.steps, "samples": samples,
                     "energies": energies_from, "dropped_nonfinite_rows": generator.dropped_rows}
    return report


def diagnose_generator(trainer: Trainer, generator: SyntheticGenerator, samples: int,
                       seed: int, held_out: int, transition_weight: float) -> dict[str, Any]:
    """`compare` on `generator`'s guided and unguided samples, in the run's env units; the
    prior's own (r, s', done) at the held-out (s, a) are the dynamics reference.

    `seed` picks the held-out episodes and the draw (the generator's sampling streams are
    restarted from it), so diagnoses under other seeds are independent repeats. Every sample
    is checked against the simulator: `samples` sets the precision of the dynamics ratios.

    The transition probe (when the generator has E_T): `transition_probe`."""
    episodes = collect_episodes(trainer.agent, trainer.env.spec.id, trainer.scaler,
                                held_out, seed + HELD_OUT_SEED)
    generator.seed_sampling(seed)
    start = generator.sampling_state()
    guided = generator.generate(samples, guided=True)
    unguided = generator.generate(samples, guided=False)
    after = generator.sampling_state()
    probe = None
    if "transition" in generator.energies:
        weight, with_energy, without = transition_probe(generator, guided, start, samples,
                                                        transition_weight)
        probe = (weight, to_env(with_energy, trainer.scaler), to_env(without, trainer.scaler))
        generator.restore_sampling(after)  # the completion below gets random numbers of its own
    prior_at_policy = generator.complete(episodes)
    return compare(to_env(guided, trainer.scaler), to_env(unguided, trainer.scaler),
                   to_env(episodes, trainer.scaler), to_env(trainer.offline, trainer.scaler),
                   trainer.agent, trainer.env.spec.id, trainer.scaler.low, trainer.scaler.high,
                   max_samples=max(samples, len(episodes)), seed=seed,
                   positives=to_env(trainer.positive.contents(), trainer.scaler),
                   transition_probe=probe,
                   prior_at_policy_states=to_env(prior_at_policy, trainer.scaler))


def transition_probe(generator: SyntheticGenerator, guided: Transitions,
                     drawn_from: tuple[torch.Tensor, torch.Tensor], samples: int,
                     transition_weight: float) -> tuple[float, Transitions, Transitions]:
    """(w_T, batch with E_T, batch without): `guided` and the guided batch drawn again from
    the same sampling state (`drawn_from`, a `sampling_state`), with w_T =
    `transition_weight` if the configured w_T is 0, else 0."""
    configured = generator.config.w_transition or 0.0
    other = transition_weight if configured == 0 else 0.0
    generator.restore_sampling(drawn_from)
    generator.config.w_transition = other
    try:
        again = generator.generate(samples, guided=True)
    finally:
        generator.config.w_transition = configured
    with_energy, without = (again, guided) if configured == 0 else (guided, again)
    return max(configured, other), with_energy, without


def to_env(t: Transitions, scaler: ActionScaler) -> Transitions:
    """Buffers hold actions in the agents' [-1, 1]; the simulator and the report use env units."""
    return dataclasses.replace(t, actions=scaler.to_env(t.actions))
