"""The package installs: a wheel built from the tracked files alone (no stubs, no source tree
at run time) carries the gRPC stubs and the profiles, and its `edis` serves and trains."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_training import TINY

pytestmark = [pytest.mark.slow, pytest.mark.services]
ROOT = Path(__file__).resolve().parent.parent

# Run by the installed interpreter from a folder with no source tree: a sampler from the
# installed CLI, a publish of a tiny generator, its health.
SERVE_AND_PUBLISH = textwrap.dedent("""
    import sys, torch
    import edis_core, protos.edis.sampler.v1.sampler_pb2 as stubs
    from edis_core.generator import SyntheticGenerator
    from edis_core.generator_config import EDISConfig
    from edis_core.diffusion.prior import DiffusionConfig
    from edis_core.transitions import Transitions
    from services.sampler.client import SamplerClient
    from services.sampler.process import SamplerProcess
    import numpy as np
    print("package:", edis_core.__file__, stubs.__file__)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, obs, act = 256, 3, 2
    o = rng.normal(size=(n, obs)).astype(np.float32)
    rows = Transitions(o, rng.uniform(-1, 1, (n, act)).astype(np.float32),
                       rng.normal(size=n).astype(np.float32), o + 0.1,
                       np.zeros(n, np.float32), np.zeros(n, np.float32),
                       np.full(n, -np.inf, np.float32))
    config = EDISConfig(diffusion=DiffusionConfig(width=32, blocks=1, sampling_steps=4,
                                                  batch_size=64))
    generator = SyntheticGenerator(obs, act, config, mode="unguided", seed=0)
    generator.train_prior(rows, 5)
    with SamplerProcess(log=None) as sampler, SamplerClient(sampler.address) as client:
        before = client.health()
        client.publish(generator, {"prior": 1})
        print("health:", before, client.health())
""")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


def test_the_wheel_installs_and_its_edis_serves_and_trains(hopper_dataset, tmp_path):
    # Only what git tracks (or would): a clean clone, with no generated stubs.
    source = tmp_path / "source"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    assert not list(source.rglob("*_pb2.py"))
    env = {**os.environ, "PYTHONPATH": ""}
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("edis-*.whl"))

    # A fresh environment: the wheel alone, its dependencies those already installed here
    # (a path entry, so that this checkout's editable install is not seen).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                  tmp_path, env).strip()
    Path(purelib, "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "train" in run([str(venv / "bin" / "edis"), "--help"], elsewhere, env)
    served = run([str(python), "-c", SERVE_AND_PUBLISH], elsewhere, env)
    assert f"package: {purelib}/edis_core/__init__.py {purelib}/protos/" in served, served
    assert "health: NOT_SERVING SERVING" in served
    trained = run([str(venv / "bin" / "edis"), "train", "--profile", "smoke", "--dataset",
                   hopper_dataset, "--run-dir", str(tmp_path / "run"),
                   *(arg for o in TINY for arg in ("--set", o))], elsewhere, env)
    assert (tmp_path / "run" / "summary.json").is_file(), trained
