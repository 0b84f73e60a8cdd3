# ki67node: `make run` starts the daemon, `make test` runs the whole suite, `make check` the fast lane,
# `make fuzz` the parsers under a coverage-guided fuzzer for a bounded time.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/ki67node.toml
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints-cpu.txt
PYTEST_ARGS ?=
# Seconds each fuzz target runs in `make fuzz` (the two run side by side: about a minute).
FUZZ_SECONDS ?= 50
# Test processes of `make check` (pytest-xdist; each test file stays on one process, so
# its module fixtures are built once); 0 runs the fast lane in this process.
PYTEST_WORKERS ?= auto

.PHONY: run test check lint typecheck fuzz venv dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints-cpu.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints-cpu.txt
	$(PIP) -e '.[dev]'
	touch $(VENV)/.installed $@

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(BIN)/ki67node serve --config $(CONFIG)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check daemon ai_core dicom_out lab tests bench fuzz
	$(BIN)/ruff format --check daemon ai_core dicom_out lab tests bench fuzz

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy
	$(BIN)/mypy --scripts-are-modules bench/ingest
	$(BIN)/mypy --scripts-are-modules bench/pipeline
	$(BIN)/mypy --scripts-are-modules bench/model
	$(BIN)/mypy --scripts-are-modules bench/e2e
	$(BIN)/mypy --scripts-are-modules bench/model_device
	$(BIN)/mypy --scripts-are-modules bench/segmentation

# All tests, one process per CPU (each test file on one worker: the e2e modules keep
# their module-scoped daemons and Orthanc). PYTEST_WORKERS=0 runs them serially.
test: lint typecheck
	$(BIN)/python -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The fast lane: lint, types and the tests not marked slow (CI runs `make test`, all of them).
check: lint typecheck
	$(BIN)/python -m pytest -q -ra -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The acceptor's PDU parsers and the data-set structure check under atheris, from the
# committed seeds in fuzz/corpus/ (fuzz/run.py; work files in a temp folder). Exits
# non-zero on a finding and prints the reproducer.
fuzz: $(VENV)/.installed-dev
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
