"""The cluster of docker-compose.yml as processes on this machine (`make cluster`).

The same topology, entry points and configuration as the compose services: a Ray head
without CPUs (`ray start --head --num-cpus=0`), N Ray worker nodes joining it that host the
rollout actors, the sampler (`edis sampler serve`), the learner (`edis demo`, which joins
them with `--ray-address` and `--sampler-address`) and Prometheus with the compose
file's scrape jobs. Each process starts in its own session; `down` stops exactly those
sessions (SIGTERM, then SIGKILL for what is left), recorded in DIR/cluster.json.

Every endpoint binds 127.0.0.1. Ray's token authentication is off (RAY_AUTH_MODE=disabled):
nothing but this machine can reach the cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.cluster.prometheus import write_local_config
from services.cluster.ray_node import (
    executable,
    free_port,
    node_started,
    session_members,
    stop_session,
)
from services.process_tree import start_time

STATE_FILE = "cluster.json"
LOOPBACK = "127.0.0.1"
STOP_SECONDS = {"learner": 90.0}  # a learner writes its checkpoint before it exits
DEFAULT_STOP_SECONDS = 10.0


@dataclass
class ClusterProcess:
    name: str  # the compose service it stands for (workers: ray-worker-1, ...)
    pid: int  # leader of its own session: every process it starts stays in it
    started: int  # /proc start time, so that a reused PID is never signalled
    log: str


@dataclass
class Cluster:
    directory: str
    ports: dict[str, int]
    addresses: dict[str, list[str]]  # compose service -> its metrics targets here
    processes: list[ClusterProcess] = field(default_factory=list)

    @property
    def prometheus_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['prometheus']}"

    def save(self) -> None:
        (Path(self.directory) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Cluster:
        path = directory / STATE_FILE
        if not path.exists():
            raise ValueError(f"no local cluster recorded in {directory} (no {STATE_FILE}); "
                             "start one with `make cluster`")
        data = json.loads(path.read_text())
        data["processes"] = [ClusterProcess(**p) for p in data["processes"]]
        return cls(**data)


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise ValueError("prometheus is not installed: `apt-get install prometheus` (Debian's "
                         "package; `make cluster` and `make test` install it when run as root)")
    return found


def _environment() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _wait(what: str, ready, timeout: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p.name for p in cluster.processes if start_time(p.pid) is None]
        if dead or time.monotonic() > deadline:
            why = f"{dead} exited" if dead else f"not within {timeout:.0f} s"
            raise RuntimeError(f"local cluster: {what} failed ({why}); logs in "
                               f"{cluster.directory}/logs")
        time.sleep(0.5)


def _listening(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


class Launcher:
    def __init__(self, directory: Path, workers: int, cpus_per_worker: int,
                 prometheus_port: int, scrape_interval: str | None):
        if workers < 1 or cpus_per_worker < 1:
            raise ValueError(f"--workers and --cpus-per-worker must be >= 1, got {workers} and "
                             f"{cpus_per_worker}")
        self.directory = directory.resolve()
        self.workers, self.cpus_per_worker = workers, cpus_per_worker
        self.scrape_interval = scrape_interval
        ports = {name: free_port() for name in ("ray", "ray-dashboard", "sampler",
                                                 "sampler-metrics", "learner-metrics")}
        ports["prometheus"] = prometheus_port or free_port()
        ports["ray-head-metrics"] = free_port()
        for i in range(1, workers + 1):
            ports[f"ray-worker-{i}-metrics"] = free_port()
            ports[f"ray-worker-{i}-agent"] = free_port()
        ports["ray-head-agent"] = free_port()
        local = {name: [f"{LOOPBACK}:{port}"] for name, port in (
            ("learner", ports["learner-metrics"]), ("sampler", ports["sampler-metrics"]),
            ("ray-head", ports["ray-head-metrics"]), ("prometheus", ports["prometheus"]))}
        local["ray-worker"] = [f"{LOOPBACK}:{ports[f'ray-worker-{i}-metrics']}"
                               for i in range(1, workers + 1)]
        self.cluster = Cluster(str(self.directory), ports, local)
        # Ray's unix sockets must fit in 107 bytes: a short folder of its own.
        self.ray_temp = Path(f"/tmp/edis-cluster-{ports['ray']}")

    def _start(self, name: str, command: list[str]) -> ClusterProcess:
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env={**_environment(), "RAY_TMPDIR": str(self.ray_temp)},
                                    start_new_session=True, cwd=Path.cwd())
        process = ClusterProcess(name, proc.pid, start_time(proc.pid) or 0, str(log))
        self.cluster.processes.append(process)
        self.cluster.save()
        return process

    def _sampler_token(self) -> Path:
        """A fresh random token for this cluster's sampler, readable by its owner only (the
        compose file's sampler_token secret)."""
        path = self.directory / "sampler_token"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        return path

    def up(self, learner_args: list[str]) -> Cluster:
        """Start everything, in the order of the compose file's health checks; on a failure
        stop what was started and raise."""
        if (self.directory / STATE_FILE).exists():
            raise ValueError(f"a local cluster is recorded in {self.directory}; stop it with "
                             "`make cluster-down` first")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cluster.save()
        try:
            self._up(learner_args)
        except BaseException:
            down(self.directory)
            raise
        return self.cluster

    def _up(self, learner_args: list[str]) -> None:
        ports, cluster = self.cluster.ports, self.cluster
        ray_address = f"{LOOPBACK}:{ports['ray']}"
        ray_node = ["--block", "--disable-usage-stats"]
        # One node at a time: Ray gives a starting node 30 s to register, which two cores
        # busy starting several at once can exceed.
        head = self._start("ray-head", [
            executable("ray"), "start", "--head", "--num-cpus=0", f"--port={ports['ray']}",
            f"--metrics-export-port={ports['ray-head-metrics']}",
            f"--dashboard-port={ports['ray-dashboard']}", f"--dashboard-host={LOOPBACK}",
            f"--dashboard-agent-listen-port={ports['ray-head-agent']}", *ray_node])
        _wait("the Ray head", lambda: node_started(Path(head.log)), 180, cluster)
        for i in range(1, self.workers + 1):
            worker = self._start(f"ray-worker-{i}", [
                executable("ray"), "start", f"--address={ray_address}",
                f"--num-cpus={self.cpus_per_worker}",
                f"--metrics-export-port={ports[f'ray-worker-{i}-metrics']}",
                f"--dashboard-agent-listen-port={ports[f'ray-worker-{i}-agent']}", *ray_node])
            _wait(f"Ray worker node {i}", lambda w=worker: node_started(Path(w.log)), 180,
                  cluster)
        token = self._sampler_token()
        self._start("sampler", [
            executable("edis"), "sampler", "serve", "--host", LOOPBACK, "--port",
            str(ports["sampler"]), "--metrics-port", str(ports["sampler-metrics"]),
            "--token-file", str(token)])
        config = write_local_config(self.directory / "prometheus.yml", cluster.addresses,
                                    self.scrape_interval)
        self._start("prometheus", [
            prometheus_binary(), f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'prometheus-data'}",
            f"--web.listen-address={LOOPBACK}:{ports['prometheus']}"])
        _wait("the sampler", lambda: _listening(ports["sampler"]), 120, cluster)
        self._start("learner", [
            executable("edis"), "demo", "--run-dir", str(self.directory / "run"),
            "--ray-address", ray_address, "--sampler-address", f"{LOOPBACK}:{ports['sampler']}",
            "--sampler-token-file", str(token), "--ray-node",
            "--metrics-port", str(ports["learner-metrics"]), *learner_args])
        _wait("Prometheus", lambda: _listening(ports["prometheus"]), 60, cluster)


def down(directory: Path) -> list[str]:
    """Stop the processes recorded in `directory` (newest first) and forget them; returns
    their names. A process whose PID now belongs to another program is left alone."""
    cluster = Cluster.load(directory.resolve())
    stopped = []
    for process in reversed(cluster.processes):
        now = start_time(process.pid)
        if now is not None and now != process.started:
            continue  # the PID was reused: not ours
        if session_members(process.pid):
            stop_session(process.pid, STOP_SECONDS.get(process.name, DEFAULT_STOP_SECONDS))
            stopped.append(process.name)
    (Path(cluster.directory) / STATE_FILE).unlink()
    ray_temp = Path(f"/tmp/edis-cluster-{cluster.ports['ray']}")
    shutil.rmtree(ray_temp, ignore_errors=True)
    return stopped
