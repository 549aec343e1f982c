"""Synthetic rows from the sampler service: the `edis run` side of
edis_core/training/synthetic.py.

A refresh trains the same models as in `edis train` (`train_models`), but in a background
thread on a snapshot of what it needs (positives, replay, a frozen copy of the policy), so
the agent keeps updating meanwhile; when it is done, the trained models are published to
the sampler. Guided (or unguided) batches arrive through a `SamplerStreamReader` and enter
the synthetic table when its draw credit runs low, tagged with the version that made them.
The loop never waits on generation: an empty reader or an exhausted credit only means
fewer synthetic rows in the next agent batches.

Versions on the wire are the learner's own counters. On start, counters are raised above
what the sampler already holds (a sampler kept from an earlier learner), and batches made
by weights this learner did not publish are never inserted.

A sampler that fails (killed, restarted, unreachable) is a fault of another process, not of
the run: the learner notes the outage (a "sampler" record, a line on stderr, the sampler_*
stats), goes on with real rows (the batch rule fills the synthetic share with offline
rows), probes it with backoff, and when one answers again publishes the prior and the
current energies to it at versions above what it holds, then reads its stream afresh. With
`runtime.require_sampler`, an outage longer than `runtime.sampler_grace_seconds` stops the
run as failed instead (RunFailure: a checkpoint and a one-line reason).
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import torch

from edis_core.agents import Agent
from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.generator import SyntheticGenerator
from edis_core.training.config import RuntimeConfig, SyntheticSchedule
from edis_core.training.run_log import RunFailure
from edis_core.training.synthetic import (
    Policy,
    RefreshCancelled,
    RefreshInputs,
    SyntheticSupply,
    clip_actions,
)
from edis_core.training.synthetic_table import SyntheticTable
from edis_core.transitions import Transitions
from services import logs
from services.learner.stream import SamplerStreamReader
from services.sampler.client import SamplerClient, SamplerError
from services.sampler.security import ClientSecurity
from services.sampler.weights import ENERGY_PREFIX, PRIOR, model_names
from services.sampler.wire import VERSION_FIELDS

PROBE_SECONDS = 0.5  # the longest a reconnect probe holds the learner's loop
MAX_BACKOFF_SECONDS = 30.0
# Codes of a sampler that is gone or was replaced (a restarted one holds no prior: its
# FAILED_PRECONDITION), as opposed to a call it refused for what was sent.
FAULTS = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
          grpc.StatusCode.CANCELLED, grpc.StatusCode.FAILED_PRECONDITION)


def is_fault(err: SamplerError) -> bool:
    return err.code in FAULTS


@dataclass
class SamplerLink:
    """What the learner knows of its sampler: up or down since when, and the outages so far."""

    up: bool = True
    down_since: float = 0.0
    outages: int = 0
    seconds_down_before: float = 0.0  # over outages that ended
    next_probe: float = 0.0
    backoff: float = 1.0
    reconnects: int = 0

    def lost(self, now: float) -> bool:
        """Mark it down; True if it was up (a new outage)."""
        if not self.up:
            return False
        self.up, self.down_since, self.backoff = False, now, 1.0
        self.outages += 1
        self.next_probe = now + self.backoff
        return True

    def probe_failed(self, now: float) -> None:
        self.backoff = min(2.0 * self.backoff, MAX_BACKOFF_SECONDS)
        self.next_probe = now + self.backoff

    def back(self, now: float) -> float:
        """Mark it up again; returns how long it was down."""
        down = now - self.down_since
        self.seconds_down_before += down
        self.up = True
        self.reconnects += 1
        return down

    def seconds_down(self, now: float) -> float:
        return self.seconds_down_before + (0.0 if self.up else now - self.down_since)


class BackgroundRefresh:
    """One `train_models` call in a thread; its result (or error) is picked up by the loop
    once done. It must not outlive the process's last Python code: a thread still inside
    torch when the interpreter finalises aborts the process, so `cancel` stops it between
    two training steps and waits for it."""

    def __init__(self, supply: SyntheticSupply, inputs: RefreshInputs):
        self.step = inputs.env_step
        self.started = time.perf_counter()
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._cancel = inputs.cancel
        self._thread = threading.Thread(target=self._run, args=(supply, inputs),
                                        name="energy-refresh")
        self._thread.start()

    def _run(self, supply: SyntheticSupply, inputs: RefreshInputs) -> None:
        try:
            self.result = supply.train_models(inputs)
        except RefreshCancelled:
            pass
        except BaseException as err:  # handed to the loop's thread, which raises it
            self.error = err

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()

    def cancel(self) -> None:
        self._cancel.set()
        self._thread.join()



class SamplerSupply(SyntheticSupply):
    def __init__(self, generator: SyntheticGenerator, schedule: SyntheticSchedule,
                 guided: bool, table: SyntheticTable, agent: Agent, address: str,
                 runtime: RuntimeConfig, security: ClientSecurity | None = None):
        super().__init__(generator, schedule, guided, table)
        self.agent = agent
        self.address = address
        self.runtime = runtime
        self.security = security
        self.client = SamplerClient(address, security=security)
        self.reader: SamplerStreamReader | None = None
        self.refresh: BackgroundRefresh | None = None
        self._snapshot: dict[str, Any] | None = None  # the generator before a running refresh
        self._floor = 0  # batches tagged below this were made by weights of someone else
        self.counts = {"batches": 0, "rows": 0, "foreign_rows": 0}
        self.link = SamplerLink()
        self._step = 0  # the env step of the loop's last call, for the records
        self._records: list[dict[str, Any]] = []  # sampler events for the next maintain()
        self._last_rows = time.monotonic()  # when synthetic rows last entered the table

    # ------------------------------------------------------------------ the loop's calls
    def start(self) -> None:
        """Publish what this learner has trained, at versions above what the sampler holds,
        and open the stream; a sampler that does not answer yet is an outage, not an error."""
        super().start()
        self._connect(self.client.connect_timeout)

    def maintain(self, env_step: int, positives: PositiveBuffer, replay: ReplayBuffer,
                 offline: Transitions, policy: Policy,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
        self._step = env_step
        if self.refresh is not None and self.refresh.done():
            self._records.append(self._finish_refresh(env_step))
        if self.refresh is None and self.due(env_step, positives):
            self._start_refresh(env_step, positives, replay, offline, rng)
        if not self.link.up:
            self._probe()
        self._take_batches()
        records, self._records = self._records, []
        return records

    def stats(self) -> dict[str, float]:
        now = time.monotonic()
        return {"sampler_up": float(self.link.up), "sampler_outages": self.link.outages,
                "sampler_down_seconds": self.link.seconds_down(now),
                "sampler_reconnects": self.link.reconnects,
                "synthetic_starved_seconds": now - self._last_rows}

    def generator_state(self) -> dict[str, Any]:
        """While a refresh trains, the generator as it was before it: a checkpoint taken now
        resumes with that refresh still to do."""
        return self._snapshot if self._snapshot is not None else self.generator.state_dict()

    def settle(self, env_step: int) -> list[dict[str, Any]]:
        """Wait for a refresh in progress and publish it, as `edis train` finishes one due at
        the last step: the final checkpoint (and `edis diagnose`) holds its energies."""
        if self.refresh is None:
            return []
        self.refresh.wait()
        return [self._finish_refresh(env_step)]

    def close(self) -> None:
        """Stop reading the stream. A refresh still training is cancelled (between two of its
        steps): the checkpoint holds the generator from before it, and a resumed run does it
        again."""
        if self.refresh is not None:
            self.refresh.cancel()
            self.refresh = None
        if self.reader is not None:
            self.reader.close()
        self.client.close()

    # ---------------------------------------------------------------------- refreshes
    def _start_refresh(self, env_step: int, positives: PositiveBuffer, replay: ReplayBuffer,
                       offline: Transitions, rng: np.random.Generator) -> None:
        """Snapshot what the refresh reads, then train in the background."""
        self._snapshot = copy.deepcopy(self.generator.state_dict())
        actor = copy.deepcopy(self.agent.actor).requires_grad_(False)

        def policy(observations: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return actor.sample(observations)

        inputs = RefreshInputs.take(env_step, positives, replay, offline, policy,
                                    np.random.default_rng(rng.integers(2**63)))
        self.refresh = BackgroundRefresh(self, inputs)

    def _finish_refresh(self, env_step: int) -> dict[str, Any]:
        refresh, self.refresh, self._snapshot = self.refresh, None, None
        assert refresh is not None
        if refresh.error is not None:
            raise refresh.error
        stats = refresh.result
        trained = self.advance_versions(stats)
        start = time.perf_counter()
        if self.link.up:  # else the reconnection publishes everything, these included
            try:
                self._publish(trained)
            except SamplerError as err:
                if not is_fault(err):
                    raise
                self._lose(err)
        self.table.advance(self.model_version)
        self.last_refresh = refresh.step
        stats.update(step=env_step, started_at_step=refresh.step,
                     publish_seconds=time.perf_counter() - start, buffer=len(self.table),
                     refresh_seconds=time.perf_counter() - refresh.started)
        return stats

    # ---------------------------------------------------------------------- the sampler
    def _connect(self, timeout: float) -> None:
        """Bring the sampler up to date with this learner (every model it has trained, at
        versions above the sampler's) and read its stream afresh; on a fault, an outage."""
        try:
            self.client.wait_ready(timeout)
            self._publish_all(self._held_versions())
        except SamplerError as err:
            if not is_fault(err):
                raise
            self._lose(err)
            return
        if self.reader is not None:
            self.reader.close()
        self.reader = SamplerStreamReader(self.address, self.runtime.stream_batch, self.guided,
                                          security=self.security)
        if not self.link.up:
            down = self.link.back(time.monotonic())
            self._event("up", f"the sampler at {self.address} answers again after "
                              f"{down:.0f} s; published the prior (version "
                              f"{self.prior_version}) and the energies (version "
                              f"{self.energy_version}) to it", down_seconds=down)

    def _publish_all(self, held: dict[str, int]) -> None:
        self.prior_version = max(self.prior_version, held[PRIOR] + 1)
        trained = ["prior"]
        self._floor = self.prior_version
        if self.guided:
            held_energy = max(v for m, v in held.items() if m.startswith(ENERGY_PREFIX))
            if self.generator.energies_trained:
                self.energy_version = max(self.energy_version, held_energy + 1)
                trained.append("energies")
                self._floor = self.energy_version
            else:  # the first refresh publishes the first energies of this learner
                self.energy_version = max(self.energy_version, held_energy)
                self._floor = self.energy_version + 1
        self._publish(trained)
        self.table.advance(self.model_version)

    def _probe(self) -> None:
        """While the sampler is down: try it again when its backoff has passed, briefly."""
        now = time.monotonic()
        runtime = self.runtime
        if runtime.require_sampler and now - self.link.down_since > runtime.sampler_grace_seconds:
            raise RunFailure(f"the sampler at {self.address} has not answered for "
                             f"{now - self.link.down_since:.0f} s "
                             f"(runtime.require_sampler, grace {runtime.sampler_grace_seconds:g}"
                             " s)")
        if now < self.link.next_probe:
            return
        self._connect(PROBE_SECONDS)
        if not self.link.up:
            self.link.probe_failed(time.monotonic())

    def _lose(self, err: SamplerError) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.link.lost(time.monotonic()):
            self._event("down", f"the sampler at {self.address} failed ({err}); training on "
                                "real rows, reconnecting with backoff")

    def _event(self, event: str, message: str, **extra: float) -> None:
        logs.event(f"sampler {event}: {message}", sampler_event=event, **extra)
        self._records.append({"kind": "sampler", "phase": "online", "step": self._step,
                              "event": event, "message": message, **extra})

    def _held_versions(self) -> dict[str, int]:
        status = self.client.status(timeout=PROBE_SECONDS if not self.link.up
                                    else None)["versions"]
        return {model: status[field] for model, field in VERSION_FIELDS.items()}

    def _publish(self, trained: list[str]) -> None:
        versions = {}
        if "prior" in trained:
            versions[PRIOR] = self.prior_version
        if "energies" in trained:
            versions.update({m: self.energy_version for m in model_names(self.generator)
                             if m != PRIOR})
        if versions:
            self.client.publish(self.generator, versions)

    def _take_batches(self) -> None:
        """Insert received batches while the table's credit runs low."""
        while self.reader is not None and self.table.wants_rows():
            try:
                batch = self.reader.take()
            except SamplerError as err:
                if not is_fault(err):
                    raise
                self._lose(err)
                return
            if batch is None:
                return
            tag = self._tag(batch.versions)
            self.counts["batches"] += 1
            if tag < self._floor:
                self.counts["foreign_rows"] += len(batch)
                continue
            kept = self.table.insert(clip_actions(batch.transitions), tag)
            self.counts["rows"] += kept
            if kept:
                self._last_rows = time.monotonic()

    def _tag(self, versions: dict[str, int]) -> int:
        if not self.guided:
            return versions[PRIOR]
        return min(v for m, v in versions.items() if m.startswith(ENERGY_PREFIX) and
                   m in model_names(self.generator))
