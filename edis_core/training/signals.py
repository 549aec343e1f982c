"""Stopping a run on SIGINT/SIGTERM: the first signal asks for a checkpoint, a second exits.

The first signal only sets a flag; the loop writes a checkpoint at the next step boundary
and returns. It also says so at once, since a refresh or an evaluation can take a while. A
second signal exits at once with status 128 + its number, as a process killed by it would
report; the checkpoint on disk is still intact (checkpoints are written by rename).
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """While entered, SIGINT and SIGTERM request a stop instead of killing the process.

    `resume_hint` ends the messages, e.g. "resume with `edis train --resume runs/x`"."""

    def __init__(self, resume_hint: str):
        self.resume_hint = resume_hint
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int:
        """128 + N for signal N, the shell's convention for a process stopped by a signal."""
        assert self.signum is not None
        return 128 + self.signum

    def __enter__(self) -> GracefulStop:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            _say(f"edis: second {name}: exiting now without a checkpoint; the last one is "
                 f"kept ({self.resume_hint})")
            os._exit(128 + signum)
        self.signum = signum
        _say(f"edis: {name} received: writing a checkpoint after the current step, then "
             f"stopping ({self.resume_hint}); send it again to exit at once")


def _say(message: str) -> None:
    # os.write, not print: the handler may interrupt a write to sys.stderr (the progress
    # bars), and a buffered stream refuses a reentrant write.
    os.write(2, f"\n{message}\n".encode())
