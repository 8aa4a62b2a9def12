# Two entry points (see README):  make run   and   make test
# Both create .venv in the repository on first use and are safe to rerun.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
CORES ?= all

.PHONY: setup run test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	snakemake --cores $(CORES) results/vqa_eval.json

test: setup
	$(PY) -m pytest -q -ra

clean:
	rm -rf results .snakemake
