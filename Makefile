# Transfer Learning Notebooks. The two commands of the README:
#   make run    set up if needed, execute every notebook (quick profile) and print the results table
#   make test   set up if needed, lint, then run the tests (notebooks included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint strip bench student grade html nbval smoke gpu-check clean clean-data help
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"Python >= 3.11 needed, found {sys.version.split()[0]}; set PYTHON=python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name transfer-learning --display-name "Python (transfer-learning)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with tlutils and every dependency, register the Jupyter kernel

run: setup  ## execute all notebooks with the runner (PROFILE=quick|full) and print the results
	$(PY) -m tlutils.course.run --profile $(PROFILE)

test: setup lint  ## lint, unit tests, notebook execution and result claims
	$(PY) -m pytest

test-fast: setup  ## unit tests only (no notebook execution)
	$(PY) -m pytest -m "not notebooks"

lint: setup  ## ruff
	$(PY) -m ruff check tlutils tests benchmarks scripts notebooks
	$(PY) -m tlutils.course.coursework check

strip: setup  ## strip outputs from the committed notebooks
	$(PY) -m tlutils.course.nbtools strip notebooks/*.ipynb

bench: setup  ## run every benchmark and write runs/bench.json
	$(PY) -m benchmarks

student: setup  ## write student versions of the chapters to student/ (solutions replaced by stubs)
	$(PY) -m tlutils.course.coursework student

grade: setup  ## grade one student notebook: make grade NB=student/01_feature_extraction.ipynb
	@test -n "$(NB)" || { echo "usage: make grade NB=student/NN_name.ipynb"; exit 2; }
	$(PY) -m tlutils.course.coursework grade $(NB) --profile $(PROFILE)

html: setup  ## render runs/$(PROFILE) to HTML with an index page (after make run)
	$(PY) -m tlutils.course.render --profile $(PROFILE)

nbval: setup  ## nbval (lax) on every notebook, quick profile
	TLUTILS_PROFILE=quick TLUTILS_PROGRESS=0 $(PY) -m pytest --nbval-lax -p no:cacheprovider notebooks/

smoke: setup  ## full profile at smoke scale, offline on tiny fake files (runs/smoke/): proves cells run, measures nothing
	$(PY) -m tlutils.course.smoke run runs/smoke/files

gpu-check: setup  ## on CUDA: images/s of chapter 02's full-profile training, fp32/bf16 x NCHW/channels_last
	$(PY) scripts/gpu_check.py

clean:  ## remove runs/ and caches (keeps data/)
	rm -rf runs student .pytest_cache .ruff_cache

clean-data:  ## remove generated domains, feature caches and checkpoints
	find data -mindepth 1 ! -name README.md -exec rm -rf {} +
