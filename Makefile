# Two commands for a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so pip takes the CPU wheel instead of a multi-GB CUDA build.
# Every install is constrained to constraints.txt, the versions the suite was green with, so a
# fresh machine gets what was tested; `make test-latest` tries the newest versions instead and
# `make lock` rewrites constraints.txt from such a run once it is green.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-base
TEST_STAMP := $(VENV)/.installed-test
CONSTRAINTS := constraints.txt
LATEST := .venv-latest
TORCH := torch==2.13.0

.PHONY: demo test test-latest lock lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install -q -c $(CONSTRAINTS) $(TORCH)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev,examples]'
	touch $(STAMP)

# The tests also exercise the optional stacks (their tests skip where a stack is absent).
TEST_EXTRAS ?= dev,examples,tf,openvino,peers,optimize,search,ray

# Debian's chromium renders report.html for the screenshot test; best effort (the test skips without it).
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[$(TEST_EXTRAS)]'
	command -v chromium >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
		|| echo "chromium not installed: the report screenshot test will be skipped"
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/deepshrink demo

test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

# The suite against the newest releases pip resolves (torch stays pinned: the CPU wheel), in a
# venv of its own, so version drift shows up here before it reaches a fresh machine.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q $(TORCH)
	$(LATEST)/bin/pip install -q --upgrade -e '.[$(TEST_EXTRAS)]'
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(LATEST)/bin/python -m pytest

# Rewrite constraints.txt from a green test-latest run (it stops before writing when a test fails).
lock: test-latest
	{ echo "# The versions make test was green with (pip freeze of a venv with every test extra)."; \
	  echo "# Used by every pip install in the Makefile; regenerate with 'make lock'."; \
	  $(LATEST)/bin/pip freeze --exclude-editable; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info src/*.egg-info
