"""What `edis run` starts besides the learner, and stops again whatever happens: a local Ray
(or a connection to a cluster) and the sampler process (or the address of a running one);
a reaper makes them die with the learner even when it is killed outright."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.learner import reaper
from services.sampler.process import SamplerProcess


@dataclass
class Services:
    sampler_address: str | None  # None: the run needs no sampler (synthetic=none)
    sampler_pid: int | None  # None when joined or not needed
    ray_started: bool


def _start_ray(address: str | None, actors: int) -> bool:
    """Start a local Ray sized for the actors, or connect to the cluster at `address` (whose
    node on this host the driver attaches to); True if started here."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # it would try to reach the network
    import ray

    if address is None:
        # Actors reserve one logical CPU each; the learner (the driver) reserves none.
        ray.init(num_cpus=max(1, actors), include_dashboard=False, log_to_driver=True,
                 logging_level="ERROR")
        return True
    try:
        ray.init(address=address, log_to_driver=True, logging_level="ERROR")
    except Exception as err:  # Ray raises many kinds; the user needs one line
        hint = ""
        if "auth" in str(err).lower() or "token" in str(err).lower():
            hint = (" Ray's token authentication refused this driver: export RAY_AUTH_MODE=token "
                    "with the cluster's token in ~/.ray/auth_token, or start the cluster with "
                    "RAY_AUTH_MODE=disabled")
        raise ValueError(f"cannot join the Ray cluster at {address}: "
                         f"{str(err).splitlines()[0]}.{hint}") from err
    return False


@contextlib.contextmanager
def _joined_node(address: str | None) -> Iterator[None]:
    """A Ray node without CPUs on this host, joining `address`, for the length of the block."""
    if address is None:
        raise ValueError("--ray-node joins the cluster of --ray-address: give both")
    from services.cluster.ray_node import JoinedNode

    log = Path(tempfile.gettempdir()) / f"edis-ray-node-{os.getpid()}.log"
    node = JoinedNode(address, log)
    try:
        yield
    finally:
        node.stop()
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def started(*, actors: int, ray_address: str | None, sampler_address: str | None,
            needs_sampler: bool = True, sampler_threads: int = 1,
            sampler_device: str = "cpu", ray_node: bool = False) -> Iterator[Services]:
    """Ray and the sampler for the length of the block; on exit (normal, error or signal)
    everything started here is stopped. The sampler's messages go to this stderr.
    `ray_node`: this host is not a node of the cluster at `ray_address` yet; start one
    without CPUs here first (a driver needs a node of its own host)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_reaped())
        if ray_node:
            stack.enter_context(_joined_node(ray_address))
        yield stack.enter_context(_started(actors, ray_address, sampler_address, needs_sampler,
                                           sampler_threads, sampler_device))


@contextlib.contextmanager
def _reaped() -> Iterator[None]:
    """Whatever the block starts dies with this process, even killed outright (reaper.py);
    on a normal exit the reaper takes what outlived the block's own stopping, then ends."""
    watcher = reaper.start()
    try:
        yield
    finally:
        if watcher is not None:
            watcher.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watcher.wait(timeout=reaper.GRACE_SECONDS * 3)


@contextlib.contextmanager
def _started(actors: int, ray_address: str | None, sampler_address: str | None,
             needs_sampler: bool, sampler_threads: int,
             sampler_device: str) -> Iterator[Services]:
    import ray

    ray_started = _start_ray(ray_address, actors)
    sampler: SamplerProcess | None = None
    try:
        if sampler_address is None and needs_sampler:
            sampler = SamplerProcess("--device", sampler_device, threads=sampler_threads)
            sampler_address = sampler.address
        yield Services(sampler_address, sampler.pid if sampler else None, ray_started)
    finally:
        if sampler is not None:
            sampler.stop()
        if ray.is_initialized():
            ray.shutdown()
