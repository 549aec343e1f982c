"""The quality study's results outlive the run directories they were measured on."""

from __future__ import annotations

import json
import shutil

import pytest

import evidence.quality as quality
from evidence.archive import Archive
from evidence.plan import Grid, plan
from evidence.quality import Study, study_runs, table_runs, write_results
from evidence.report import QUALITY_FILE
from evidence.runner import load_runs

STUDY = Study(rows=100, steps=10)
RESULT = {source: {"mc_error_share": 0.5, "mc_bias": 0.0, "td_mse": 1.0}
          for source in quality.SOURCES}


@pytest.fixture
def edis_run(tmp_path, monkeypatch):
    """Seed 0's table edis run on hopper-medium, completed and archived, and a study_run
    that counts its calls."""
    (spec,) = table_runs(plan(Grid(datasets=("edis/hopper-medium-v0",), stages=("table",))),
                         seeds=[0])
    run_dir = tmp_path / "runs" / spec.name
    run_dir.mkdir(parents=True)
    summary = {"status": "completed", "online_final": {"normalized_score": 50.0}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("")
    archive = Archive(tmp_path / "records")
    archive.put(spec.name, {"summary": summary, "records": []}, ["utd_ratio=4"])
    calls = []

    def measured(run_dir, study):
        calls.append(run_dir)
        return RESULT

    monkeypatch.setattr(quality, "study_run", measured)
    return spec, run_dir, archive, calls


def runs_now(spec, tmp_path, archive):
    return load_runs(tmp_path / "runs", [spec], archive)


def test_a_studied_run_is_read_back_once_its_directory_is_gone(edis_run, tmp_path):
    spec, run_dir, archive, calls = edis_run
    assert spec.name == "hopper-medium/iql/seed0/edis"
    first = study_runs([spec], runs_now(spec, tmp_path, archive), tmp_path / "runs", archive,
                       STUDY)
    assert first == {"iql": {"hopper-medium": {"0": RESULT}}}
    assert calls == [run_dir]
    shutil.rmtree(run_dir)
    assert study_runs([spec], runs_now(spec, tmp_path, archive), tmp_path / "runs", archive,
                      STUDY) == first
    assert calls == [run_dir]          # read from the archive, not measured again
    path = write_results(first, STUDY, tmp_path / "docs")
    assert "| iql | hopper-medium | edis | 1 | 0.500 ± 0.000 | +0.0 | 1.00 | +0.000 |" in (
        json.loads(path.read_text())["markdown"])
    write_results({}, STUDY, tmp_path / "docs")     # no result: no older study shown
    assert not (tmp_path / "docs" / QUALITY_FILE).exists()


def test_a_kept_result_of_another_study_or_another_run_is_not_reused(edis_run, tmp_path):
    spec, run_dir, archive, calls = edis_run
    study_runs([spec], runs_now(spec, tmp_path, archive), tmp_path / "runs", archive, STUDY)
    other = Study(rows=100, steps=20)
    assert study_runs([spec], runs_now(spec, tmp_path, archive), tmp_path / "runs", archive,
                      other, study_new=False) == {}
    # The run made again ends elsewhere: its directory's summary is not the studied one.
    remade = {"status": "completed", "online_final": {"normalized_score": 60.0}}
    (run_dir / "summary.json").write_text(json.dumps(remade))
    runs = runs_now(spec, tmp_path, archive)
    assert study_runs([spec], runs, tmp_path / "runs", archive, STUDY, study_new=False) == {}
    study_runs([spec], runs, tmp_path / "runs", archive, STUDY)
    assert len(calls) == 2             # measured again, on the directory that is here
    assert study_runs([], runs, tmp_path / "runs", archive, STUDY) == {}   # not asked for


def test_a_failed_study_is_reported_and_the_others_go_on(edis_run, tmp_path, monkeypatch,
                                                         capsys):
    spec, _, archive, _ = edis_run

    def broken(run_dir, study):
        raise RuntimeError("no checkpoint")

    monkeypatch.setattr(quality, "study_run", broken)
    assert study_runs([spec], runs_now(spec, tmp_path, archive), tmp_path / "runs", archive,
                      STUDY) == {}
    assert "not studied: RuntimeError: no checkpoint" in capsys.readouterr().err
