"""The quality study's results outlive the run directories they were measured on."""

from __future__ import annotations

import json
import shutil

import pytest

import evidence.quality as quality
from evidence.archive import Archive
from evidence.plan import Grid, plan
from evidence.quality import Study, study_runs, table_runs

STUDY = Study(rows=100, steps=10)


@pytest.fixture
def edis_run(tmp_path, monkeypatch):
    """Seed 0's table edis run on hopper-medium, completed and archived, and a study_run
    that counts its calls."""
    spec = table_runs(plan(Grid(datasets=("edis/hopper-medium-v0",))), seeds=[0])[0]
    run_dir = tmp_path / "runs" / spec.name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    archive = Archive(tmp_path / "records")
    archive.put(spec.name, {"summary": {}, "records": []}, ["utd_ratio=4"])
    calls = []

    def measured(run_dir, study):
        calls.append(run_dir)
        return {"edis": {"mc_error_share": 0.5}}

    monkeypatch.setattr(quality, "study_run", measured)
    return spec, run_dir, archive, calls


def test_a_studied_run_is_read_back_once_its_directory_is_gone(edis_run, tmp_path):
    spec, run_dir, archive, calls = edis_run
    assert spec.name == "hopper-medium/iql/seed0/edis"
    first = study_runs([spec], tmp_path / "runs", archive, STUDY)
    assert first == {"hopper-medium": {"0": {"edis": {"mc_error_share": 0.5}}}}
    assert calls == [run_dir]
    shutil.rmtree(run_dir)
    assert study_runs([spec], tmp_path / "runs", archive, STUDY) == first
    assert calls == [run_dir]          # read from the archive, not measured again


def test_a_kept_result_of_another_study_or_launch_is_not_reused(edis_run, tmp_path):
    spec, run_dir, archive, calls = edis_run
    study_runs([spec], tmp_path / "runs", archive, STUDY)
    assert study_runs([spec], tmp_path / "runs", archive, Study(rows=100, steps=20),
                      study_new=False) == {}
    archive.put(spec.name, {"summary": {}, "records": []}, ["utd_ratio=1"])  # run again
    assert study_runs([spec], tmp_path / "runs", archive, STUDY, study_new=False) == {}
    study_runs([spec], tmp_path / "runs", archive, STUDY)
    assert len(calls) == 2             # measured again on the directory that is here
    shutil.rmtree(run_dir)
    assert study_runs([spec], tmp_path / "runs", archive, STUDY) != {}
