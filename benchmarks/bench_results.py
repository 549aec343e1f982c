"""The one writer of benchmark results: `results/NAME.json` with the machine it ran on."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent.parent / "results"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    """`results` with the machine's description under "machine" (kept where the benchmark
    recorded one itself), as JSON at `out`."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**results, "machine": {**machine(),
                                                       **results.get("machine", {})}},
                               indent=2))
    print(f"wrote {path}")
    return path
