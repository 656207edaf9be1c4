# The two set-up commands: `make serve` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: serve test docker-test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps depend on pyproject.toml, so a dependency change reinstalls on the next run.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[build,openvino]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[build,dev,openvino,ray]'
	@touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/dapsearch serve

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

# The compose stack on a real Docker engine, built offline (tests/docker/test_stack.py).
docker-test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m docker_e2e tests/docker/test_stack.py

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.dev-installed
	$(PIP) install -e '.[build,dev,openvino,bench]'
	$(BIN)/python bench/embed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
