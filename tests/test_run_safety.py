"""Run safety: non-finite values never train, one owner per run directory, resume checks its
data, and every error is one line (issue 10, items 1-6 and 8; signals: tests/test_signals.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_training import tiny_config

from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.data.minari_io import (
    DatasetError,
    _collect,
    check_compatible,
    load_dataset,
    write_episodes,
)
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig
from edis_core.training import checkpoint
from edis_core.training.checkpoint import CheckpointError
from edis_core.training.config import SyntheticSchedule
from edis_core.training.synthetic import InProcessSupply
from edis_core.training.synthetic_table import SyntheticRateLimit, SyntheticTable
from edis_core.training.trainer import Trainer
from edis_core.transitions import Transitions
from services.cli import main

REPO = Path(__file__).resolve().parent.parent
SHORT = ["--profile", "smoke", "--set", "offline_steps=20", "--set", "online_steps=0",
         "--set", "eval_episodes=1", "--set", "batch_size=32"]


def edis(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The stderr of a refused command: exactly one line, `edis: error: ...`, no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("edis: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def write_dataset(dataset_id: str, env_id: str = "Hopper-v5", field: str | None = None,
                  value: float = math.nan) -> None:
    """300 random steps; `field` given: one of its values in episode 1 becomes `value`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Hopper-v4 is out of date
        env = gym.make(env_id)
    episodes = _collect(env, None, 300, seed=0, progress=False, desc="test")
    if field == "rewards":
        episodes[1].rewards[2] = value
    elif field is not None:
        getattr(episodes[1], field)[2, 1] = value
    write_episodes(dataset_id, env, episodes, False, algorithm_name="test", description="test")
    env.close()


def small_generator() -> SyntheticGenerator:
    from edis_core.diffusion.prior import DiffusionConfig

    config = EDISConfig(diffusion=DiffusionConfig(width=32, blocks=1, sampling_steps=4,
                                                  batch_size=64),
                        energy_width=16, negative_trajectories=32, energy_groups=8, negatives=3,
                        guidance_sigma_min=0.0)
    return SyntheticGenerator(3, 2, config, mode="unguided")


def rows(n: int, reward: float = 0.0) -> Transitions:
    t = Transitions.empty(3, 2, n)
    t.rewards[:] = reward
    return t


# ---------------------------------------------------------------- 1. non-finite values
@pytest.mark.parametrize(("field", "value"), [("rewards", math.nan), ("observations", math.inf),
                                              ("actions", math.nan)])
def test_a_nonfinite_dataset_is_refused_naming_episode_field_and_count(minari_root, tmp_path,
                                                                       capsys, field, value):
    dataset_id = f"safety/nonfinite-{field}-v0"
    write_dataset(dataset_id, field=field, value=value)
    with pytest.raises(DatasetError, match=f"Episode 1 .*: 1 in {field}"):
        load_dataset(dataset_id)
    code, _, err = edis(capsys, "train", "--dataset", dataset_id, "--run-dir",
                        str(tmp_path / "run"), *SHORT)
    assert code == 2
    assert f"1 in {field}" in one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_data_info_of_a_nonfinite_dataset_is_valid_json_with_counts(minari_root, capsys):
    write_dataset("safety/nan-info-v0", field="rewards")
    code, out, _ = edis(capsys, "data", "info", "safety/nan-info-v0")
    assert code == 0
    info = strict_json(out)
    assert info["nonfinite_values"] == {"rewards": 1}
    assert info["return_mean"] is None and info["return_max"] is None
    assert info["nonfinite_as_null"] >= 4  # mean, std, min, max of the returns at least


@pytest.mark.parametrize("override", ["iql.critic_lr=.nan", "offline_ratio=.nan",
                                      "schedule.ratio=.inf", "edis.w_state=-.inf"])
def test_nonfinite_config_floats_are_refused(hopper_dataset, tmp_path, capsys, override):
    code, _, err = edis(capsys, "train", "--dataset", hopper_dataset, "--run-dir",
                        str(tmp_path / "run"), "--set", override)
    assert code == 2
    line = one_line_error(err)
    assert override.split("=")[0] in line and "finite" in line


def test_buffers_refuse_nonfinite_rows_but_keep_unknown_returns():
    replay, positive = ReplayBuffer(10, 3, 2), PositiveBuffer(10)
    replay.add(rows(2))  # mc_returns -inf: an unknown return, allowed
    positive.add_episode(rows(2))
    for bad in (rows(2, reward=math.nan), rows(2, reward=math.inf)):
        with pytest.raises(ValueError, match="2 in rewards"):
            replay.add(bad)
        with pytest.raises(ValueError, match="2 in rewards"):
            positive.add_episode(bad)
    nan_return = rows(1)
    nan_return.mc_returns[:] = math.nan
    with pytest.raises(ValueError, match="1 in mc_returns"):
        replay.add(nan_return)
    assert len(replay) == 2 and len(positive) == 2


def test_a_refresh_whose_rows_are_all_nonfinite_stops_instead_of_adding_nothing():
    generator = small_generator()
    data = rows(256)
    data.observations[:] = np.random.default_rng(0).normal(size=(256, 3))
    generator.train_prior(data, steps=2)
    with torch.no_grad():
        for weight in generator.prior.sampler_net().parameters():  # a prior broken by NaN
            weight.fill_(math.nan)
    table = SyntheticTable(64, 3, 2, SyntheticRateLimit())
    supply = InProcessSupply(generator, SyntheticSchedule(samples_per_refresh=32, buffer_size=64,
                                                          min_positive=5),
                             guided=False, table=table)
    positives = PositiveBuffer(10)
    positives.add_episode(rows(5))
    with pytest.raises(ValueError, match="all 32 generated rows were non-finite"):
        supply.maintain(100, positives, ReplayBuffer(10, 3, 2), data,
                        lambda s: s[:, :2], np.random.default_rng(0))
    assert len(table) == 0


def test_a_nonfinite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(hopper_dataset,
                                                                          tmp_path, monkeypatch,
                                                                          capsys):
    """NaN enters the critic after the checkpoint at offline step 100: the run stops at the
    step that produced a NaN loss, exits non-zero, and its checkpoint stays at step 100."""
    from edis_core.agents.iql import IQLAgent

    real_update = IQLAgent.update

    def update_poisoned_at_step_130(agent: IQLAgent, batch):
        if agent.steps == 129:
            with torch.no_grad():
                next(agent.critic.parameters()).fill_(math.nan)
        return real_update(agent, batch)

    monkeypatch.setattr(IQLAgent, "update", update_poisoned_at_step_130)
    run_dir = tmp_path / "run"
    code, out, err = edis(capsys, "train", "--dataset", hopper_dataset, "--run-dir",
                          str(run_dir), "--profile", "smoke", "--set", "offline_steps=200",
                          "--set", "checkpoint_every=100", "--set", "online_steps=0",
                          "--set", "eval_episodes=1", "--set", "batch_size=32")
    assert code == 1
    line = one_line_error(err)
    assert "offline step 130" in line and "critic_loss = nan" in line
    assert "last good checkpoint (offline step 100)" in line
    summary = strict_json((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "offline step 130" in summary["error"]
    assert strict_json(out.split("\nresults in")[0])["status"] == "failed"
    _, progress, _ = checkpoint.load(run_dir)  # finite weights, or it would raise
    assert progress["steps"]["offline"] == 100
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "failure" and records[-1]["step"] == 130


def test_a_nonfinite_observation_from_the_env_fails_the_run_at_its_step(hopper_dataset,
                                                                        tmp_path):
    trainer = Trainer.create(tiny_config(hopper_dataset), tmp_path / "run")
    real_step = trainer.env.step
    online_steps = iter(range(1, 10_000))

    def step_going_nan_at_150(action):
        obs, reward, terminated, truncated, info = real_step(action)
        if next(online_steps) == 150:
            obs = np.full_like(obs, math.nan)
        return obs, reward, terminated, truncated, info

    trainer.env.step = step_going_nan_at_150
    summary = trainer.run()
    assert summary["status"] == "failed"
    assert "online step 150: rows added to a ReplayBuffer" in summary["error"]
    assert "11 in next_observations" in summary["error"]
    assert "last good checkpoint (offline step 40, online step 100)" in summary["error"]
    assert len(trainer.replay) == 149  # the NaN row never got in


def test_nonfinite_weights_are_never_saved_nor_loaded(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    trainer = Trainer.create(tiny_config(hopper_dataset, extra=["online_steps=0"]), run_dir)
    trainer.run()
    state_path = run_dir / "checkpoint" / "state.pt"
    good = state_path.read_bytes()

    from edis_core.training.run_dir import RunDirLock

    trainer.lock = RunDirLock(run_dir)  # run() released it; saving needs it again
    with torch.no_grad():
        next(trainer.agent.actor.parameters()).view(-1)[0] = math.inf
    with pytest.raises(ValueError, match="non-finite weights"):
        trainer.save_checkpoint()
    trainer.lock.release()
    assert state_path.read_bytes() == good

    state = torch.load(state_path, weights_only=True)
    next(iter(state["agent"]["critic"].values())).view(-1)[:3] = math.nan
    torch.save(state, state_path)
    with pytest.raises(CheckpointError, match=r"non-finite .*3 in agent\.critic"):
        Trainer.load(run_dir)


# ---------------------------------------------------------------- 2. one owner per directory
def test_a_second_process_cannot_use_a_run_directory_in_use(hopper_dataset, minari_root,
                                                             tmp_path, capsys):
    run_dir = tmp_path / "run"
    env = {**os.environ, "MINARI_DATASETS_PATH": minari_root, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "train", "--dataset", hopper_dataset,
         "--run-dir", str(run_dir), "--profile", "smoke", "--set", "torch_threads=1",
         "--set", "offline_steps=100000", "--set", "checkpoint_every=100000"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        lock = run_dir / "run.lock"
        while not (lock.exists() and f"pid {first.pid}" in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        code, _, err = edis(capsys, "train", "--dataset", hopper_dataset, "--run-dir",
                            str(run_dir), *SHORT, "--set", "seed=1")
        assert code == 2
        assert f"in use by another process (pid {first.pid})" in one_line_error(err)
        code, _, err = edis(capsys, "train", "--resume", str(run_dir))
        assert code == 2 and "in use" in one_line_error(err)
        assert first.poll() is None, "the first run must go on undisturbed"
    finally:
        first.kill()
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "the first run went on until it was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)


def test_a_stale_checkpoint_temp_dir_of_a_dead_process_is_cleared(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    trainer = Trainer.create(tiny_config(hopper_dataset, extra=["online_steps=0"]), run_dir)
    stale = run_dir / "checkpoint.tmp-999999"
    (stale / "positive.npz").mkdir(parents=True)  # as left by a process killed mid-write
    trainer.run()
    assert not stale.exists()
    assert not list(run_dir.glob("checkpoint.tmp*"))
    assert Trainer.load(run_dir).steps == trainer.steps


# ---------------------------------------------------------------- 3. a user's folder
def test_a_fresh_run_never_writes_into_a_users_folder(hopper_dataset, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: notes\n")
    (folder / "metrics.jsonl").write_text('{"mine": 1}\n{"mine": 2}\n')
    code, _, err = edis(capsys, "train", "--dataset", hopper_dataset, "--run-dir", str(folder),
                        *SHORT)
    assert code == 2
    assert "not an edis run directory" in one_line_error(err)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "metrics.jsonl"]
    assert (folder / "config.yaml").read_text() == "my: notes\n"
    assert (folder / "metrics.jsonl").read_text() == '{"mine": 1}\n{"mine": 2}\n'


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(hopper_dataset,
                                                                       tmp_path, capsys):
    run_dir = tmp_path / "run"
    trainer = Trainer.create(tiny_config(hopper_dataset), run_dir)  # never runs: "killed"
    trainer.lock.release()
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "phase": "offline", "step": 9}\n')
    code, _, err = edis(capsys, "train", "--resume", str(run_dir))
    assert code == 2 and "stopped before its first" in one_line_error(err)
    assert edis(capsys, "train", "--dataset", hopper_dataset, "--run-dir", str(run_dir),
                *SHORT)[0] == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["step"] != 9 for r in records)  # the earlier attempt's are gone


# ---------------------------------------------------------------- 4. changed data on resume
def test_resume_refuses_a_remade_dataset_unless_told_to_go_on(minari_root, tmp_path, capsys):
    def make(steps: int) -> None:
        code, _, _ = edis(capsys, "data", "make", "--env", "Hopper-v5", "--steps", str(steps),
                          "--dataset-id", "safety/remade-v0", "--overwrite")
        assert code == 0

    make(600)
    run_dir = tmp_path / "run"
    assert edis(capsys, "train", "--dataset", "safety/remade-v0", "--run-dir", str(run_dir),
                *SHORT)[0] == 0
    make(400)
    code, _, err = edis(capsys, "train", "--resume", str(run_dir))
    assert code == 2
    line = one_line_error(err)
    assert "dataset transitions 600 -> 400" in line and "dataset sha256" in line
    assert "--accept-changed-data" in line

    code, _, err = edis(capsys, "train", "--resume", str(run_dir), "--accept-changed-data")
    assert code == 0
    assert "edis: warning:" in err and "600 -> 400" in err
    _, progress, _ = checkpoint.load(run_dir)
    assert progress["dataset"]["transitions"] == 400  # the run now records the data it used
    assert edis(capsys, "train", "--resume", str(run_dir))[0] == 0


def test_resume_refuses_a_changed_environment_spec(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, extra=["online_steps=0"]), run_dir).run()
    progress_path = run_dir / "checkpoint" / "progress.json"
    progress = json.loads(progress_path.read_text())
    assert progress["env"]["id"] == "Hopper-v5"
    progress["env"]["max_episode_steps"] = 500
    progress_path.write_text(json.dumps(progress))
    with pytest.raises(CheckpointError, match="environment max_episode_steps 500 -> 1000"):
        Trainer.load(run_dir)
    with pytest.warns(UserWarning, match="changed since its checkpoint"):
        Trainer.load(run_dir, accept_changed_data=True).lock.release()


# ---------------------------------------------------------------- 5. no dead end
def test_an_incomplete_checkpoint_leads_somewhere(hopper_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--dataset", hopper_dataset, "--run-dir", str(run_dir), *SHORT]
    assert edis(capsys, *args)[0] == 0
    (run_dir / "checkpoint" / "progress.json").unlink()
    code, _, err = edis(capsys, "train", "--resume", str(run_dir))
    assert code == 2
    line = one_line_error(err)
    assert f"delete {run_dir / 'checkpoint'}" in line and "start the run again" in line
    code, _, err = edis(capsys, *args)
    assert code == 2 and "--resume" in one_line_error(err)  # the run is still there

    shutil.rmtree(run_dir / "checkpoint")  # what the message says to do
    assert edis(capsys, *args)[0] == 0


# ---------------------------------------------------------------- 6. messages, not tracebacks
def read_only_location(tmp_path: Path) -> Path:
    """A path nobody here may create: a read-only folder, or /sys for root (root ignores
    permission bits)."""
    if os.geteuid() == 0:
        return Path("/sys/edis-run")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "run"


def test_unusable_run_dirs_are_one_line_errors(hopper_dataset, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {a_file: "is a file", a_file / "run": "which is a file",
             read_only_location(tmp_path): "writable place"}
    for run_dir, expected in cases.items():
        code, _, err = edis(capsys, "train", "--dataset", hopper_dataset, "--run-dir",
                            str(run_dir), *SHORT)
        assert code == 2, run_dir
        assert expected in one_line_error(err)


def test_diagnose_with_no_samples_is_a_clear_error(hopper_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, "iql", "edis", ["online_steps=120"]),
                   run_dir).run()
    code, _, err = edis(capsys, "diagnose", str(run_dir), "--samples", "0")
    assert code == 2
    assert "--samples must be >= 1" in one_line_error(err)


@pytest.mark.parametrize(("damage", "expected"), [("delete", "positive.npz is missing"),
                                                  ("truncate", "corrupt or unreadable")])
def test_a_missing_or_truncated_buffer_file_is_named(hopper_dataset, tmp_path, capsys, damage,
                                                     expected):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, extra=["online_steps=0"]), run_dir).run()
    buffer_file = run_dir / "checkpoint" / "positive.npz"
    if damage == "delete":
        buffer_file.unlink()
    else:
        buffer_file.write_bytes(buffer_file.read_bytes()[:100])
    code, _, err = edis(capsys, "train", "--resume", str(run_dir))
    assert code == 2
    line = one_line_error(err)
    assert expected in line and "does not match this run's configuration" not in line


def test_an_unexpected_error_is_one_line_and_a_traceback_only_with_debug(monkeypatch, capsys):
    import services.cli as cli

    def broken(_args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_data_info", broken)
    code, _, err = edis(capsys, "data", "info", "x/y-v0")
    assert code == 1
    assert "unexpected RuntimeError: boom second line" in one_line_error(err)
    assert "--debug" in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "data", "info", "x/y-v0"])


# ---------------------------------------------------------------- 8. smaller
def test_a_refused_run_leaves_no_folder(minari_root, hopper_dataset, tmp_path, capsys):
    cases = [["--dataset", "safety/absent-v0"],
             ["--dataset", hopper_dataset, "--set", "env_id=HalfCheetah-v5"],
             ["--dataset", hopper_dataset, "--device", "cuda:7"]]
    for i, case in enumerate(cases):
        run_dir = tmp_path / "nested" / f"run{i}"
        code, _, err = edis(capsys, "train", "--run-dir", str(run_dir), *case, *SHORT)
        assert code == 2, case
        one_line_error(err)
        assert not (tmp_path / "nested").exists(), case


def test_a_negative_seed_names_the_field(hopper_dataset, tmp_path, capsys):
    code, _, err = edis(capsys, "train", "--dataset", hopper_dataset, "--run-dir",
                        str(tmp_path / "run"), "--set", "seed=-1")
    assert code == 2
    assert "seed must be" in one_line_error(err)


def test_data_of_another_env_version_warns(minari_root, tmp_path, capsys):
    write_dataset("safety/hopper-v4-v0", env_id="Hopper-v4")
    dataset = load_dataset("safety/hopper-v4-v0")
    with pytest.warns(UserWarning, match="collected in Hopper-v4 .* runs Hopper-v5"):
        check_compatible(dataset, gym.make("Hopper-v5"))
    code, _, err = edis(capsys, "train", "--dataset", "safety/hopper-v4-v0", "--run-dir",
                        str(tmp_path / "run"), "--set", "env_id=Hopper-v5", *SHORT)
    assert code == 0
    warning = [line for line in err.splitlines() if "collected in Hopper-v4" in line]
    assert len(warning) == 1 and warning[0].startswith("edis: warning:")


def test_a_checkpoint_without_its_data_records_is_refused_with_what_to_do(hopper_dataset,
                                                                          tmp_path):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, extra=["online_steps=0"]), run_dir).run()
    progress_path = run_dir / "checkpoint" / "progress.json"
    progress = json.loads(progress_path.read_text())
    del progress["dataset"], progress["env"]
    progress_path.write_text(json.dumps(progress))
    with pytest.raises(CheckpointError, match=r"records no dataset or env.*start the run again"):
        Trainer.load(run_dir)


def test_an_interrupt_while_loading_is_one_line_and_130(monkeypatch, capsys):
    import services.cli as cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_data_info", interrupted)
    try:
        code, _, err = edis(capsys, "data", "info", "x/y-v0")
    except KeyboardInterrupt:  # escaping, it would end the whole test session
        pytest.fail("KeyboardInterrupt escaped `edis`")
    assert code == 130
    assert err.strip() == "edis: interrupted"


def test_metrics_and_summaries_stay_json_with_nonfinite_values(tmp_path):
    from edis_core.training.run_log import MetricsLog, write_summary

    log = MetricsLog(tmp_path)
    log.write({"step": 1, "loss": math.nan, "energy": {"a": math.inf, "b": 1.0}})
    line = strict_json((tmp_path / "metrics.jsonl").read_text())
    assert line == {"step": 1, "loss": None, "energy": {"a": None, "b": 1.0},
                    "nonfinite_as_null": 2}
    summary = strict_json(write_summary(tmp_path, {"final": [1.0, -math.inf]}).read_text())
    assert summary == {"final": [1.0, None], "nonfinite_as_null": 1}
