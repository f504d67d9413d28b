# The two commands users need: `make run` (main job on the local control plane) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt crds control-plane clean

$(STAMP): pyproject.toml requirements-dev.txt devenv/pyproject.toml guest-agent/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -r requirements-dev.txt -e . -e ./guest-agent -e ./devenv
	touch $(STAMP)

control-plane:
	hack/build-control-plane.sh

run: $(STAMP) control-plane
	$(VENV)/bin/lparkube-dev up

test: $(STAMP) control-plane
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

crds: $(STAMP)
	$(PY) -m lparkube.api.generate

clean:
	rm -rf $(VENV) .run

# SaveEvent fan-out at 100 and 1,000 partitions against a bare client (a benchmark, not a test).
.PHONY: bench-save
bench-save: $(STAMP) control-plane
	$(PY) hack/bench_save.py $(BENCH_ARGS)
