"""A short run of the local cluster (`make cluster`: Ray head, two Ray worker nodes, the
sampler, the learner and a real Prometheus) shared by the module: the key series reach
Prometheus and move, every query of the dashboards answers, and `down` stops every process
the cluster started."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_distributed_run import TINY, TINY_EDIS
from test_operations_config import DASHBOARDS, INSTALL_PROMETHEUS, dashboard_panels

from services.cluster.local import STATE_FILE, Cluster
from services.cluster.ray_node import session_members

pytestmark = pytest.mark.services

RATE_INTERVAL = "30s"  # $__rate_interval of a 2 s scrape interval, with margin
# A learner that outlives the checks: the budget is never reached.
LEARNER_SETTINGS = [*TINY, *TINY_EDIS, "online_steps=1000000", "checkpoint_every=1000000",
                    "edis.diffusion.train_steps=50", "offline_steps=20",
                    "offline_eval_every=20"]
# The series an operator looks at first, by the labels each must have.
KEY_SERIES = {
    "edis_rollout_env_steps_total": {"actor": {"0", "1"}},
    "edis_rollout_episodes_total": {"actor": {"0", "1"}},
    "edis_rollout_episode_return": {"actor": {"0", "1"}},
    "edis_rollout_actor_restarts_total": {},
    "edis_rollout_policy_lag_updates_count": {},
    "edis_buffer_rows": {"buffer": {"replay", "positive", "synthetic"}},
    "edis_synthetic_age_versions": {"stat": {"mean", "max"}},
    "edis_learner_updates_total": {"phase": {"prior", "offline", "online"}},
    "edis_learner_loss": {"loss": {"critic", "actor", "value", "diffusion"}},
    "edis_energy_loss": {"energy": {"state", "policy", "transition"}},
    "edis_learner_eval_return": {"phase": {"offline"}},
    "edis_learner_eval_normalized_score": {"phase": {"offline"}},
    "edis_learner_policy_version": {},
    "edis_sampler_batches_total": {},
    "edis_sampler_transitions_total": {},
    "edis_sampler_generation_seconds_count": {"guided": {"true"}},
    "edis_sampler_queue_depth_batches": {},
    "edis_sampler_stream_consumers": {},
    "edis_sampler_weights_version": {"model": {"prior", "energy/state", "energy/policy",
                                               "energy/transition"}},
    "edis_sampler_guidance_norm_count": {},
    "edis_sampler_dropped_nonfinite_rows_total": {},
    "edis_sampler_grpc_handled_total": {"method": {"PublishWeights", "GetStatus"}},
    "ray_node_cpu_utilization": {"job": {"ray-head", "ray-worker"}},
}
MOVING = ['sum by (actor) (edis_rollout_env_steps_total)',
          'edis_learner_updates_total{phase="online"}', "edis_learner_env_steps_total",
          "edis_sampler_transitions_total", "edis_sampler_guidance_norm_count"]
START_SECONDS = 420  # until every key series is there, on two shared cores


def query(url: str, expr: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?"
                                + urllib.parse.urlencode({"query": expr}), timeout=10) as r:
        answer = json.load(r)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def missing_series(url: str) -> list[str]:
    missing = []
    for name, labels in KEY_SERIES.items():
        series = query(url, name)
        for label, wanted in labels.items():
            have = {s["metric"].get(label) for s in series}
            missing += [f"{name}{{{label}={v!r}}}" for v in sorted(wanted - have)]
        if not series and not labels:
            missing.append(name)
    return missing


def cluster_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cluster", *args]


@pytest.fixture(scope="module")
def cluster(hopper_dataset, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.fail(INSTALL_PROMETHEUS)
    directory = tmp_path_factory.mktemp("cluster")
    settings = [arg for s in LEARNER_SETTINGS for arg in ("--set", s)]
    env = {**os.environ, "RAY_metrics_report_interval_ms": "2000"}  # Ray's default is 10 s
    up = subprocess.run(cluster_command("up", "--dir", str(directory), "--workers", "2",
                                        "--prometheus-port", "0", "--scrape-interval", "2s",
                                        "--", "--dataset", hopper_dataset, *settings),
                        capture_output=True, text=True, env=env, timeout=600)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = Cluster.load(directory)
        url = state.prometheus_url
        deadline = time.monotonic() + START_SECONDS
        while (missing := missing_series(url)) and time.monotonic() < deadline:
            time.sleep(3)
        logs = {p.name: Path(p.log).read_text(errors="replace")[-2000:] for p in state.processes}
        assert not missing, f"missing after {START_SECONDS} s: {missing}; logs: {logs}"
        yield directory, state
    finally:
        if (directory / STATE_FILE).exists():
            subprocess.run(cluster_command("down", "--dir", str(directory)), timeout=300)


def test_every_target_is_scraped(cluster):
    _, state = cluster
    with urllib.request.urlopen(f"{state.prometheus_url}/api/v1/targets", timeout=10) as r:
        targets = json.load(r)["data"]["activeTargets"]
    health = {(t["labels"]["job"], t["scrapeUrl"]): t["health"] for t in targets}
    assert sorted({job for job, _ in health}) == ["learner", "prometheus", "ray-head",
                                                  "ray-worker", "sampler"]
    assert sum(job == "ray-worker" for job, _ in health) == 2
    assert all(h == "up" for h in health.values()), health


def test_key_series_are_present_and_moving(cluster):
    _, state = cluster
    url = state.prometheus_url
    assert not missing_series(url)
    first = {expr: {json.dumps(s["metric"], sort_keys=True): float(s["value"][1])
                    for s in query(url, expr)} for expr in MOVING}
    still = dict(first)
    deadline = time.monotonic() + 120
    while still and time.monotonic() < deadline:
        time.sleep(3)
        for expr in list(still):
            now = {json.dumps(s["metric"], sort_keys=True): float(s["value"][1])
                   for s in query(url, expr)}
            if all(now.get(key, 0.0) > value for key, value in first[expr].items()):
                del still[expr]
    assert not still, f"not moving within 120 s: {sorted(still)}"
    # Ray's own series come through the same Prometheus, from every node. A node's reporter
    # agent can skip an export interval on busy cores (its series then go stale for a scrape),
    # so each node must have exported within the last minute rather than at this instant.
    nodes = {s["metric"]["instance"]
             for s in query(url, "last_over_time(ray_node_cpu_utilization[1m])")}
    assert len(nodes) == 3, nodes


def dashboard_queries() -> list[tuple[str, str, str]]:
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in dashboard_panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                expr = (target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                        .replace("$actor", ".*"))
                queries.append((path.name, panel["title"], expr))
    return queries


def test_every_dashboard_query_answers(cluster):
    _, state = cluster
    queries = dashboard_queries()
    assert len(queries) >= 40
    assert not [q for q in queries if "$" in q[2]], "a variable was left unsubstituted"
    empty = [q for q in queries if not query(state.prometheus_url, q[2])]
    assert not empty, f"{len(empty)} of {len(queries)} dashboard queries answer nothing: {empty}"


def test_down_stops_every_process_it_started(cluster):
    directory, state = cluster
    sessions = [p.pid for p in state.processes]
    started = {pid for sid in sessions for pid in session_members(sid)}
    assert len(started) > 10, "the Ray nodes alone run more processes than this"
    result = subprocess.run(cluster_command("down", "--dir", str(directory)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not (directory / STATE_FILE).exists()
    left = [pid for sid in sessions for pid in session_members(sid)]
    assert not left, f"left running: {left}"
    assert not Path(f"/tmp/edis-cluster-{state.ports['ray']}").exists()
