# The two commands users need: `make run` (main job on the local control plane) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt crds control-plane guest-image clean

# The venv is made anew whenever these files change, so it holds exactly what they list (no
# distribution left over from an older layout).
$(STAMP): pyproject.toml requirements-dev.txt devenv/pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -r requirements-dev.txt -e . -e ./devenv
	touch $(STAMP)

control-plane:
	hack/build-control-plane.sh

# The guest image (Debian kernel + initramfs from pinned packages), cached outside the repo; it
# needs QEMU's host packages only to run, and apt's package lists to download its pins.
guest-image:
	hack/build-guest-image.sh >/dev/null

run: $(STAMP) control-plane
	$(VENV)/bin/lparkube-dev up

test: $(STAMP) control-plane scan-tools guest-image
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

# The agent gateway flooded (20,000 unsigned reports with fresh names, 3,000 idle connections)
# while agents report: their latency and the API lookups the flood cost (a benchmark).
.PHONY: bench-gateway
bench-gateway: $(STAMP) control-plane
	$(PY) hack/bench_gateway.py $(BENCH_ARGS)

# A real guest's boot: Partition created -> VMI Running -> Ready, median of 3 (a benchmark).
.PHONY: bench-boot
bench-boot: $(STAMP) control-plane guest-image
	$(PY) hack/bench_boot.py $(BENCH_ARGS)

# A real guest's hibernation onto its paging disk -> QEMU gone, and its resume in a new QEMU
# -> console answering (no operator), median of 3 for a 512 MiB guest (a benchmark).
.PHONY: bench-hibernate
bench-hibernate: $(STAMP) guest-image
	$(PY) hack/bench_hibernate.py $(BENCH_ARGS)

# Through the operator: a HibernationImage created -> Captured, resumed -> Resumed, median of 3
# for a 512 MiB real guest (a benchmark).
.PHONY: bench-hibernation-image
bench-hibernation-image: $(STAMP) control-plane guest-image
	$(PY) hack/bench_hibernation_image.py $(BENCH_ARGS)

# RemoteRestarts of a 512 MiB real guest: the operator's share (created -> target start
# requested, goal <= 1 s), the restore from a hibernation image and the boot from disk on a
# fenced node, and each whole restart, median of 3 (a benchmark).
.PHONY: bench-remote-restart
bench-remote-restart: $(STAMP) control-plane guest-image
	$(PY) hack/bench_remote_restart.py $(BENCH_ARGS)

# The operator image (needs a Docker engine). IMAGE names it; VERSION and REVISION become its
# OCI labels. `make image-requirements` regenerates the image's hashed pins.
IMAGE ?= lparkube:dev
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
.PHONY: image image-requirements scan-tools scan e2e
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) .

image-requirements:
	hack/image-requirements.sh

# kube-score, pinned, built from the Go module proxy into the cache (first time only).
scan-tools:
	hack/build-scan-tools.sh >/dev/null

# Security scan of the rendered chart: findings and the count per severity; fails on CRITICAL.
scan: $(STAMP) control-plane scan-tools
	$(PY) tests/security/chart_scan.py

# kind + KubeVirt end-to-end tests (skipped with the reason when Docker is unavailable).
e2e: $(STAMP) control-plane
	$(PY) -m pytest e2e -v -rs $(PYTEST_ARGS)
