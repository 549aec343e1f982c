"""A run directory: which folders a run may use, one owner at a time, and the configuration
it was created with (config.yaml).

One process owns a run directory for the run's life: `RunDirLock` holds an OS lock
(fcntl.flock) on RUN_DIR/run.lock, so a second process writing into the same folder fails at
once instead of interleaving checkpoints and metrics. The lock is released when the process
ends, however it ends. The lock file also marks the folder as a run's: a fresh run starts
only in a missing or empty folder, or in a run's folder that has no checkpoint yet (its
files are replaced); a folder with other files is never written into.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import yaml

from edis_core.config import from_dict
from edis_core.training import checkpoint
from edis_core.training.config import TrainConfig

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.yaml"


def read_run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run directory was created with."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise checkpoint.CheckpointError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); "
            "start a run with `edis train --run-dir DIR` first")
    try:
        saved = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise checkpoint.CheckpointError(f"{config_path} is not valid YAML: {err}") from err
    return from_dict(TrainConfig, saved)


class RunDirError(ValueError):
    """A run directory that cannot be used; the message says why and what to do."""


def check_location(run_dir: Path) -> None:
    """Refuse a path that is a file, lies under a file, or sits in a place we cannot write."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is a file, not a directory; choose another path")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise RunDirError(f"--run-dir {run_dir} lies under {existing}, which is a file; choose "
                          "a path under a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write to {existing} (permission denied); choose a --run-dir "
                          "in a writable place")


def check_fresh_start(run_dir: Path) -> None:
    """A new run may start in `run_dir`: usable location, no run to resume, no foreign files."""
    check_location(run_dir)
    if run_dir.exists():
        _refuse_if_in_use(run_dir)
        _check_contents(run_dir)


def _check_contents(run_dir: Path) -> None:
    if checkpoint.has_checkpoint(run_dir):
        raise RunDirError(f"{run_dir} already holds a run; continue it with "
                          f"`edis train --resume {run_dir}` or choose another --run-dir")
    entries = [p.name for p in run_dir.iterdir()]
    if entries and LOCK_FILE not in entries:
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunDirError(f"{run_dir} is not empty ({shown}) and is not an edis run directory; "
                          "a new run never writes into such a folder: choose a new or empty "
                          "--run-dir")


def _create(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create the run directory {run_dir} ({err.strerror}); "
                          "choose a --run-dir in a writable place") from err


class RunDirLock:
    """An exclusive OS lock on RUN_DIR/run.lock, held until `release` or the process ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        path = run_dir / LOCK_FILE
        try:
            self._file = path.open("a+")
        except OSError as err:
            raise RunDirError(f"cannot write to the run directory {run_dir} ({err.strerror}); "
                              "check its permissions or choose another --run-dir") from err
        if not _try_lock(self._file):
            self._file.close()
            raise _in_use(run_dir)
        self._file.truncate(0)
        self._file.write(f"pid {os.getpid()}\n")
        self._file.flush()

    @classmethod
    def for_fresh_run(cls, run_dir: Path, replaced: Iterable[str]) -> RunDirLock:
        """Create and lock `run_dir` for a new run; files named in `replaced`, left by an
        earlier attempt that never checkpointed, are removed."""
        _create(run_dir)
        lock = cls(run_dir)
        try:
            _check_contents(run_dir)  # again: another process may have used it meanwhile
        except RunDirError:
            lock.release()
            raise
        for name in replaced:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return lock

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the file drops the lock

    @property
    def held(self) -> bool:
        return not self._file.closed


def _try_lock(file: IO[str]) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def _refuse_if_in_use(run_dir: Path) -> None:
    """Probe the lock without taking it for long, so that a folder in use is reported as
    such before anything else is said about it."""
    try:
        probe = (run_dir / LOCK_FILE).open()
    except OSError:
        return  # no lock file (or unreadable: RunDirLock reports it)
    with probe:
        if not _try_lock(probe):
            raise _in_use(run_dir)


def _in_use(run_dir: Path) -> RunDirError:
    try:
        holder = (run_dir / LOCK_FILE).read_text().strip() or "pid unknown"
    except OSError:
        holder = "pid unknown"
    return RunDirError(f"{run_dir} is in use by another process ({holder}); wait for it to "
                       "finish or stop it, or choose another --run-dir")
