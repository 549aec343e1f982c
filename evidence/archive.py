"""The finished runs the report is made from, kept small enough to commit (evidence/records/).

Run directories (checkpoints, logs) stay on the machine that ran them; the report needs only
a run's summary and its evaluation and refresh records. Those are copied here when a run
completes, so that a benchmark taken over several sittings on different machines adds up:
a run held here is never run again, and the report reads it as if its directory were there.

A record keeps the overrides its run was launched with (the searches' choices included), and
is reused only for a run that would be launched with the same ones: a later search that
chooses otherwise gets its runs made again. Benchmarks run with other `--set` overrides keep
their records in a folder of their own, so a quick check never replaces the real ones.

An offline run held here but missing its checkpoint is run again when a run that starts from
it has not finished. CPU training here is deterministic, so the rerun gives the checkpoint
the held runs started from; `Archive.check_reproduced` says so when it did not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KEPT_KINDS = ("eval", "synthetic")
"""The metrics records the report reads: evaluations (curves) and refreshes (their cost)."""


class Archive:
    """Runs of one profile under `root`; with `extra` overrides for every run of the
    benchmark, under a folder named by them."""

    def __init__(self, root: Path, extra: Sequence[str] = ()) -> None:
        self.extra = list(extra)
        digest = hashlib.sha256("\n".join(self.extra).encode()).hexdigest()[:10]
        self.root = root / f"set-{digest}" if self.extra else root

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def get(self, name: str, overrides: Sequence[str] | None = None) -> dict[str, Any] | None:
        """The held run `name`; with `overrides`, only if it was launched with those."""
        path = self.path(name)
        if not path.is_file():
            return None
        held = json.loads(path.read_text())
        if overrides is not None and held.get("overrides") != list(overrides):
            return None
        return held

    def put(self, name: str, run: dict[str, Any], overrides: Sequence[str]) -> None:
        kept = {"extra": self.extra, "overrides": list(overrides), "summary": run["summary"],
                "records": [r for r in run["records"] if r.get("kind") in KEPT_KINDS]}
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")

    def check_reproduced(self, name: str, run: dict[str, Any]) -> str | None:
        """Where `run` (an offline run made again) ends elsewhere than the one held here: a
        warning naming both scores, for the runs that started from the held one."""
        held = self.get(name)
        if held is None:
            return None
        before = held["summary"].get("offline_final") or {}
        after = run["summary"].get("offline_final") or {}
        if before.get("normalized_score") == after.get("normalized_score"):
            return None
        return (f"{name} was run again and ended at a normalised score of "
                f"{after.get('normalized_score')}, not {before.get('normalized_score')} as "
                f"before: runs held in {self.root} that started from it are not paired with "
                "the runs that start from it now (another machine or torch build?)")
