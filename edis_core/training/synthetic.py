"""The synthetic data of the online phase: when to refresh, what a refresh trains, and where
the generated rows come from.

A refresh (docs/algorithm.md §7) optionally continues the prior's training on offline and
online data, and in guided mode retrains the energies on fresh positives:
`SyntheticSupply.train_models`, the same code in both runtimes. Then:
- `InProcessSupply` (`edis train`) generates `samples_per_refresh` transitions in the loop's
  own thread and inserts them into the synthetic table;
- `services.learner.sampler_supply.SamplerSupply` (`edis run`) trains in a background
  thread, publishes the weights to the sampler service and inserts the batches it streams;
- `OracleSupply` (the benchmark's positive control, both runtimes) has no generator: it
  fills the table with real transitions of the current policy from a simulator of its own.
Rows carry the version of the model that made them (the energies' in guided mode, the
prior's otherwise), so that the table can keep only fresh ones. Every loss trained with is
checked finite, and a batch in which the generator had to drop every row (it drops rows
with NaN/inf) stops the run instead of silently adding nothing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edis_core.agents.base import Agent
from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.finite import NonFiniteError, check_losses
from edis_core.generator import SyntheticGenerator
from edis_core.training.config import SyntheticSchedule
from edis_core.training.envs import ActionScaler
from edis_core.training.rollouts import collect_episodes
from edis_core.training.synthetic_table import SyntheticTable
from edis_core.transitions import Transitions

ORACLE_SEED = 40_000  # env seeds of the oracle's simulator: seed + this + refresh, unlike any run's

Policy = Callable[[torch.Tensor], torch.Tensor]


class RefreshCancelled(Exception):
    """A refresh stopped through `RefreshInputs.cancel`; it changed no version."""


@dataclass
class RefreshInputs:
    """What one refresh trains on, taken from the learner at the step it became due."""

    env_step: int
    positives: Transitions  # the positive buffer: recent whole episodes (≈ d^π)
    online: Transitions  # online replay, oldest first
    offline: Transitions
    policy: Policy  # a ~ π(·|s), raw observations in, agent-unit actions out
    rng: np.random.Generator
    # Set from another thread to stop a refresh between two training steps.
    cancel: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def take(cls, env_step: int, positives: PositiveBuffer, replay: ReplayBuffer,
             offline: Transitions, policy: Policy, rng: np.random.Generator) -> RefreshInputs:
        recent = positives.contents() if len(positives) else Transitions.empty(
            replay.obs_dim, replay.act_dim)  # unguided refreshes need no positives
        return cls(env_step, recent, replay.contents(), offline, policy, rng)


class SyntheticSupply:
    """When a refresh is due and what it trains; subclasses decide where rows come from."""

    def __init__(self, generator: SyntheticGenerator | None, schedule: SyntheticSchedule,
                 guided: bool, table: SyntheticTable):
        self.generator = generator
        self.schedule = schedule
        self.guided = guided
        self.table = table
        self.last_refresh: int | None = None
        self.prior_version = 0  # 1: the prior as offline training left it; +1 per online training
        self.energy_version = 0  # +1 per energy training

    @property
    def model_version(self) -> int:
        """The version synthetic rows are tagged with."""
        return self.energy_version if self.guided else self.prior_version

    def due(self, env_step: int, positives: PositiveBuffer) -> bool:
        """Every mode waits for the same number of online rows before its first refresh, so
        that synthetic rows enter every mode's batches at the same step."""
        if len(positives) < max(1, self.schedule.min_positive):
            return False
        return self.last_refresh is None or env_step - self.last_refresh >= (
            self.schedule.refresh_every)

    def start(self) -> None:
        """The online phase begins (or resumes): the offline-trained prior is version 1."""
        self.prior_version = max(self.prior_version, 1)

    def maintain(self, env_step: int, positives: PositiveBuffer, replay: ReplayBuffer,
                 offline: Transitions, policy: Policy,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
        """Called once per pass of the online loop; returns metrics records to log."""
        raise NotImplementedError

    def settle(self, env_step: int) -> list[dict[str, Any]]:
        """The online phase has reached its budget: finish what is in progress, so that the
        final checkpoint holds what `edis train` would hold (in process: nothing to do)."""
        return []

    def close(self) -> None:
        """Stop whatever the supply runs besides the loop (nothing, in process)."""

    def stats(self) -> dict[str, float]:
        """Counters for the metrics log (none in process)."""
        return {}

    def generator_state(self) -> dict[str, Any]:
        """The generator as a checkpoint should hold it."""
        return self.generator.state_dict()

    def train_models(self, inputs: RefreshInputs) -> dict[str, Any]:
        """The training half of a refresh: online prior steps (if configured), then the
        energies (guided mode). It may run in another thread: it touches only the generator
        and `inputs`; `advance_versions(stats)` then counts what it trained."""
        stats: dict[str, Any] = {"kind": "synthetic", "phase": "online",
                                 "step": inputs.env_step}

        def unless_cancelled(*_: Any) -> None:
            if inputs.cancel.is_set():
                raise RefreshCancelled(f"refresh of step {inputs.env_step} cancelled")

        start = time.perf_counter()
        if self.schedule.prior_steps_per_refresh:
            stats["prior_loss"] = self.generator.train_prior(
                prior_rows(inputs.offline, inputs.online, inputs.positives,
                           self.schedule.prior_recent_share, self.schedule.prior_offline_rows,
                           inputs.rng),
                self.schedule.prior_steps_per_refresh, unless_cancelled)
            check_losses(stats, "online prior training")
            stats["prior_seconds"] = time.perf_counter() - start
        if self.guided:
            start = time.perf_counter()
            online = inputs.online
            real = online.take(slice(max(0, len(online) - self.schedule.real_sample), None))
            unless_cancelled()
            energy_stats = self.generator.train_energies(
                inputs.positives, real, inputs.policy, self.generator.config.energy_steps,
                unless_cancelled)
            check_losses(energy_stats, "energy training")
            stats.update({f"energy/{k}": v for k, v in energy_stats.items()})
            stats["energy_seconds"] = time.perf_counter() - start
        return stats

    def advance_versions(self, stats: dict[str, Any]) -> list[str]:
        """Count the models a `train_models` call trained; returns their names."""
        trained = []
        if "prior_loss" in stats:
            self.prior_version += 1
            trained.append("prior")
        if any(key.startswith("energy/") for key in stats):
            self.energy_version += 1
            trained.append("energies")
        return trained

    # ----- checkpoints: plain values for progress.json -------------------------------------
    def state(self) -> dict[str, Any]:
        return {"last_refresh": self.last_refresh, "prior_version": self.prior_version,
                "energy_version": self.energy_version, "table": self.table.state()}

    def load_state(self, state: dict[str, Any], synthetic: ReplayBuffer) -> None:
        """`state` as `state()` wrote it; `synthetic` holds the table's rows."""
        self.last_refresh = state["last_refresh"]
        self.prior_version = state["prior_version"]
        self.energy_version = state["energy_version"]
        self.table.load(synthetic, state["table"])


class InProcessSupply(SyntheticSupply):
    """`edis train`: each refresh trains, then generates `samples_per_refresh` rows here."""

    def maintain(self, env_step: int, positives: PositiveBuffer, replay: ReplayBuffer,
                 offline: Transitions, policy: Policy,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
        if not self.due(env_step, positives):
            return []
        start = time.perf_counter()
        stats = self.train_models(RefreshInputs.take(env_step, positives, replay, offline,
                                                     policy, rng))
        self.advance_versions(stats)
        dropped_before = self.generator.dropped_rows
        generation_start = time.perf_counter()
        samples = self.generator.generate(self.schedule.samples_per_refresh, guided=self.guided)
        generation_seconds = time.perf_counter() - generation_start
        dropped = self.generator.dropped_rows - dropped_before
        if len(samples) == 0:
            raise NonFiniteError(f"synthetic refresh: all {dropped} generated rows were "
                                 "non-finite (the prior or the energies hold NaN/inf)")
        self.table.insert(clip_actions(samples), self.model_version)
        self.last_refresh = env_step
        stats.update(generated=len(samples), dropped_nonfinite=dropped, buffer=len(self.table),
                     generation_seconds=generation_seconds,
                     refresh_seconds=time.perf_counter() - start)
        return [stats]


class OracleSupply(SyntheticSupply):
    """`--synthetic oracle`: each refresh (due as for the generators) puts
    `samples_per_refresh` real transitions of the current policy, acting as it does in
    training, into the synthetic table, from a simulator of its own whose steps are not
    counted as env steps. It is what a perfect generator of EDIS's target d^π·π·T would make
    at the same schedule: if this arm does not beat `none`, no synthetic source can. Its rows
    carry no Monte-Carlo return (-inf), like generated ones."""

    def __init__(self, schedule: SyntheticSchedule, table: SyntheticTable, agent: Agent,
                 env_id: str, scaler: ActionScaler, seed: int):
        super().__init__(None, schedule, guided=False, table=table)
        self.agent, self.env_id, self.scaler, self.seed = agent, env_id, scaler, seed
        self.refreshes = 0

    @property
    def model_version(self) -> int:
        return self.refreshes

    def maintain(self, env_step: int, positives: PositiveBuffer, replay: ReplayBuffer,
                 offline: Transitions, policy: Policy,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
        if not self.due(env_step, positives):
            return []
        start = time.perf_counter()
        n = self.schedule.samples_per_refresh
        rows = collect_episodes(self.agent, self.env_id, self.scaler, n,
                                seed=self.seed + ORACLE_SEED + self.refreshes).take(slice(0, n))
        self.refreshes += 1
        self.table.insert(rows, self.model_version)
        self.last_refresh = env_step
        seconds = time.perf_counter() - start
        return [{"kind": "synthetic", "phase": "online", "step": env_step, "generated": len(rows),
                 "dropped_nonfinite": 0, "buffer": len(self.table),
                 "generation_seconds": seconds, "refresh_seconds": seconds}]

    def generator_state(self) -> dict[str, Any]:
        raise RuntimeError("the oracle has no generator to checkpoint")

    def state(self) -> dict[str, Any]:
        return {**super().state(), "refreshes": self.refreshes}

    def load_state(self, state: dict[str, Any], synthetic: ReplayBuffer) -> None:
        self.refreshes = int(state["refreshes"])
        super().load_state(state, synthetic)


def clip_actions(samples: Transitions) -> Transitions:
    """Generated rows with their actions clipped into the agents' action box [-1, 1] (a new
    actions array: received rows may be read-only views)."""
    return dataclasses.replace(samples, actions=np.clip(samples.actions, -1.0, 1.0))


def prior_rows(offline: Transitions, online: Transitions, recent: Transitions,
               recent_share: float, offline_floor: int,
               rng: np.random.Generator) -> Transitions:
    """All online rows, as many offline rows but at least `offline_floor` (all of them if
    the dataset is smaller), and rows of `recent` (the positive buffer, drawn with
    repetition) making up `recent_share` of the whole (docs/algorithm.md §2, optional online prior
    training).

    The floor keeps the prior on the dataset while online rows are few: with as many offline
    rows as online ones, a first refresh after 1,000 online steps would train it on a
    1,000-row subsample of the dataset, and it would forget the rest.

    Guided samples sit where the policy goes, off the offline data's support; there the
    prior's s' | (s, a) is what the online rows teach it, and offline rows that outnumber
    them would drown that out. On the Hopper demo with s' modelled directly, online prior
    training brought guided next states from 8x to about 2x the unguided error against the
    simulator; modelling s' − s closed most of the rest. The recent share puts more of the
    prior's capacity where the energies send the guided sampler, the current policy's
    states, which older online rows cover thinly (docs/diagnostics.md).
    """
    n = min(len(offline), max(len(online), offline_floor))
    parts = [offline.take(rng.integers(0, len(offline), n)), online]
    if recent_share > 0 and len(recent):
        extra = round((n + len(online)) * recent_share / (1 - recent_share))
        parts.append(recent.take(rng.integers(0, len(recent), extra)))
    return Transitions.concatenate(parts)
