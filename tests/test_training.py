"""The offline-to-online loop end to end on a tiny Hopper dataset."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from edis_core.config import build
from edis_core.training.checkpoint import CheckpointError
from edis_core.training.config import TrainConfig
from edis_core.training.diagnose import diagnose_run
from edis_core.training.trainer import Trainer

TINY = ["offline_steps=40", "online_steps=300", "offline_eval_every=40",
        "online_eval_every=150", "eval_episodes=1", "log_every=50", "checkpoint_every=100",
        "batch_size=64", "positive_capacity=200"]
TINY_SYNTHETIC = ["edis.diffusion.train_steps=60", "schedule.refresh_every=100",
                  "schedule.samples_per_refresh=256", "schedule.buffer_size=512",
                  "edis.energy_steps=10", "schedule.min_positive=50",
                  "schedule.real_sample=500", "schedule.prior_steps_per_refresh=5"]


def tiny_config(dataset: str, agent: str = "iql", synthetic: str = "none",
                extra: list[str] | None = None) -> TrainConfig:
    overrides = TINY + (TINY_SYNTHETIC if synthetic != "none" else []) + (extra or [])
    return build(TrainConfig, "smoke", {"agent": agent, "dataset": dataset,
                                        "synthetic": synthetic}, overrides)


@pytest.mark.parametrize("agent", ["iql", pytest.param("calql", marks=pytest.mark.slow)])
def test_offline_to_online_run_leaves_metrics_summary_and_plot(hopper_dataset, tmp_path, agent):
    trainer = Trainer.create(tiny_config(hopper_dataset, agent), tmp_path / "run")
    summary = trainer.run()
    assert summary["status"] == "completed"
    assert summary["steps"] == {"prior": 0, "offline": 40, "online": 300}
    run_dir = tmp_path / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert {r["phase"] for r in evals} == {"offline", "online"}
    assert all(np.isfinite(r["return_mean"]) for r in evals)
    assert any(r["kind"] == "episode" for r in records)
    assert json.loads((run_dir / "summary.json").read_text())["online_final"]["step"] == 300
    assert (run_dir / "learning_curve.png").stat().st_size > 1_000
    # online episodes end in the positive buffer and get their return-to-go in replay
    assert len(trainer.positive) > 0
    assert np.isfinite(trainer.replay.contents().mc_returns).any()


@pytest.mark.slow
def test_edis_run_refreshes_guided_synthetic_data(hopper_dataset, tmp_path):
    trainer = Trainer.create(tiny_config(hopper_dataset, "iql", "edis"), tmp_path / "run")
    summary = trainer.run()
    assert summary["steps"]["prior"] == 60
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    refreshes = [r for r in records if r["kind"] == "synthetic"]
    assert refreshes, "the synthetic buffer was never refreshed"
    assert all(r["generated"] > 0 for r in refreshes)
    assert any(k.startswith("energy/") for k in refreshes[0])
    assert all(np.isfinite(r["prior_loss"]) for r in refreshes)
    assert len(trainer.synthetic) > 0


@pytest.mark.slow
def test_same_seed_gives_the_same_run(hopper_dataset, tmp_path):
    contents = []
    for name in ("a", "b"):
        trainer = Trainer.create(tiny_config(hopper_dataset, "iql"), tmp_path / name)
        trainer.run()
        contents.append(trainer.replay.contents())
    np.testing.assert_array_equal(contents[0].observations, contents[1].observations)
    np.testing.assert_array_equal(contents[0].actions, contents[1].actions)


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues_at_the_same_step(hopper_dataset, tmp_path,
                                                                    monkeypatch):
    run_dir = tmp_path / "run"
    trainer = Trainer.create(tiny_config(hopper_dataset, "calql"), run_dir)
    real_update = trainer.agent.update
    calls = {"n": 0}

    def update_then_signal(batch):
        calls["n"] += 1
        if calls["n"] == 40 + 170:  # 170 online steps into the run
            signal.raise_signal(signal.SIGTERM)
        return real_update(batch)

    monkeypatch.setattr(trainer.agent, "update", update_then_signal)
    summary = trainer.run()
    assert summary["status"] == "interrupted"
    assert trainer.steps["online"] == 170
    replay_before = trainer.replay.contents()
    positive_before = trainer.positive.contents()

    resumed = Trainer.load(run_dir)
    assert resumed.steps == trainer.steps
    assert resumed.phase == "online"
    np.testing.assert_array_equal(resumed.replay.contents().observations,
                                  replay_before.observations)
    np.testing.assert_array_equal(resumed.positive.contents().rewards, positive_before.rewards)
    assert resumed.rng.bit_generator.state == trainer.rng.bit_generator.state
    summary = resumed.run()
    assert summary["status"] == "completed"
    assert resumed.steps["online"] == 300
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train" and r["phase"] == "online"]
    assert train_steps == [50, 100, 150, 200, 250, 300]


@pytest.mark.slow
def test_diagnosis_seed_repeats_the_draw_and_other_seeds_draw_anew(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, "iql", "edis", ["online_steps=120"]),
                   run_dir).run()
    first, again, other = (diagnose_run(run_dir, samples=200, seed=seed, held_out=100)
                           for seed in (0, 0, 1))
    for key in ("guided", "unguided", "dynamics_ratio", "prior_at_policy_states"):
        assert first[key] == again[key], key
    dynamics = first["guided"]["dynamics"]
    assert dynamics["n_samples"] + dynamics["n_nonfinite_skipped"] == 200  # every sample
    for side in ("guided", "unguided"):
        assert other[side]["dynamics"] != first[side]["dynamics"], side
    # other held-out episodes too
    assert other["guided"]["state_mmd_to_held_out"] != first["guided"]["state_mmd_to_held_out"]
    # the transition probe redraws the guided batch from the same random numbers: with
    # w_T = 0 on both sides it is the same batch
    same = diagnose_run(run_dir, samples=200, seed=0, held_out=100, transition_weight=0.0)
    assert same["transition_probe"]["ratio"] == {"next_obs_normalised_mse": 1.0,
                                                 "reward_mse": 1.0}


def test_create_refuses_an_existing_run_and_resume_needs_one(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, "iql", extra=["online_steps=0"]), run_dir).run()
    with pytest.raises(ValueError, match="--resume"):
        Trainer.create(tiny_config(hopper_dataset, "iql"), run_dir)
    with pytest.raises(CheckpointError, match="not a run directory"):
        Trainer.load(tmp_path / "empty")


def test_corrupt_checkpoint_is_a_clear_error(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, "iql", extra=["online_steps=0"]), run_dir).run()
    (run_dir / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer.load(run_dir)


def test_online_prior_data_is_all_online_rows_as_many_offline_rows_and_the_recent_share():
    from edis_core.training.synthetic import prior_rows
    from edis_core.transitions import Transitions

    offline, online = Transitions.empty(2, 1, 100), Transitions.empty(2, 1, 30)
    recent, none = Transitions.empty(2, 1, 7), Transitions.empty(2, 1, 0)
    offline.rewards[:], online.rewards[:], recent.rewards[:] = 0.0, 1.0, 5.0
    mixed = prior_rows(offline, online, recent, 0.0, 0, np.random.default_rng(0))
    assert len(mixed) == 60 and mixed.rewards.sum() == 30
    few_offline = prior_rows(offline.take(slice(0, 10)), online, recent, 0.0, 0,
                             np.random.default_rng(0))
    assert len(few_offline) == 40
    # A quarter of the rows from the positive buffer: 20 beside the 60 balanced ones.
    weighted = prior_rows(offline, online, recent, 0.25, 0, np.random.default_rng(0))
    assert len(weighted) == 80 and (weighted.rewards == 5.0).sum() == 20
    assert (weighted.rewards == 1.0).sum() == 30 and (weighted.rewards == 0.0).sum() == 30
    assert len(prior_rows(offline, online, none, 0.25, 0, np.random.default_rng(0))) == 60


def test_online_prior_training_never_draws_fewer_offline_rows_than_its_floor():
    """With few online rows the prior must keep training on the dataset, not on a subsample
    as small as the online data (one row after the first online step)."""
    from edis_core.training.synthetic import prior_rows
    from edis_core.transitions import Transitions

    offline, recent = Transitions.empty(2, 1, 100), Transitions.empty(2, 1, 0)
    first_step = Transitions.empty(2, 1, 1)
    offline.rewards[:], first_step.rewards[:] = 0.0, 1.0
    rows = prior_rows(offline, first_step, recent, 0.0, 80, np.random.default_rng(0))
    assert (rows.rewards == 0.0).sum() == 80 and (rows.rewards == 1.0).sum() == 1
    # a floor above the dataset takes the whole dataset's size; many online rows lift it
    assert (prior_rows(offline, first_step, recent, 0.0, 500,
                       np.random.default_rng(0)).rewards == 0.0).sum() == 100
    many = Transitions.empty(2, 1, 90)
    assert len(prior_rows(offline, many, recent, 0.0, 80, np.random.default_rng(0))) == 180


def test_a_crash_between_checkpoint_renames_falls_back_to_the_previous_one(hopper_dataset,
                                                                          tmp_path):
    run_dir = tmp_path / "run"
    trainer = Trainer.create(tiny_config(hopper_dataset, "iql", extra=["online_steps=0"]), run_dir)
    trainer.run()
    (run_dir / "checkpoint").rename(run_dir / "checkpoint.old")
    with pytest.raises(ValueError, match="--resume"):
        Trainer.create(tiny_config(hopper_dataset, "iql"), run_dir)
    assert Trainer.load(run_dir).steps == trainer.steps


def test_a_torn_metrics_line_does_not_block_resume(hopper_dataset, tmp_path):
    run_dir = tmp_path / "run"
    Trainer.create(tiny_config(hopper_dataset, "iql", extra=["online_steps=0"]), run_dir).run()
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "pha')
    summary = Trainer.load(run_dir).run()
    assert summary["status"] == "completed"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


@pytest.mark.slow
def test_runs_share_one_offline_checkpoint_through_offline_from(hopper_dataset, tmp_path):
    source = tmp_path / "offline"
    offline = Trainer.create(tiny_config(hopper_dataset, "calql", extra=["online_steps=0"]),
                             source).run()["offline_final"]
    for mode in ("none", "unguided"):
        run_dir = tmp_path / mode
        summary = Trainer.create(tiny_config(hopper_dataset, "calql", mode,
                                             [f"offline_from={source}"]), run_dir).run()
        assert summary["status"] == "completed" and summary["steps"]["offline"] == 40
        # The source's agent, not a fresh pre-training: no offline update ran here, and the
        # offline evaluation is the source's.
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text()
                   .splitlines()]
        assert not [r for r in records if r["kind"] == "train" and r["phase"] == "offline"]
        assert summary["offline_final"]["return_mean"] == offline["return_mean"]
        assert summary["offline_final"]["offline_from"] == str(source)
    with pytest.raises(CheckpointError, match="offline_steps differ"):
        Trainer.create(tiny_config(hopper_dataset, "calql", extra=[
            f"offline_from={source}", "offline_steps=41"]), tmp_path / "other")


def synthetic_records(run_dir) -> list[dict]:
    return [r for r in (json.loads(line) for line in
                        (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "synthetic"]


def test_unguided_refreshes_wait_for_as_many_online_rows_as_guided_ones(hopper_dataset,
                                                                         tmp_path):
    """Without the gate the unguided prior trained at online step 1 on two rows (one
    offline, one online) and its collapsed samples fed the agent until the next refresh."""
    run_dir = tmp_path / "run"
    trainer = Trainer.create(tiny_config(hopper_dataset, "iql", "unguided"), run_dir)
    trainer.run()
    first = synthetic_records(run_dir)[0]
    assert first["step"] >= 50                      # schedule.min_positive in TINY_SYNTHETIC
    episodes = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text()
                .splitlines() if '"episode"' in line]
    assert sum(e["length"] for e in episodes if e["step"] <= first["step"]) >= 50


def test_the_oracle_fills_the_synthetic_slot_with_real_on_policy_transitions(hopper_dataset,
                                                                            tmp_path):
    from edis_core.diagnostics import dynamics_fidelity

    run_dir = tmp_path / "run"
    trainer = Trainer.create(tiny_config(hopper_dataset, "iql", "oracle"), run_dir)
    summary = trainer.run()
    assert summary["status"] == "completed"
    assert summary["steps"] == {"prior": 0, "offline": 40, "online": 300}  # no prior, and
    refreshes = synthetic_records(run_dir)                  # its steps are not env steps
    assert refreshes and all(r["generated"] == 256 for r in refreshes)
    assert refreshes[0]["step"] >= 50
    rows = trainer.synthetic.buffer.contents()
    assert len(rows) > 0 and np.all(np.isneginf(rows.mc_returns))
    # real transitions: the simulator set to each s and stepped with a gives its s' and r
    fidelity = dynamics_fidelity("Hopper-v5", rows, max_samples=200, seed=0)
    assert fidelity["next_obs_mse"] < 1e-8 and fidelity["reward_mse"] < 1e-8
    resumed = Trainer.inspect(run_dir)
    assert resumed.supply.refreshes == trainer.supply.refreshes == len(refreshes)
    assert resumed.synthetic.version == len(refreshes)


def test_runs_share_the_offline_prior_as_well_as_the_agent(hopper_dataset, tmp_path):
    source = tmp_path / "offline"
    Trainer.create(tiny_config(hopper_dataset, "iql", "unguided", ["online_steps=0"]),
                   source).run()
    run_dir = tmp_path / "edis"
    trainer = Trainer.create(tiny_config(hopper_dataset, "iql", "edis",
                                         [f"offline_from={source}", "online_steps=0"]), run_dir)
    summary = trainer.run()
    assert summary["steps"]["prior"] == 60
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "train" and r["phase"] == "prior"]
    theirs = Trainer.inspect(source).generator.prior.denoiser.state_dict()
    ours = trainer.generator.prior.denoiser.state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    # a prior trained with other settings is not taken: the run trains its own
    other = Trainer.create(tiny_config(hopper_dataset, "iql", "edis", [
        f"offline_from={source}", "online_steps=0", "edis.diffusion.train_steps=30"]),
        tmp_path / "own")
    other.run()
    own = [json.loads(line) for line in (tmp_path / "own" / "metrics.jsonl").read_text()
           .splitlines()]
    assert [r["step"] for r in own if r["kind"] == "train" and r["phase"] == "prior"] == [30]


@pytest.mark.slow
def test_a_sampling_seed_changes_the_learners_draws_but_not_its_environments(hopper_dataset,
                                                                            tmp_path):
    """The A/A control: two `none` runs from one offline checkpoint that differ only in
    their own random draws."""
    source = tmp_path / "offline"
    Trainer.create(tiny_config(hopper_dataset, "iql", extra=["online_steps=0"]), source).run()
    replays = {}
    for name, seed in (("a", None), ("b", 7), ("c", 7)):
        extra = [f"offline_from={source}"] + ([f"sampling_seed={seed}"] if seed else [])
        trainer = Trainer.create(tiny_config(hopper_dataset, "iql", extra=extra), tmp_path / name)
        trainer.run()
        replays[name] = trainer.replay.contents()
    a, b, c = replays["a"], replays["b"], replays["c"]
    np.testing.assert_array_equal(a.observations[0], b.observations[0])   # same env reset
    assert not np.array_equal(a.actions[:50], b.actions[:50])            # other noise
    np.testing.assert_array_equal(b.actions, c.actions)                  # repeatable
