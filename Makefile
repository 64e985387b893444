# The two set-up commands, each enough on a fresh machine: the virtual environment in .venv is
# made (and clipkit installed into it) on first use, and again when pyproject.toml changes.
#   make quickstart   install clipkit, then run the offline quickstart
#   make test         install clipkit with what the tests need, then run the default suite
# and what CI adds:
#   make test-all     the default suite plus the end-to-end tests (real processes, servers,
#                     torchrun, the browser)
#   make lint         ruff check, ruff format --check and mypy
# and for the docs:
#   make docs         regenerate the command reference (README's table, docs/commands.md)

PYTHON ?= python3
VENV ?= .venv
# One test process per core; the tests that share an expensive fixture (a trained run, an
# ONNX export) carry one xdist group, so that each fixture is built once, on one worker.
# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE): each
# worker otherwise rewrites every test module's asserts and compiles clipkit anew, 6 s a process.
# Each worker's math runs on one thread: two workers of two threads each on two cores fought
# for them (the suite took 50 s of CPU more).
PYTEST = env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	OPENBLAS_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n auto --dist loadgroup --durations=10
LINTED = clipkit tests benchmarks examples docs
# Files whose cog blocks are generated from the commands' --help (docs/reference.py).
COGGED = README.md docs/commands.md

.PHONY: quickstart test test-all lint docs

quickstart: $(VENV)/.installed
	$(VENV)/bin/clipkit quickstart

test: $(VENV)/.installed-dev
	$(PYTEST)

test-all: $(VENV)/.installed-dev
	$(PYTEST) -m "not slow and not gpu"

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

docs: $(VENV)/.installed-dev
	$(VENV)/bin/cog -r -I docs $(COGGED)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@ $(VENV)/.installed
