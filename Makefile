# The two set-up commands, each enough on a fresh machine: the virtual environment in .venv is
# made (and clipkit installed into it) on first use, and again when pyproject.toml changes.
#   make quickstart   install clipkit, then run the offline quickstart
#   make test         install clipkit with what the tests need, then run the default suite

PYTHON ?= python3
VENV ?= .venv

.PHONY: quickstart test

quickstart: $(VENV)/.installed
	$(VENV)/bin/clipkit quickstart

test: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@ $(VENV)/.installed
