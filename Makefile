# make repro : set up .venv, restore data/ (verified against data.dvc), run the whole DVC pipeline
# make test  : set up .venv, restore data/ (one test rebuilds the smoke benchmark from it), lint, run the test suite
# make test-fast : the same without the end-to-end runs through DVC (the inner loop; CI runs make test)
# make smoke : the whole pipeline on a tiny profile, in a scratch copy (.smoke/)
# make paper : every table over three seeds (profiles/paper.yaml), as a DVC experiment
# make genimage SOURCE=/path/to/GenImage : the pipeline on the real GenImage archives
# make imaginet SOURCE=/path/to/ImagiNet : the pipeline on ImagiNet (its dataset root, or its split 7z)
# (both: ARGS="-S key=value ..." adds overrides)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup data repro test test-fast smoke paper genimage imaginet lab clean
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml scripts/install.py
	@{ command -v zip && { command -v 7zz || command -v 7z || command -v 7za; }; } >/dev/null \
	  || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] \
	  || apt-get install -y -q zip 7zip >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q zip 7zip >/dev/null; } \
	  || echo "note: Info-ZIP zip or 7-Zip not installed; the split-archive tests will be skipped (and say so)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/install.py -r requirements.txt --no-deps-requirement requirements-nodeps.txt -e .
	@touch $@

data: setup
	$(BIN)/synthdet data

repro: data
	$(BIN)/dvc repro
	$(BIN)/synthdet summary

test: data
	$(BIN)/ruff check src tests scripts
	$(BIN)/pytest -q -rs -n 2 --dist worksteal --durations=10

test-fast: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/pytest -q -rs -n 2 --dist worksteal -m "not slow"

smoke: data
	$(BIN)/synthdet smoke

paper: data
	$(BIN)/synthdet profile paper

genimage: data
	@test -n "$(SOURCE)" || { echo "usage: make genimage SOURCE=/path/to/GenImage (the folder of split zips)"; exit 2; }
	$(BIN)/synthdet profile genimage -S data.genimage.source=$(abspath $(SOURCE)) $(ARGS)

imaginet: data
	@test -n "$(SOURCE)" || { echo "usage: make imaginet SOURCE=/path/to/ImagiNet (the dataset root, or the folder of its split 7z) [ARGS=\"-S key=value\"]"; exit 2; }
	$(BIN)/synthdet profile imaginet -S data.imaginet.root=$(abspath $(SOURCE)) $(ARGS)

lab: setup
	$(BIN)/jupyter lab --allow-root notebooks

clean:
	rm -rf artifacts reports metrics plots .smoke
