"""Runs the plan: each run an `edis train` child process, `jobs` at a time, resumable.

A run whose summary says "completed" is reused as it is, and so is one the archive holds
(evidence/archive.py; a completed run is copied there); one with a checkpoint is resumed
(`edis train --resume`); anything else starts afresh. An archived offline run whose
checkpoint is not here is made again when a run that starts from it is still to run. A run
starts when the offline run it depends on is complete and, for a tuned run, when the recipe
search has chosen. A failed run is reported and its dependants skipped; the others go on.
On SIGINT/SIGTERM the children get SIGTERM (they checkpoint) and are waited for, so a later
call continues where this one stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evidence.archive import Archive
from evidence.plan import CostKind, RunSpec, cost_kind
from services.sampler.process import die_with_parent

SUMMARY = "summary.json"
CHECKPOINT = "checkpoint"
FINISHED = ("completed", "archived")


def status(run_dir: Path) -> str:
    """'completed', 'resumable' (a checkpoint), 'failed' or 'new'."""
    summary = run_dir / SUMMARY
    if summary.is_file():
        state = json.loads(summary.read_text()).get("status")
        if state == "completed":
            return "completed"
        if state == "failed":
            return "failed"
    return "resumable" if (run_dir / CHECKPOINT).is_dir() else "new"


@dataclass
class Runner:
    root: Path
    profile: str
    device: str = "cpu"
    jobs: int = 2
    extra: Sequence[str] = ()
    """Overrides for every run (e.g. a smaller budget)."""
    choose: Callable[[RunSpec], tuple[str, ...] | None] = lambda spec: ()
    """The overrides the searches chose for a tuned spec, or None while they are
    incomplete."""
    poll_seconds: float = 2.0
    archive: Archive | None = None
    deadline: float | None = None
    """time.time() after which no run starts, nor one expected to end after it (from the
    wall clock of finished runs of its kind; a run of a kind never timed starts while there
    is time): a sitting's budget, so that no run is cut off when the machine goes."""
    stopped: bool = field(default=False, init=False)
    """Whether the last `run` ended on SIGINT/SIGTERM."""
    _durations: dict[CostKind, list[float]] = field(default_factory=dict, init=False,
                                                    repr=False)

    def run(self, specs: list[RunSpec]) -> dict[str, str]:
        """Run what is not complete; returns every spec's final status by name
        ('completed', 'archived', 'failed', 'blocked' or, when stopped, as `status` says)."""
        outcome = {s.name: self._status(s) for s in specs}
        pending = {s.name for s in specs if outcome[s.name] not in FINISHED}
        remake = {s.offline for s in specs if s.name in pending and s.offline is not None
                  and outcome[s.offline] == "archived"}
        waiting = [s for s in specs if s.name in pending | remake]
        self._durations = self._timed(specs) if self.deadline is not None else {}
        running: dict[str, tuple[RunSpec, subprocess.Popen]] = {}
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        stop: list[int] = []
        for sig in previous:
            signal.signal(sig, lambda number, _frame: stop.append(number))
        try:
            while (waiting or running) and not stop:
                startable = self._startable(waiting, outcome, len(running))
                if not startable and not running:
                    # Those ready to start, or waiting for a run that still waits, are late;
                    # the others depend on runs that will not finish (a failed search run).
                    late = self._late_ones(waiting, outcome)
                    for spec in waiting:
                        if spec not in late:
                            outcome[spec.name] = "blocked"
                            print(f"bench: {spec.name} skipped: what it depends on did not "
                                  "finish", file=sys.stderr)
                    if late:
                        print(f"bench: {len(late)} runs left for a later call: they would not "
                              "finish within the time budget", flush=True)
                    break
                for spec in startable:
                    waiting.remove(spec)
                    if spec.name not in remake and self._held(spec):
                        outcome[spec.name] = "archived"   # held, under a choice made since
                        continue
                    running[spec.name] = (spec, self._launch(spec))
                for name, (spec, process) in list(running.items()):
                    if process.poll() is not None:
                        del running[name]
                        outcome[name] = status(self.root / name)
                        if outcome[name] == "completed":
                            self._keep(spec)
                            self._durations.setdefault(self._kind(spec), []).append(
                                wall_seconds(read_run(self.root / name) or {}))
                        else:
                            outcome[name] = "failed"
                            print(f"bench: {name} failed (exit {process.returncode}); see "
                                  f"{self._log_path(spec)}", file=sys.stderr)
                waiting = self._drop_blocked(waiting, outcome)
                if running and not stop:
                    time.sleep(self.poll_seconds)
        finally:
            for _spec, process in running.values():
                process.send_signal(signal.SIGTERM)
            for name, (_spec, process) in running.items():
                process.wait()
                outcome[name] = status(self.root / name)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stopped = bool(stop)
        return outcome

    def overrides(self, spec: RunSpec) -> list[str] | None:
        """What `spec` is launched with (offline_from aside), or None for a tuned spec while
        the searches have not chosen."""
        tuned: tuple[str, ...] = ()
        if spec.tuned:
            choice = self.choose(spec)
            if choice is None:
                return None
            tuned = choice
        # The run's own overrides come after the search's choice.
        return [*self.extra, *tuned, *spec.overrides]

    def _status(self, spec: RunSpec) -> str:
        """`status` of its run directory, or 'archived' where only the archive holds it with
        the overrides it would be launched with now; a completed run the archive lacks is
        copied there."""
        state = status(self.root / spec.name)
        if self.archive is None:
            return state
        if state == "completed":
            if self.archive.get(spec.name, self._launched_with(spec)) is None:
                self._keep(spec)
            return state
        return "archived" if self._held(spec) else state

    def _held(self, spec: RunSpec) -> bool:
        overrides = self.overrides(spec)
        return (self.archive is not None and overrides is not None
                and self.archive.get(spec.name, overrides) is not None)

    def _launched_with(self, spec: RunSpec) -> list[str]:
        """The overrides of the command that first started the run, from its log (this
        benchmark writes each command there); what it would be launched with now if the log
        is gone."""
        log = self._log_path(spec)
        first = next((line for line in log.read_text().splitlines() if line.startswith("$ ")),
                     None) if log.is_file() else None
        if first is None or "--resume" in first:
            return self.overrides(spec) or []
        words = first.split()
        values = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]
        return [v for v in values if not v.startswith("offline_from=")]

    def _keep(self, spec: RunSpec) -> None:
        if self.archive is None:
            return
        run = read_run(self.root / spec.name)
        assert run is not None, f"{spec.name} is kept before it completed"
        if spec.group == "offline" and (warning := self.archive.check_reproduced(spec.name,
                                                                                 run)):
            print(f"bench: warning: {warning}", file=sys.stderr, flush=True)
        self.archive.put(spec.name, run, self._launched_with(spec))

    def _startable(self, waiting: list[RunSpec], outcome: dict[str, str],
                   busy: int) -> list[RunSpec]:
        free = self.jobs - busy
        ready: list[RunSpec] = []
        for spec in waiting:
            if len(ready) >= free:
                break
            if self._ready(spec, outcome) and not self._late(spec):
                ready.append(spec)
        return ready

    def _late_ones(self, waiting: list[RunSpec], outcome: dict[str, str]) -> list[RunSpec]:
        """Of `waiting`, once none can start: those the time budget holds back, directly or
        through a run they wait for."""
        names = {s.name for s in waiting}
        searching = any(s.group in ("recipe", "regime") for s in waiting)
        return [s for s in waiting if self._ready(s, outcome) or s.offline in names
                or (s.tuned and searching)]

    def _ready(self, spec: RunSpec, outcome: dict[str, str]) -> bool:
        """Its offline run is complete and, if tuned, the searches have chosen."""
        if spec.offline is not None and outcome.get(spec.offline) != "completed":
            return False
        return not spec.tuned or self.choose(spec) is not None

    def _kind(self, spec: RunSpec) -> CostKind:
        """Its cost kind as it would be launched now (a tuned table run at the chosen UTD)."""
        return cost_kind(spec, self.overrides(spec))

    def _timed(self, specs: list[RunSpec]) -> dict[CostKind, list[float]]:
        """Wall clock of the finished runs of `specs`, by kind (a tuned run only once the
        searches have chosen, so that no run made under another choice is counted)."""
        durations: dict[CostKind, list[float]] = {}
        chosen = [s for s in specs if self.overrides(s) is not None]
        for spec in chosen:
            run = load_runs(self.root, [spec], self.archive, self.overrides).get(spec.name)
            if run is not None:
                durations.setdefault(self._kind(spec), []).append(wall_seconds(run))
        return durations

    def _late(self, spec: RunSpec) -> bool:
        """Past the deadline, or expected to end after it (a kind never timed: only past
        it). Runs are timed by the process that finished them: a resumed run counts its last
        process only, which pulls its kind's mean down."""
        if self.deadline is None:
            return False
        timed = self._durations.get(self._kind(spec))
        expected = sum(timed) / len(timed) if timed else 0.0
        return time.time() + expected > self.deadline

    def _drop_blocked(self, waiting: list[RunSpec], outcome: dict[str, str]) -> list[RunSpec]:
        """Skip runs whose offline run failed; they are marked 'blocked'."""
        kept = []
        for spec in waiting:
            if spec.offline is not None and outcome.get(spec.offline) == "failed":
                outcome[spec.name] = "blocked"
                print(f"bench: {spec.name} skipped: its offline run {spec.offline} failed",
                      file=sys.stderr)
            else:
                kept.append(spec)
        return kept

    def command(self, spec: RunSpec) -> list[str]:
        run_dir = self.root / spec.name
        edis = [sys.executable, "-m", "services.cli", "train"]
        if status(run_dir) == "resumable":
            return [*edis, "--resume", str(run_dir)]
        overrides = self.overrides(spec)
        assert overrides is not None, "a tuned run started before the searches chose"
        if spec.offline is not None:
            overrides.append(f"offline_from={self.root / spec.offline}")
        return [*edis, "--profile", self.profile, "--agent", spec.agent, "--dataset",
                spec.dataset, "--synthetic", spec.mode, "--seed", str(spec.seed),
                "--device", self.device, "--run-dir", str(run_dir),
                *(arg for override in overrides for arg in ("--set", override))]

    def _launch(self, spec: RunSpec) -> subprocess.Popen:
        log = self._log_path(spec)
        log.parent.mkdir(parents=True, exist_ok=True)
        run_dir = self.root / spec.name
        if status(run_dir) == "failed":   # a failed run without checkpoint starts afresh
            (run_dir / SUMMARY).unlink()
        command = self.command(spec)
        with log.open("a") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            # Its own session: a Ctrl-C reaches the bench only, which then stops each run
            # once (SIGTERM: checkpoint and exit); it dies with the bench even on SIGKILL.
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                       start_new_session=True, preexec_fn=die_with_parent)
        print(f"bench: start {spec.name} (pid {process.pid})", flush=True)
        return process

    def _log_path(self, spec: RunSpec) -> Path:
        return self.root / "logs" / (spec.name.replace("/", "__") + ".log")


def load_runs(root: Path, specs: Sequence[RunSpec], archive: Archive | None = None,
              overrides: Callable[[RunSpec], list[str] | None] | None = None,
              ) -> dict[str, dict[str, Any]]:
    """The finished runs of `specs` by name: from their run directories, else the archive
    (only those held with `overrides(spec)`, where it gives them)."""
    runs = {}
    for spec in specs:
        run = read_run(root / spec.name)
        if run is None and archive is not None:
            run = archive.get(spec.name, overrides(spec) if overrides else None)
        if run is not None:
            runs[spec.name] = run
    return runs


def wall_seconds(run: dict[str, Any]) -> float:
    """Wall clock of a finished run's phases, as timed by the process that finished it."""
    return float(sum(run.get("summary", {}).get("phase_seconds", {}).values()))


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's summary and metrics records, or None."""
    if status(run_dir) != "completed":
        return None
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return {"summary": json.loads((run_dir / SUMMARY).read_text()), "records": records}
