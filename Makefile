# The two commands of the README, each creating the virtual environment on first use:
#   make course   execute every notebook in its default mode (papermill) and build the book
#   make test     run the test suite (unit tests, notebooks in quick mode, the book build)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MEDMNIST_ROOT ?= $(abspath ../shared/data/medmnist)
export FLWR_TELEMETRY_ENABLED := 0

.PHONY: course test venv notebooks book quick lint clean-book

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,notebooks,book]"
	touch $@

venv: $(VENV)/.installed

notebooks: venv
	$(PY) -m medgan_utils.cli run-notebooks

book: venv
	bash book/build.sh

course: notebooks book

test: venv
	$(PY) -m pytest -p no:cacheprovider

quick: venv
	$(PY) -m medgan_utils.cli run-notebooks --quick --no-inplace

lint: venv
	$(PY) -m ruff check .
