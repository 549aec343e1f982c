"""The learner's reaper: processes the learner started die with it, however it dies.

Ray's local node, its agents, the rollout actors and the sampler are all descendants of the
learner. On a normal exit or a signal the learner stops them itself (processes.started);
killed outright (SIGKILL, the OOM killer), it cannot, and Ray's agents outlive their raylet
indefinitely. So the learner starts this small process first, in a session of its own, with
a pipe it never writes to: the reaper records the learner's descendants (PID and start time)
every second, and when the pipe reports end-of-file, the learner is gone: it sends SIGTERM,
then SIGKILL to every recorded process still alive with its recorded start time (a PID
reused by another program is left alone).

    python -m services.learner.reaper LEARNER_PID      # stdin: the learner's pipe
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

from services.process_tree import descendants, start_time

POLL_SECONDS = 1.0
GRACE_SECONDS = 3.0


def start() -> subprocess.Popen | None:
    """The reaper of this process (Linux; elsewhere None). Keep the returned object: the
    reaper acts when its stdin, this process's end of the pipe, closes."""
    if not sys.platform.startswith("linux"):
        return None
    return subprocess.Popen([sys.executable, "-m", "services.learner.reaper", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            start_new_session=True)


def watch(learner: int) -> dict[int, int]:
    """Record the learner's descendants until its pipe closes; returns them by PID."""
    tracked: dict[int, int] = {}
    me = os.getpid()
    while True:
        for pid in descendants(learner) - {me}:
            if (started := start_time(pid)) is not None:
                tracked.setdefault(pid, started)
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_SECONDS)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return tracked


def reap(tracked: dict[int, int]) -> list[int]:
    """SIGTERM, then SIGKILL after GRACE_SECONDS, to the tracked processes still alive."""
    def alive() -> list[int]:
        return [pid for pid, started in tracked.items() if start_time(pid) == started]

    reaped = alive()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_SECONDS
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    return reaped


def main() -> int:
    reap(watch(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
