"""Real signals to a real `edis train` process (issue 10, item 7).

One EDIS run is stopped five times: SIGTERM in the prior, offline and online phases, SIGKILL,
then two SIGINTs. After each stop it is resumed, and the last resume completes it; every
checkpoint on the way must extend the one before (counters and replay rows), and the final
metrics and buffers must read as one uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.training import checkpoint

REPO = Path(__file__).resolve().parent.parent
TOTAL = {"prior": 300, "offline": 600, "online": 600}
LOG_EVERY = 50
POSITIVE_CAPACITY = 200
# test_training.py's TINY budgets, with phases long enough for a signal to land inside each.
SETTINGS = [f"edis.diffusion.train_steps={TOTAL['prior']}", f"offline_steps={TOTAL['offline']}",
            f"online_steps={TOTAL['online']}", f"log_every={LOG_EVERY}", "checkpoint_every=100",
            "offline_eval_every=600", "online_eval_every=300", "eval_episodes=1",
            "batch_size=64", f"positive_capacity={POSITIVE_CAPACITY}", "torch_threads=1",
            "schedule.refresh_every=150", "schedule.samples_per_refresh=256",
            "schedule.buffer_size=512", "edis.energy_steps=10", "schedule.min_positive=50",
            "schedule.real_sample=500", "schedule.prior_steps_per_refresh=5"]
WAIT_S = 120


class Processes:
    """`edis` subprocesses of one test; all are killed and reaped at its end."""

    def __init__(self, tmp_path: Path, minari_root: str):
        self.tmp_path = tmp_path
        self.env = {**os.environ, "MINARI_DATASETS_PATH": minari_root, "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1"}
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str) -> tuple[subprocess.Popen, Path]:
        stderr = self.tmp_path / f"stderr-{len(self.started)}.txt"
        with stderr.open("w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args], cwd=REPO,
                                    env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        self.started.append(proc)
        return proc, stderr

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def processes(tmp_path, minari_root) -> Iterator[Processes]:
    procs = Processes(tmp_path, minari_root)
    try:
        yield procs
    finally:
        procs.stop_all()
    for proc in procs.started:  # every process started here has ended and been reaped
        assert proc.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            continue
    return out


def last_logged(run_dir: Path, phase: str) -> int:
    return max((r["step"] for r in records(run_dir) if r["phase"] == phase), default=0)


def trained_past(run_dir: Path, phase: str, step: int):
    return lambda: last_logged(run_dir, phase) > step


def saved(run_dir: Path) -> tuple[dict, ReplayBuffer]:
    """The checkpoint on disk: its progress and its replay buffer."""
    _, progress, directory = checkpoint.load(run_dir)
    return progress, ReplayBuffer.load(directory / "replay.npz")


def assert_extends(before: tuple[dict, ReplayBuffer], after: tuple[dict, ReplayBuffer]) -> None:
    """A later checkpoint continues an earlier one: no counter goes back, and the replay
    buffer keeps every earlier row, in order, with one row per online step."""
    (progress_a, replay_a), (progress_b, replay_b) = before, after
    assert all(progress_b["steps"][p] >= progress_a["steps"][p] for p in TOTAL)
    assert len(replay_a) == progress_a["steps"]["online"]
    assert len(replay_b) == progress_b["steps"]["online"]
    n = len(replay_a)
    np.testing.assert_array_equal(replay_b.contents().observations[:n],
                                  replay_a.contents().observations)
    np.testing.assert_array_equal(replay_b.contents().rewards[:n], replay_a.contents().rewards)


@pytest.mark.slow
def test_stopped_five_ways_and_resumed_the_run_reads_as_one(hopper_dataset, tmp_path,
                                                            processes):
    run_dir = tmp_path / "run"
    resume = ("train", "--resume", str(run_dir))
    history = []

    def stopped_with(sig: signal.Signals, phase: str, proc, stderr: Path,
                     expected_status: int) -> None:
        wait_until(trained_past(run_dir, phase, logged[phase]), proc, f"{phase} training")
        proc.send_signal(sig)
        if sig != signal.SIGKILL:
            wait_until(lambda: f"{sig.name} received" in stderr.read_text(), proc,
                       f"the {sig.name} message")
        assert proc.wait(timeout=WAIT_S) == expected_status
        state = saved(run_dir)
        if history:
            assert_extends(history[-1], state)
        history.append(state)

    def start(*args: str) -> tuple[subprocess.Popen, Path]:
        # Lines a killed process wrote after its checkpoint are still there until the new
        # one truncates them: only steps beyond them show that the new one is training.
        logged.update({phase: last_logged(run_dir, phase) for phase in TOTAL})
        return processes.start(*args)

    logged: dict[str, int] = {}
    proc, stderr = start("train", "--dataset", hopper_dataset, "--run-dir",
                                   str(run_dir), "--profile", "smoke", "--synthetic", "edis",
                                   *(arg for s in SETTINGS for arg in ("--set", s)))
    for phase in ("prior", "offline", "online"):
        stopped_with(signal.SIGTERM, phase, proc, stderr, 128 + signal.SIGTERM)
        progress = history[-1][0]
        assert progress["phase"] == phase, "the stop landed in another phase"
        assert 0 < progress["steps"][phase] < TOTAL[phase]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGTERM"
        proc, stderr = start(*resume)

    stopped_with(signal.SIGKILL, "online", proc, stderr, -signal.SIGKILL)
    proc, stderr = start(*resume)

    wait_until(trained_past(run_dir, "online", logged["online"]), proc, "online training")
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    wait_until(lambda: "SIGINT received" in stderr.read_text(), proc, "the SIGINT message")
    assert time.monotonic() - sent < 10, "the first signal must be acknowledged at once"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=WAIT_S) == 128 + signal.SIGINT
    assert "second SIGINT: exiting now" in stderr.read_text()
    history.append(saved(run_dir))
    assert_extends(history[-2], history[-1])

    proc, stderr = start(*resume)
    assert proc.wait(timeout=WAIT_S * 3) == 0, stderr.read_text()[-2000:]
    final = saved(run_dir)
    assert_extends(history[-1], final)
    assert final[0]["phase"] == "done" and final[0]["steps"] == TOTAL
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert_reads_as_one_run(run_dir)


def assert_reads_as_one_run(run_dir: Path) -> None:
    """Metrics without duplicates or gaps, and a positive buffer that holds exactly the
    most recent whole episodes the metrics record."""
    logged = records(run_dir)
    for phase, total in TOTAL.items():
        steps = [r["step"] for r in logged if r["kind"] == "train" and r["phase"] == phase]
        assert steps == list(range(LOG_EVERY, total + 1, LOG_EVERY)), phase
    for kind in ("eval", "synthetic", "episode"):
        steps = [(r["phase"], r["step"]) for r in logged if r["kind"] == kind]
        assert steps == sorted(set(steps)), kind
    refreshes = [r for r in logged if r["kind"] == "synthetic"]
    # every refresh generated its rows; any it dropped as non-finite are counted, not lost
    assert refreshes and all(r["generated"] > 0 and r["generated"] + r["dropped_nonfinite"]
                             == 256 for r in refreshes)

    episodes = [r for r in logged if r["kind"] == "episode"]
    kept, size = [], 0
    for episode in reversed(episodes):  # the PositiveBuffer's rule: whole recent episodes
        if kept and size + episode["length"] > POSITIVE_CAPACITY:
            break
        kept.insert(0, episode)
        size += episode["length"]
    positive = PositiveBuffer.load(run_dir / "checkpoint" / "positive.npz")
    assert positive.num_episodes == len(kept) and len(positive) == size
    rewards = positive.contents().rewards
    bounds = np.cumsum([0] + [e["length"] for e in kept])
    returns = [rewards[a:b].sum() for a, b in itertools.pairwise(bounds)]
    np.testing.assert_allclose(returns, [e["return"] for e in kept], rtol=1e-4)
