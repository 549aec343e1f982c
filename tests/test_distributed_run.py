"""`edis run` end to end: Ray rollout actors, the sampler service and the learner, on a tiny
budget; and the learner going on when an actor dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edis_core.config import build
from edis_core.training.config import TrainConfig
from services.process_tree import descendants

pytestmark = pytest.mark.services

TINY = ["offline_steps=50", "online_steps=1200", "offline_eval_every=50",
        "online_eval_every=600", "eval_episodes=1", "log_every=200", "checkpoint_every=600",
        "batch_size=64", "positive_capacity=400", "runtime.steps_per_call=100",
        "runtime.stream_batch=200"]
TINY_EDIS = ["edis.diffusion.train_steps=100", "schedule.refresh_every=300",
             "schedule.samples_per_refresh=256", "schedule.buffer_size=1024",
             "schedule.min_positive=150", "schedule.real_sample=500",
             "edis.energy_steps=10", "edis.negative_trajectories=64", "edis.energy_groups=16"]


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_edis_run_completes_saves_its_policy_and_leaves_no_process(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "services.cli", "run", "--profile", "smoke", "--dataset",
            hopper_dataset, "--synthetic", "edis", "--run-dir", str(run_dir), "--actors", "2"]
    for override in TINY + TINY_EDIS:
        args += ["--set", override]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    started: set[int] = set()  # everything the run starts: Ray, rollout actors, the sampler
    try:
        while proc.poll() is None:
            started |= descendants(proc.pid)
            time.sleep(0.2)
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert len(started) >= 3, "expected Ray, rollout actors and a sampler among the children"
    deadline = time.monotonic() + 30
    while any(map(running, started)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in started if running(pid)]
    assert not left, f"left running: {[Path(f'/proc/{p}/cmdline').read_bytes() for p in left]}"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"]["online"] >= 1200
    assert (run_dir / "learning_curve.png").stat().st_size > 1_000
    logged = records(run_dir)
    assert {r["phase"] for r in logged if r["kind"] == "eval"} == {"offline", "online"}
    (actors,) = [r for r in logged if r["kind"] == "actors"]
    assert len(actors["pids"]) == 2 and actors["backend"] == "ray"
    assert [r for r in logged if r["kind"] == "synthetic"], "no energy refresh finished"
    last = [r for r in logged if r["kind"] == "train" and r["phase"] == "online"][-1]
    assert last["actor_env_steps"] >= 1200 and last["policy_version"] >= 2
    episodes = [r for r in logged if r["kind"] == "episode"]
    assert sum(r["length"] for r in episodes) == summary["steps"]["online"]

    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module import RLModule

    module = RLModule.from_checkpoint(run_dir / "rlmodule")
    obs = torch.zeros(4, 11)
    actions = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    assert actions.shape == (4, 3) and torch.all(actions.abs() <= 1.0)

    from services.cli import main

    assert main(["diagnose", str(run_dir), "--samples", "300"]) == 0


def test_a_killed_actor_is_restarted_and_the_run_completes(hopper_dataset, tmp_path):
    """The actor killed (by PID) right after a sample call was launched on it, mid-run: the
    call is counted lost, Ray restarts the actor, the next call re-syncs it, and the run
    finishes. The run is an oracle run: its synthetic rows come from a simulator in the
    learner, with no sampler service."""
    from services.learner.run import distributed_trainer
    from services.rollout import RolloutPool

    killed: list[int] = []
    collect = RolloutPool.collect

    def collect_and_kill_once(pool: RolloutPool, admit_calls: int, timeout: float):
        mid_run = admit_calls and not killed and pool.stats()["episodes"] > 0
        blocks = collect(pool, admit_calls, 0.0 if mid_run else timeout)
        if mid_run and pool.stats()["in_flight"]:
            killed.append(pool.actor_pids()[0])
            os.kill(killed[0], signal.SIGKILL)
        return blocks

    config = build(TrainConfig, "smoke", {"dataset": hopper_dataset, "synthetic": "oracle"},
                   [*TINY, "runtime.actors=1", "schedule.min_positive=100",
                    "schedule.refresh_every=400", "schedule.samples_per_refresh=200",
                    "schedule.buffer_size=400"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RolloutPool, "collect", collect_and_kill_once)
        with distributed_trainer(tmp_path / "run", config) as trainer:
            summary = trainer.run()
            stats = trainer.online.stats()
    assert killed and summary["status"] == "completed"
    assert stats["actor_calls_lost"] >= 1 and stats["actor_restarts"] == 1
    assert summary["steps"]["online"] >= 1200
    assert not running(killed[0])
    returns = [r["return"] for r in records(tmp_path / "run") if r["kind"] == "episode"]
    assert np.isfinite(returns).all()
    refreshes = [r for r in records(tmp_path / "run") if r["kind"] == "synthetic"]
    assert refreshes and all(r["generated"] == 200 for r in refreshes)


def _run_command(dataset: str, run_dir: Path) -> list[str]:
    args = [sys.executable, "-m", "services.cli", "run", "--profile", "smoke", "--dataset",
            dataset, "--synthetic", "edis", "--run-dir", str(run_dir)]
    for override in [*TINY, *TINY_EDIS, "checkpoint_every=300"]:
        args += ["--set", override]
    return args


def _online_checkpoint(run_dir: Path) -> int:
    try:
        progress = json.loads((run_dir / "checkpoint" / "progress.json").read_text())
    except (OSError, ValueError):
        return 0
    return progress["steps"]["online"]


def test_edis_run_stopped_by_sigterm_resumes_to_completion(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_run_command(hopper_dataset, run_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    started: set[int] = set()
    try:
        while proc.poll() is None and _online_checkpoint(run_dir) == 0:
            started |= descendants(proc.pid)
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = _online_checkpoint(run_dir)
    assert 0 < stopped_at < 1200
    time.sleep(1)
    assert not [pid for pid in started if running(pid)]

    resumed = subprocess.run([sys.executable, "-m", "services.cli", "run", "--resume",
                              str(run_dir)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"]["online"] >= 1200
    logged = records(run_dir)
    episodes = [r for r in logged if r["kind"] == "episode"]
    # The metrics read as one run: every collected episode once, none lost at the stop.
    assert sum(r["length"] for r in episodes) == summary["steps"]["online"]
    assert [r["step"] for r in episodes] == sorted(r["step"] for r in episodes)


def test_a_background_refresh_is_cancelled_between_two_steps_and_changes_no_version():
    """What `edis run` does with a refresh in progress when it stops: the thread ends within a
    training step (a thread still inside torch at interpreter exit aborts the process), with
    no result to publish and no error left to raise."""
    from test_run_safety import rows, small_generator

    from edis_core.buffers import PositiveBuffer, ReplayBuffer
    from edis_core.training.config import SyntheticSchedule
    from edis_core.training.synthetic import InProcessSupply, RefreshInputs
    from edis_core.training.synthetic_table import SyntheticRateLimit, SyntheticTable
    from services.learner.sampler_supply import BackgroundRefresh

    generator = small_generator()
    data = rows(256)
    data.observations[:] = np.random.default_rng(0).normal(size=(256, 3))
    generator.train_prior(data, steps=2)
    schedule = SyntheticSchedule(samples_per_refresh=32, buffer_size=64,
                                 prior_steps_per_refresh=10**7)  # hours, if not cancelled
    supply = InProcessSupply(generator, schedule, guided=False,
                             table=SyntheticTable(64, 3, 2, SyntheticRateLimit()))
    replay = ReplayBuffer(512, 3, 2)
    replay.add(data)
    inputs = RefreshInputs.take(100, PositiveBuffer(10), replay, data, lambda s: s[:, :2],
                                np.random.default_rng(0))
    refresh = BackgroundRefresh(supply, inputs)
    time.sleep(0.5)
    assert not refresh.done()
    start = time.monotonic()
    refresh.cancel()
    assert refresh.done() and time.monotonic() - start < 5
    assert refresh.result is None and refresh.error is None
