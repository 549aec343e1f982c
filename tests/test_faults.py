"""Faults of other processes injected into a running `edis run`: a fault is not bad input,
so the run goes on (or, when told to require the failed part, stops "failed" with a
checkpoint), says so in its records, and exits by docs/failure-behaviour.md's table."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.sampler.process import SamplerProcess
from tests.test_distributed_run import TINY, TINY_EDIS, records

pytestmark = pytest.mark.slow
LONGER = ["online_steps=2400", "schedule.refresh_every=400", "checkpoint_every=600"]


def run_against(dataset: str, run_dir: Path, address: str, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "services.cli", "run", "--profile", "smoke", "--dataset",
            dataset, "--synthetic", "edis", "--run-dir", str(run_dir), "--sampler-address",
            address, "--actors", "1"]
    for override in [*TINY, *TINY_EDIS, *LONGER, *extra]:
        args += ["--set", override]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def refreshes(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [r for r in records(run_dir) if r["kind"] == "synthetic"] if path.is_file() else []


def sampler_events(run_dir: Path) -> list[str]:
    return [r["event"] for r in records(run_dir) if r["kind"] == "sampler"]


def last_train(run_dir: Path) -> dict:
    return [r for r in records(run_dir) if r["kind"] == "train" and r["phase"] == "online"][-1]


def test_a_sampler_killed_and_restarted_on_its_port_gets_the_weights_again(hopper_dataset,
                                                                          tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "sampler.log"
    sampler = SamplerProcess(log=log)
    port = sampler.address.rsplit(":", 1)[1]
    proc = run_against(hopper_dataset, run_dir, sampler.address)
    restarted = None
    try:
        wait_for(lambda: len(refreshes(run_dir)) >= 1, proc, "the first refresh")
        sampler.stop(signal.SIGKILL)
        time.sleep(3)
        restarted = SamplerProcess("--port", port, log=log)
        _, err = proc.communicate(timeout=300)
        status = restarted.proc.poll()
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in (sampler, restarted):
            if s is not None:
                s.stop()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"]["online"] >= 2400
    assert status is None                                  # it served to the end
    assert sampler_events(run_dir) == ["down", "up"], err[-3000:]
    assert "edis: sampler down" in err and "edis: sampler up" in err
    stats = last_train(run_dir)
    assert stats["sampler_up"] == 1 and stats["sampler_outages"] == 1
    # The restarted sampler got the prior and the energies again and streamed with them.
    up = next(r for r in records(run_dir) if r.get("event") == "up")
    later = [r for r in records(run_dir) if r["kind"] == "train" and r["phase"] == "online"
             and r["step"] > up["step"]]
    assert later and later[-1]["synthetic_rows"] > 0
    assert any(r["step"] > up["step"] for r in refreshes(run_dir))


@pytest.mark.parametrize("required", [False, True])
def test_a_sampler_killed_for_good_ends_the_run_on_real_rows_or_as_failed(hopper_dataset,
                                                                         tmp_path, required):
    run_dir = tmp_path / "run"
    sampler = SamplerProcess(log=tmp_path / "sampler.log")
    extra = ["runtime.require_sampler=true", "runtime.sampler_grace_seconds=5"] if required else []
    proc = run_against(hopper_dataset, run_dir, sampler.address, *extra)
    try:
        wait_for(lambda: len(refreshes(run_dir)) >= 1, proc, "the first refresh")
        sampler.stop(signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        sampler.stop()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sampler_events(run_dir)[:1] == ["down"]
    if not required:
        assert proc.returncode == 0, err[-3000:]
        assert summary["status"] == "completed" and summary["steps"]["online"] >= 2400
        stats = last_train(run_dir)
        assert stats["sampler_up"] == 0 and stats["sampler_down_seconds"] > 0
        return
    assert proc.returncode == 1, err[-3000:]
    assert summary["status"] == "failed"
    assert "has not answered for" in summary["error"] and "--resume" in summary["error"]
    progress = json.loads((run_dir / "checkpoint" / "progress.json").read_text())
    assert progress["steps"]["online"] == summary["steps"]["online"] < 2400


def test_a_learner_killed_outright_leaves_nothing_running_and_resumes_continuously(
        hopper_dataset, tmp_path):
    from services.process_tree import descendants
    from tests.test_distributed_run import _online_checkpoint, running

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "services.cli", "run", "--profile", "smoke", "--dataset",
            hopper_dataset, "--synthetic", "edis", "--run-dir", str(run_dir), "--actors", "1"]
    for override in [*TINY, *TINY_EDIS, *LONGER]:
        args += ["--set", override]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started: set[int] = set()
    try:
        while proc.poll() is None and _online_checkpoint(run_dir) == 0:
            started |= descendants(proc.pid)
            time.sleep(0.2)
        started |= descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(started) >= 3, "expected Ray, a rollout actor and a sampler among the children"
    deadline = time.monotonic() + 30
    while [p for p in started if running(p)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in started if running(p)], "processes of the killed learner live on"
    checkpointed = _online_checkpoint(run_dir)
    assert checkpointed > 0
    updates_then = json.loads((run_dir / "checkpoint" / "progress.json").read_text())[
        "online_updates"]

    resumed = subprocess.run([sys.executable, "-m", "services.cli", "run", "--resume",
                              str(run_dir)], capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = records(run_dir)
    train = [r for r in logged if r["kind"] == "train" and r["phase"] == "online"]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps))                      # nothing written twice
    updates = [r["updates"] for r in train]
    assert updates == sorted(updates) and updates[-1] > updates_then   # the count went on
    assert steps[-1] >= 2400 and [s for s in steps if s > checkpointed]
    episodes = [r for r in logged if r["kind"] == "episode"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert sum(r["length"] for r in episodes) == summary["steps"]["online"]


def test_a_lost_worker_node_costs_its_calls_and_its_actor_moves_to_a_free_cpu(hopper_dataset,
                                                                             tmp_path):
    """`make cluster` with two worker nodes and one rollout actor: the node hosting the actor
    is killed outright (every process of it, as a machine lost would); Ray re-creates the
    actor on the other node, the learner counts the lost calls and completes its run."""
    import os
    import shutil

    from services.cluster.local import STATE_FILE, Cluster
    from services.cluster.ray_node import session_members
    from tests.test_operations_config import INSTALL_PROMETHEUS

    if shutil.which("prometheus") is None:
        pytest.fail(INSTALL_PROMETHEUS)
    directory = tmp_path / "cluster"
    settings = [*TINY, *TINY_EDIS, "online_steps=4000", "checkpoint_every=2000",
                "edis.diffusion.train_steps=50", "offline_steps=20", "offline_eval_every=20"]
    command = [sys.executable, "-m", "services.cluster"]
    up = subprocess.run([*command, "up", "--dir", str(directory), "--workers", "2",
                         "--prometheus-port", "0", "--", "--dataset", hopper_dataset,
                         "--actors", "1", *(a for s in settings for a in ("--set", s))],
                        capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = Cluster.load(directory)
        learner = next(p for p in state.processes if p.name == "learner")

        def hosting_node() -> int | None:
            for process in state.processes:
                if process.name.startswith("ray-worker"):
                    for pid in session_members(process.pid):
                        try:
                            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                        except OSError:
                            continue
                        if b"RolloutActor" in cmdline:
                            return process.pid
            return None

        deadline = time.monotonic() + 300
        while (node := hosting_node()) is None or not (directory / "run" / "checkpoint").exists():
            assert session_members(learner.pid), Path(learner.log).read_text()[-3000:]
            assert time.monotonic() < deadline, "the actor never started on a worker node"
            time.sleep(1)
        for pid in session_members(node):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 300
        while hosting_node() in (None, node):                 # re-created on the other node
            assert time.monotonic() < deadline, Path(learner.log).read_text()[-3000:]
            time.sleep(1)
        deadline = time.monotonic() + 600
        while not (directory / "run" / "summary.json").exists():
            assert time.monotonic() < deadline, Path(learner.log).read_text()[-3000:]
            assert session_members(learner.pid), Path(learner.log).read_text()[-3000:]
            time.sleep(2)
        summary = json.loads((directory / "run" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"]["online"] >= 4000
        stats = last_train(directory / "run")
        assert stats["actor_restarts"] >= 1 and stats["actor_calls_lost"] >= 1, stats
    finally:
        if (directory / STATE_FILE).exists():
            subprocess.run([*command, "down", "--dir", str(directory)], timeout=300)
