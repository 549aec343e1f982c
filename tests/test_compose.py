"""docker-compose.yml brought up by a real engine, with the project's own image.

A Docker engine of this machine's Debian packages (`make test` installs docker.io and
mmdebstrap when missing) runs with its state in a temporary folder. No image hub is
reachable, so the public bases are stood in for by one root filesystem made from Debian's
packages: Python 3.11 in a venv on PATH (for python:3.11-slim) and Debian's prometheus (for
prom/prometheus). deploy/Dockerfile is built for real, on its CPU torch, with this machine's
pip configuration and CA bundle passed as build secrets. Then: the head, two workers, the
sampler and Prometheus up and healthy, the learner on a budget it never reaches, every
Prometheus target up with the key series, the workers scaled to three, and `down`. Grafana
cannot run here; its provisioning is checked by parsers and its queries by the real
Prometheus (test_operations_config.py, test_operations_cluster.py).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_operations_cluster import KEY_SERIES, LEARNER_SETTINGS, missing_series
from test_operations_config import COMPOSE_FILE, ROOT, compose_binary

pytestmark = [pytest.mark.slow, pytest.mark.services]

INSTALL = ("a Docker engine and mmdebstrap are needed: `make test` installs Debian's docker.io "
           "and mmdebstrap when missing (as root)")
PYTHON_BASE = "edis-test/python:3.11-bookworm"
PROMETHEUS_IMAGE = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["prometheus"]["image"]
PROJECT = "edis-compose-test"
UP_SECONDS = 600     # image layers cached or not, on two shared cores
SERIES_SECONDS = 420


def engine_client() -> str:
    """The docker client of the engine's own package: its BuildKit builds need no buildx
    plugin, which a newer client on PATH would."""
    files = run("dpkg-query", "-L", "docker.io").stdout.splitlines()
    return next(f for f in files if f.endswith("/bin/docker"))


def run(*command: str, timeout: float = 600, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
    return done


class Engine:
    """dockerd with its data, its socket and its pid file in `root`; stopped with what it
    started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                    "DOCKER_BUILDKIT": "1"}
        self.log = (root / "dockerd.log").open("w")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(root / "docker.pid"), "--host", f"unix://{self.socket}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        self.client = engine_client()
        while run(self.client, "version", env=self.env, check=False).returncode != 0:
            assert self.process.poll() is None, (root / "dockerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dockerd did not answer within 60 s"
            time.sleep(1)

    def docker(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return run(self.client, *args, env=self.env, timeout=timeout)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)   # stops its containers and its containerd
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


def base_images(engine: Engine, root: Path) -> None:
    """The stand-ins for the public bases, from Debian's packages."""
    rootfs = root / "rootfs.tar"
    run("mmdebstrap", "--variant=minbase",
        "--include=python3.11,python3.11-venv,ca-certificates,prometheus,wget",
        "--customize-hook=chroot \"$1\" python3.11 -m venv /opt/python", "bookworm",
        str(rootfs), timeout=900)
    path = "PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    engine.docker("import", "--change", f"ENV {path}", "--change", "ENV LANG=C.UTF-8",
                  str(rootfs), PYTHON_BASE)
    engine.docker("import", "--change", 'ENTRYPOINT ["/usr/bin/prometheus"]',
                  "--change", "WORKDIR /prometheus", str(rootfs), PROMETHEUS_IMAGE)
    rootfs.unlink()


def pip_value(name: str) -> list[str]:
    """This machine's pip setting `name`, from its configuration files and environment."""
    listed = run(sys.executable, "-m", "pip", "config", "list").stdout.splitlines()
    values = []
    for line in listed:
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] == name:
            values += value.strip("'\"").split()
    return values


class LocalWheels:
    """This machine's local wheel folders (pip's find-links), served over HTTP on 127.0.0.1
    so that a build container can reach them; the pip configuration that points there."""

    def __init__(self, root: Path) -> None:
        folders = dict.fromkeys(Path(v.removeprefix("file://")) for v in pip_value("find-links")
                                if "://" not in v or v.startswith("file://"))
        self.servers = []
        for folder in folders:
            handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                        directory=str(folder))
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
        urls = " ".join(f"http://127.0.0.1:{s.server_address[1]}/" for s in self.servers)
        self.config = root / "pip.conf"
        self.config.write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
                               + (f"find-links = {urls}\n" if urls else ""))

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()


def build_image(engine: Engine, root: Path) -> None:
    wheels = LocalWheels(root)
    ca = (pip_value("cert") or [os.environ.get("PIP_CERT", "")])[0]
    try:
        engine.docker("build", "--network", "host", "--progress", "plain",
                      "--secret", f"id=pip.conf,src={wheels.config}",
                      *(("--secret", f"id=ca.crt,src={ca}") if ca else ()),
                      "--build-arg", f"PYTHON_IMAGE={PYTHON_BASE}",
                      "-f", str(ROOT / "deploy" / "Dockerfile"), "-t", "edis:0.1.0", str(ROOT),
                      timeout=1800)
    finally:
        wheels.close()


def learner_override(root: Path) -> Path:
    """The learner on a budget it never reaches (it outlives the checks; `down` stops it)."""
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["learner"]["command"]
    command = [*command, *(arg for s in LEARNER_SETTINGS for arg in ("--set", s))]
    path = root / "compose.test.yml"
    path.write_text(yaml.safe_dump({"services": {"learner": {"command": command}}}))
    return path


class Compose:
    def __init__(self, engine: Engine, override: Path) -> None:
        self.env = {**engine.env, "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "EDIS_SAMPLER_TOKEN": secrets.token_hex(32),
                    "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(8)}
        self.base = [str(compose_binary()), "-p", PROJECT, "-f", str(COMPOSE_FILE),
                     "-f", str(override)]

    def __call__(self, *args: str, timeout: float = UP_SECONDS,
                 check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.base, *args, env=self.env, timeout=timeout, check=check)


def targets(url: str) -> dict[tuple[str, str], str]:
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as reply:
        active = json.load(reply)["data"]["activeTargets"]
    return {(t["labels"]["job"], t["scrapeUrl"]): t["health"] for t in active}


def wait_for(condition, seconds: float, what: str, logs: Compose) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            tail = logs("logs", "--tail", "40", timeout=60, check=False).stdout[-6000:]
            pytest.fail(f"{what} not within {seconds:.0f} s; logs: {tail}")
        time.sleep(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[Compose, str]]:
    if not (shutil.which("dockerd") and shutil.which("mmdebstrap")):
        pytest.fail(INSTALL)
    root = tmp_path_factory.mktemp("engine")
    engine = Engine(root)
    compose = Compose(engine, learner_override(root))
    try:
        base_images(engine, root)
        build_image(engine, root)
        compose("up", "--detach", "--wait", "--no-build", "ray-head", "ray-worker", "sampler",
                "prometheus")
        compose("up", "--detach", "--no-build", "learner")
        yield compose, "http://127.0.0.1:9090"
    finally:
        compose("down", "--volumes", "--timeout", "60", timeout=300, check=False)
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_image_carries_the_package_and_no_test_tools(cluster):
    compose, _ = cluster
    probe = compose("exec", "-T", "sampler", "python", "-c",
                    "import importlib.util as u, edis_core, protos.edis.sampler.v1.sampler_pb2;"
                    "print(edis_core.__file__, u.find_spec('pytest'), u.find_spec('ruff'))")
    assert "site-packages/edis_core/__init__.py None None" in probe.stdout


def test_every_target_is_up_with_the_key_series_and_the_workers_scale(cluster):
    compose, url = cluster

    def all_up(workers: int) -> bool:
        health = targets(url)
        jobs = [job for job, _ in health]
        return (sorted(set(jobs)) == ["learner", "prometheus", "ray-head", "ray-worker",
                                      "sampler"]
                and jobs.count("ray-worker") == workers
                and all(h == "up" for h in health.values()))

    wait_for(lambda: all_up(2), SERIES_SECONDS, "every target up", compose)
    # The compose scrape interval is 15 s: the series Ray exports come with a delay.
    wait_for(lambda: not missing_series(url), SERIES_SECONDS,
             f"the key series ({len(KEY_SERIES)})", compose)

    compose("up", "--detach", "--wait", "--no-build", "--no-recreate", "--scale",
            "ray-worker=3", "ray-worker")
    wait_for(lambda: all_up(3), 180, "a third worker scraped", compose)


def test_down_removes_what_up_made(cluster):
    compose, _ = cluster
    compose("down", "--volumes", "--timeout", "60", timeout=300)
    left = compose("ps", "--all", "--quiet").stdout.split()
    assert not left, left
