# Two commands: `make run` (set up, then the embedded default run) and `make test`
# (set up, then the test suite). Everything else here serves those two.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# gRPC stubs are generated from the .proto files, never committed (protos/generate.py).
PROTOS := $(shell find protos -name '*.proto')
STUBS := $(PROTOS:.proto=_pb2.py) $(PROTOS:.proto=_pb2_grpc.py) $(PROTOS:.proto=_pb2.pyi)

.PHONY: setup run test lint bench evidence clean prometheus cluster cluster-down

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

test: setup prometheus
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every speed benchmark, one after the other (never two at once: they would share the
# cores); each writes results/NAME.json. bench_runtime's demo-budget section (--sections
# runs) trains two demo runs and is left out here.
bench: setup
	$(BIN)/python benchmarks/bench_agents.py
	$(BIN)/python benchmarks/bench_sampling.py
	$(BIN)/python benchmarks/bench_sampler_service.py
	$(BIN)/python benchmarks/bench_sampler_load.py
	$(BIN)/python benchmarks/bench_runtime.py --sections rollouts

# Can the protocol detect a gain, and does EDIS give one? (resumable; ~8 h on 2 cores): docs/results.md
evidence: setup
	$(BIN)/python -m evidence

# Debian's prometheus and promtool, which the cluster and its tests run; installed when missing
# (as root), else the tests that need them say how.
prometheus:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "prometheus is missing: sudo apt-get install prometheus (Debian's package)"; \
	  fi; \
	fi

# The docker-compose cluster as processes on this machine: Ray head, WORKERS Ray worker nodes
# (one rollout actor each), the sampler, the learner (the demo run) and Prometheus on
# 127.0.0.1:9090. State, logs, the run and Prometheus's data in runs/cluster/.
WORKERS ?= 2
cluster: setup prometheus
	$(BIN)/python -m services.cluster up --workers $(WORKERS)

cluster-down:
	$(BIN)/python -m services.cluster down

clean:
	rm -rf $(VENV) runs results $(STUBS)
