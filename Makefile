# Two commands for a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so pip takes the CPU wheel instead of a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-base
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,examples]'
	touch $(STAMP)

# The tests also exercise the optional stacks (their tests skip where a stack is absent).
TEST_EXTRAS ?= dev,examples,tf,openvino,peers

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/deepshrink demo

test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
