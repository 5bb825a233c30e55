# Two entry points for a fresh clone (see README): `make demo` and `make test`.
# Each bootstraps .venv from pyproject.toml; nothing else is needed beforehand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= train-cpu,serve,dev

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/leaf-train demo

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check job serve tests bench
	$(VENV)/bin/ruff format --check job serve tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
