"""Ray nodes as processes this package starts and stops: `ray start --block` in a session of
its own, stopped with every process of that session (Ray's workers lead process groups of
their own but stay in the session)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY_STARTED = "Ray runtime started"  # logged by `ray start` once its node is registered


def executable(name: str) -> str:
    """An executable of this virtualenv (ray, edis), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise ValueError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_started(log: Path) -> bool:
    return log.exists() and RAY_STARTED in log.read_text(errors="replace")


def session_members(sid: int) -> list[int]:
    """The running processes (zombies excluded) of session `sid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_session(sid: int, seconds: float) -> None:
    """SIGTERM to every process of the session, SIGKILL to those left after `seconds`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + seconds
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` in the process tree, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


class JoinedNode:
    """A Ray node without CPUs on this host, joining the cluster at `address` for as long as
    this object lives: what a driver (the learner) needs on a host that is not a Ray node
    yet, since a Ray driver attaches to a raylet of its own host. It stays in this process's
    session and gets SIGTERM when this process dies, however it dies."""

    def __init__(self, address: str, log: Path, timeout: float = 180.0):
        from services.sampler.process import die_with_parent

        command = [executable("ray"), "start", f"--address={address}", "--num-cpus=0",
                   "--block", "--disable-usage-stats",
                   f"--dashboard-agent-listen-port={free_port()}"]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, process_group=0,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while not node_started(log):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ValueError(f"could not start a Ray node here joining {address}; see "
                                 f"{log}")
            time.sleep(0.5)

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM: `ray start` drains the node and stops its processes; whatever is left
        after `timeout` is killed."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(self.proc.pid), self.proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()
