"""setuptools hook: a built package carries the gRPC stubs, generated from protos/ at build
time (they are never committed). Named in pyproject.toml's [tool.setuptools.cmdclass]."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools.command.build_py import build_py

GENERATOR = Path(__file__).resolve().parent / "protos" / "generate.py"


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:   # an editable install uses the stubs `make setup` writes
            # By path: the project is not importable while it is being built.
            spec = importlib.util.spec_from_file_location("protos_generate", GENERATOR)
            generator = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(generator)
            generator.generate(out=Path(self.build_lib))
