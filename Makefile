# `make run`: set up .venv and run the main job. `make test`: set up .venv and run the tests.
# `make test-fast`: the tests without the end-to-end runs (marker e2e) and the slow ones.
# The venv is created once and reinstalled only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint bench gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[fl,test]'
	touch $(STAMP)

# The default experiment: FedAvg, then FedBCS with Δ against it, on synthetic-nuclei.
RUN_DIR := runs/default-$(shell date +%Y%m%d-%H%M%S)
run: setup
	$(VENV)/bin/fedbcs train --method fedavg --out $(RUN_DIR)/fedavg
	$(VENV)/bin/fedbcs train --method fedbcs --out $(RUN_DIR)/fedbcs --baseline $(RUN_DIR)/fedavg

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not e2e and not slow"

bench: setup
	$(PY) -m pytest benchmarks --benchmark-enable -q -p no:cacheprovider

gpu-check:
	benchmarks/gpu_check.sh
