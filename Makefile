# Two commands: `make run` (set up, then the embedded default run) and `make test`
# (set up, then the test suite). Everything else here serves those two.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# gRPC stubs are generated from the .proto files, never committed (protos/generate.py).
PROTOS := $(shell find protos -name '*.proto')
STUBS := $(PROTOS:.proto=_pb2.py) $(PROTOS:.proto=_pb2_grpc.py) $(PROTOS:.proto=_pb2.pyi)

.PHONY: setup run test lint bench clean

setup: $(STAMP) $(STUBS)

# torch first and pinned: the CPU wheel must win before anything can ask for a CUDA build.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(STUBS) &: $(PROTOS) $(STAMP)
	$(BIN)/python -m protos.generate

run: setup
	$(BIN)/edis demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_agents.py
	$(BIN)/python benchmarks/bench_sampling.py

clean:
	rm -rf $(VENV) runs results $(STUBS)
