"""`edis sampler serve` as a child process: started on a free port of 127.0.0.1, stopped
(and reaped) by PID. Used by `edis run`, the tests and the benchmarks alike."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_ENV = "EDIS_DIE_WITH_PARENT"  # the launcher's PID, for die_with_launcher


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by
    SIGKILL or os._exit, so that a sampler is never left behind (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_launcher() -> None:
    """In a process started with PARENT_ENV set to its launcher's PID: die_with_parent, from
    the child itself after exec. A launcher holding gRPC channels must not use
    `preexec_fn`: it forces a plain fork whose gRPC fork handlers can hang the child before
    it execs. A launcher already gone by now is answered at once."""
    launcher = os.environ.pop(PARENT_ENV, None)
    if launcher is None:
        return
    die_with_parent()
    if os.getppid() != int(launcher):
        os.kill(os.getpid(), signal.SIGTERM)


class SamplerProcess:
    """Starts the sampler and waits for the line that names its address.

    stderr goes to `log` when given (else it is inherited); stdout carries only that line.
    """

    def __init__(self, *args: str, threads: int = 1, host: str = "127.0.0.1",
                 log: Path | None = None, start_timeout: float = 60.0):
        command = [sys.executable, "-m", "services.cli", "sampler", "serve", "--host", host,
                   "--port", "0", "--threads", str(threads), *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", PARENT_ENV: str(os.getpid())}
        self._log = log.open("a") if log is not None else None
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=env)
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"listening on (\S+:\d+)", line)
        if match is None:
            self.stop(signal.SIGKILL)
            where = f"; see {log}" if log is not None else ""
            raise RuntimeError(f"the sampler did not start within {start_timeout:.0f} s "
                               f"(it printed {line!r}{where})")
        self.address = match.group(1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig`, wait for the exit (SIGKILL after `timeout`); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode

    def is_gone(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def __enter__(self) -> SamplerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
