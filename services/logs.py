"""What the `edis` processes say happened to them: the `edis` logger, one line per event on
stderr. For people (the default) a line reads `edis: [warning: |error: ]message`; for a log
pipeline, `edis --log-format json ...` (or EDIS_LOG_FORMAT=json, which the processes a
command starts inherit) writes one JSON object per line: time, level, logger, message and
the event's fields. Results stay on stdout; this is for events.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any

FORMATS = ("text", "json")
ENV = "EDIS_LOG_FORMAT"
log = logging.getLogger("edis")
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message"}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"edis: {level}{record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        time = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        return json.dumps({"time": time.isoformat(timespec="milliseconds"),
                           "level": record.levelname.lower(), "logger": record.name,
                           "message": record.getMessage(), **fields}, default=str)


def configure(fmt: str | None = None) -> None:
    """Route the `edis` logger to stderr in `fmt` (default: EDIS_LOG_FORMAT, else text)."""
    fmt = fmt or os.environ.get(ENV) or "text"
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: choose one of {', '.join(FORMATS)}")
    os.environ[ENV] = fmt            # the processes this one starts log alike
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    """One event; `fields` go into its JSON object (the text line is `message` alone)."""
    if not log.handlers:
        configure()
    log.log(level, message, extra=fields)
