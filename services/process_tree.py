"""Processes by PID, read from Linux's /proc: when a process started (to tell it from a
later one with the same PID) and which processes descend from it."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Clock ticks after boot when `pid` started; None if there is no such process."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` in the process tree (zombies excluded)."""
    children: dict[int, list[int]] = {}
    for path in Path("/proc").glob("[0-9]*"):
        fields = _stat(path.name)
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(path.name))
    found, frontier = set(), [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.update(below)
        frontier.extend(below)
    return found
