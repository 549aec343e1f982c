# Two commands: `make run` (set up, then the embedded default run) and `make test`
# (set up, then the test suite). Everything else here serves those two.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# gRPC stubs are generated from the .proto files, never committed (protos/generate.py).
PROTOS := $(shell find protos -name '*.proto')
STUBS := $(PROTOS:.proto=_pb2.py) $(PROTOS:.proto=_pb2_grpc.py) $(PROTOS:.proto=_pb2.pyi)

# torch is installed on its own, first, from the index of its build: the CPU build by default
# (PyPI's Linux torch is the CUDA build, with ~2.2 GB of nvidia wheels). A CUDA machine:
#   make setup TORCH=torch==2.13.0 TORCH_INDEX=https://pypi.org/simple
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup run test lint lock bench evidence clean prometheus docker-engine compose-up cluster cluster-down

setup: $(STAMP) $(STUBS)

# The locks carry hashes (pip-compile --generate-hashes): pip refuses any other file.
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --extra-index-url $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install -q -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Rewrite the locks from pyproject.toml and requirements-dev.in on the public index (pins
# already in a lock are kept unless they no longer fit). torch stays out of them: its build
# depends on the machine, so its pin is taken out of the runtime lock after compiling.
# LOCK_ARGS: more pip-compile options, e.g. --find-links=DIR.
COMPILE = PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile -q --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links --index-url https://pypi.org/simple \
	--extra-index-url $(TORCH_INDEX) $(LOCK_ARGS)
lock: $(STAMP)
	$(COMPILE) -o requirements.lock pyproject.toml
	$(BIN)/python -c "import re, pathlib; p = pathlib.Path('requirements.lock'); \
	  p.write_text(re.sub(r'(?ms)^torch==.*?(?=^\S)', '', p.read_text()))"
	$(COMPILE) -o requirements-dev.lock requirements-dev.in

$(STUBS) &: $(PROTOS) $(STAMP)
	$(BIN)/python -m protos.generate

run: setup
	$(BIN)/edis demo

test: setup prometheus docker-engine
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

# Debian's Docker engine and mmdebstrap, with which tests/test_compose.py builds the image and
# brings docker-compose.yml up; installed when missing (as root), else that test says how.
docker-engine:
	@if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends docker.io mmdebstrap >/dev/null; \
	  else \
	    echo "dockerd or mmdebstrap is missing: sudo apt-get install docker.io mmdebstrap"; \
	  fi; \
	fi

# docker compose up, once Compose is known to be v2 (1.x rejects the file: its secrets come
# from the environment, a v2 feature).
compose-up:
	@v=$$(docker compose version --short 2>/dev/null); case "$$v" in \
	  2.*|v2.*) ;; \
	  *) echo "docker compose v2 is needed (found: $${v:-none}); see docs/operations.md"; exit 1;; \
	esac
	docker compose up -d

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
