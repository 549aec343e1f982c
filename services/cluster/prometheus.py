"""The local cluster's Prometheus config: deploy/prometheus/prometheus.yml (the one the
compose file mounts) with each service's address on this machine in place of its compose
DNS name. Jobs, relabelling and intervals stay as they are there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"


def local_config(addresses: dict[str, list[str]], scrape_interval: str | None = None,
                 compose_config: Path = COMPOSE_CONFIG) -> dict[str, Any]:
    """The compose config with every target of compose service S (a static `S:PORT` or a
    DNS service discovery of S) replaced by `addresses[S]`, e.g. ["127.0.0.1:40123"]."""
    config = yaml.safe_load(compose_config.read_text())
    if scrape_interval is not None:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    for job in config["scrape_configs"]:
        services = [target.split(":")[0] for group in job.pop("static_configs", [])
                    for target in group["targets"]]
        services += [name for sd in job.pop("dns_sd_configs", []) for name in sd["names"]]
        missing = [s for s in services if s not in addresses]
        if missing:
            raise ValueError(f"{compose_config}: job {job['job_name']!r} scrapes {missing}, "
                             f"which the local cluster does not run ({sorted(addresses)})")
        job["static_configs"] = [{"targets": [a for s in services for a in addresses[s]]}]
    return config


def write_local_config(path: Path, addresses: dict[str, list[str]],
                       scrape_interval: str | None = None) -> Path:
    path.write_text(yaml.safe_dump(local_config(addresses, scrape_interval), sort_keys=False))
    return path
