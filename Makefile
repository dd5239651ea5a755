# Two entry points: `make demo` and `make test`. Both create .venv (Python 3.11)
# when missing and reinstall only when a dependency file changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPS := pyproject.toml requirements/base.txt requirements/nodeps.txt

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
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
