# Two entry points: `make demo` and `make test`. Both create .venv (Python 3.11)
# when missing and reinstall only when a dependency file changed. requirements/ holds
# the exact pins of the tested stack; pyproject.toml declares the same packages as ranges
# for `pip install st2chip`. Lava (nodeps.txt) needs --no-deps on Python 3.11 and is
# installed here as its own step (for a wheel: pip install 'st2chip[lava]', then the same step).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_DEPS := $(wildcard requirements/docs.txt)
DEPS := pyproject.toml setup.py requirements/base.txt requirements/nodeps.txt $(DOCS_DEPS)

.PHONY: demo test install clean-venv

demo: $(STAMP)
	$(BIN)/st2chip demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python $(DEPS)
	$(BIN)/pip install -r requirements/base.txt
	$(BIN)/pip install --no-deps --ignore-requires-python -r requirements/nodeps.txt
	$(if $(DOCS_DEPS),$(BIN)/pip install -r $(DOCS_DEPS))
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
