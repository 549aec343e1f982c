"""The `edis` command: what a user types, what they get back."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from services.cli import main


def test_data_make_then_info_prints_the_dataset_facts(minari_root, capsys):
    code = main(["data", "make", "--env", "Hopper-v5", "--policy", "random", "--steps", "500",
                 "--dataset-id", "cli/hopper-random-v0", "--seed", "3"])
    assert code == 0
    capsys.readouterr()
    assert main(["data", "info", "cli/hopper-random-v0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transitions"] == 500
    assert info["obs_dim"] == 11 and info["act_dim"] == 3
    assert info["env_id"] == "Hopper-v5"
    assert info["episodes"] >= 1


def test_remote_dataset_id_fails_fast_with_how_to(minari_root, capsys):
    start = time.perf_counter()
    code = main(["data", "info", "D4RL/hopper/medium-v2"])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2
    assert elapsed < 5.0
    assert "edis data make" in err and "minari download" in err


def test_train_with_unknown_override_is_refused(hopper_dataset, tmp_path, capsys):
    code = main(["train", "--dataset", hopper_dataset, "--run-dir", str(tmp_path / "r"),
                 "--set", "iql.expectle=0.9"])
    assert code == 2
    assert "expectle" in capsys.readouterr().err


def test_train_on_a_dataset_for_another_env_is_refused(hopper_dataset, tmp_path, capsys):
    code = main(["train", "--dataset", hopper_dataset, "--run-dir", str(tmp_path / "r"),
                 "--set", "env_id=HalfCheetah-v5", "--profile", "smoke"])
    assert code == 2
    err = capsys.readouterr().err
    assert "HalfCheetah-v5" in err or "(17,)" in err


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_events_are_one_json_object_per_line_when_asked_and_children_inherit_it(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDIS_LOG_FORMAT", "text")     # restored after the test
    assert main(["--log-format", "json", "train", "--resume", str(tmp_path / "nothing")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["level"] == "error" and event["logger"] == "edis"
    assert "not a run directory" in event["message"] and "time" in event
    assert os.environ["EDIS_LOG_FORMAT"] == "json"     # what a started process reads
    assert main(["--log-format", "text", "train", "--resume", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("edis: error: ")


def test_train_runs_and_resume_of_a_finished_run_completes(hopper_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--agent", "iql", "--dataset", hopper_dataset, "--run-dir", str(run_dir),
            "--profile", "smoke", "--set", "offline_steps=20", "--set", "online_steps=50",
            "--set", "eval_episodes=1"]
    assert main(args) == 0
    assert (run_dir / "summary.json").is_file()
    assert main(["train", "--resume", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"]["online"] == 50


def test_data_make_with_a_trained_policy_writes_its_actions(hopper_dataset, tmp_path, capsys):
    """The D4RL way of making medium-quality data: run a checkpointed policy."""
    run_dir = tmp_path / "run"
    assert main(["train", "--agent", "iql", "--dataset", hopper_dataset, "--run-dir",
                 str(run_dir), "--profile", "smoke", "--set", "offline_steps=20",
                 "--set", "online_steps=0", "--set", "eval_episodes=1"]) == 0
    capsys.readouterr()
    assert main(["data", "make", "--env", "Hopper-v5", "--policy", str(run_dir), "--steps",
                 "300", "--dataset-id", "cli/hopper-policy-v0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transitions"] == 300

    assert main(["data", "make", "--env", "Hopper-v5", "--policy", "random", "--steps",
                 "300", "--dataset-id", "cli/hopper-random-seed0-v0"]) == 0
    assert info["algorithm_name"] == f"edis data make, policy={run_dir}"

    from edis_core.data.minari_io import load_dataset

    by_policy = load_dataset("cli/hopper-policy-v0").transitions
    by_random = load_dataset("cli/hopper-random-seed0-v0").transitions
    # same seed, same first reset: the datasets differ only through the acting policy
    np.testing.assert_array_equal(by_policy.observations[0], by_random.observations[0])
    assert not np.allclose(by_policy.actions[:10], by_random.actions[:10])
    assert np.all(np.abs(by_policy.actions) <= 1.0)


def test_data_make_with_a_missing_policy_directory_is_refused(minari_root, tmp_path, capsys):
    code = main(["data", "make", "--env", "Hopper-v5", "--policy", str(tmp_path / "none"),
                 "--steps", "10", "--dataset-id", "cli/never-v0"])
    assert code == 2
    assert "run directory" in capsys.readouterr().err


def test_resume_refuses_flags_it_would_ignore(hopper_dataset, tmp_path, capsys):
    code = main(["train", "--resume", str(tmp_path), "--set", "online_steps=5"])
    assert code == 2
    assert "drop ['set']" in capsys.readouterr().err


def test_override_that_is_not_yaml_is_a_config_error(hopper_dataset, tmp_path, capsys):
    code = main(["train", "--dataset", hopper_dataset, "--run-dir", str(tmp_path / "r"),
                 "--set", "dataset=["])
    assert code == 2
    assert "not valid YAML" in capsys.readouterr().err
