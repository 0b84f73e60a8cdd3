# ki67node: `make run` starts the daemon, `make test` runs the whole suite, `make check` the fast lane.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/ki67node.toml
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints-cpu.txt
PYTEST_ARGS ?=
# Test processes of `make check` (pytest-xdist; each test file stays on one process, so
# its module fixtures are built once); 0 runs the fast lane in this process.
PYTEST_WORKERS ?= auto

.PHONY: run test check lint typecheck venv dev clean

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
	$(BIN)/ruff check daemon ai_core dicom_out lab tests bench
	$(BIN)/ruff format --check daemon ai_core dicom_out lab tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy
	$(BIN)/mypy --scripts-are-modules bench/ingest
	$(BIN)/mypy --scripts-are-modules bench/pipeline
	$(BIN)/mypy --scripts-are-modules bench/model
	$(BIN)/mypy --scripts-are-modules bench/e2e
	$(BIN)/mypy --scripts-are-modules bench/model_device
	$(BIN)/mypy --scripts-are-modules bench/segmentation

test: lint typecheck
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

# The fast lane: lint, types and the tests not marked slow (CI runs `make test`, all of them).
check: lint typecheck
	$(BIN)/python -m pytest -q -ra -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
