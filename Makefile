# The two commands of the README, each creating the virtual environment on first use:
#   make course   fetch the data, execute every notebook in its default mode (papermill) and build
#                 the book, all into runs/course/: notebooks/ and results/ are left as they are
#   make test     run the test suite (unit tests, notebooks in quick mode, the book build)
# Maintainers publishing a re-run: make course INPLACE=1 executes the notebooks in place, rewrites
# results/*.json (commit hashes, timings) and builds book/_build/html; undo it with
# git checkout -- notebooks results
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INPLACE ?= 0
# The course's offline data copy, when this clone sits next to one (else make data downloads).
SHARED_DATA ?= $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/medmnist/.),)
export MEDMNIST_ROOT ?= $(SHARED_DATA)/medmnist
endif
export FLWR_TELEMETRY_ENABLED := 0

.PHONY: course test venv data notebooks book quick lint clean-book

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,notebooks,book,fl,privacy]"
	touch $@

venv: $(VENV)/.installed

# Every data set the chapters need, md5-verified: used where it is (../shared/data, data/,
# $MEDMNIST_ROOT), else fetched into data/ (MEDGAN_DATA_URL=URL: from a mirror of ../shared/data).
data: venv
	$(PY) -m medgan_utils.data.fetch --all --shared "$(SHARED_DATA)"

ifeq ($(INPLACE),1)
course: data notebooks book
else
course: data
	rm -rf runs/notebooks runs/course
	MEDGAN_RESULTS_DIR="$(abspath runs/course)/results" $(PY) -m medgan_utils.cli run-notebooks --no-inplace --jobs 2
	bash book/build.sh --assets-only
	mkdir -p runs/course/book
	tar -C book --exclude=_build --exclude=node_modules -cf - . | tar -C runs/course/book -xf -
	cp -R notebooks runs/course/notebooks
	cp runs/notebooks/*.ipynb runs/course/notebooks/
	PYTHON="$(abspath $(PY))" bash runs/course/book/build.sh
	@echo "Executed notebooks: runs/course/notebooks/; their results: runs/course/results/;"
	@echo "the book: runs/course/book/_build/html/index.html. notebooks/ and results/ are unchanged."
endif

# In place: rewrites notebooks/*.ipynb and results/*.json (make course INPLACE=1 runs this).
notebooks: data
	$(PY) -m medgan_utils.cli run-notebooks --jobs 2

book: venv
	bash book/build.sh

# The data step may fail here (offline, no shared copy): the tests then say what they miss.
test: venv
	-$(PY) -m medgan_utils.data.fetch medmnist --shared "$(SHARED_DATA)"
	$(PY) -m pytest -p no:cacheprovider

quick: venv
	$(PY) -m medgan_utils.cli run-notebooks --quick --no-inplace --jobs 2

lint: venv
	$(PY) -m ruff check .
