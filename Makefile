# her2ops: `make demo` and `make test` each bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Installs come from the lock files (pinned versions + sha256 hashes), never from a fresh resolve:
# requirements.lock = runtime (the Docker image), requirements-dev.lock = runtime + dev tools.
LOCKS  := requirements.lock requirements-dev.lock
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) | sha256sum | cut -c1-12)
# `make lock` keeps existing pins where they still satisfy pyproject.toml; `make lock UPGRADE=1`
# moves every pin to the newest allowed release.
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	$(if $(UPGRADE),--upgrade)

.PHONY: demo test lint typecheck bench clean-demo lock check-lock

$(STAMP): pyproject.toml $(LOCKS)
	$(PYTHON) .ci/check_lock.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Re-resolve the lock files from pyproject.toml (after changing a dependency), then commit them.
lock:
	test -x $(VENV)/bin/pip-compile || { test -x $(PY) || $(PYTHON) -m venv $(VENV); \
		$(PY) -m pip install -q --require-hashes -r requirements-dev.lock; }
	$(COMPILE) --build-deps-for wheel -o requirements.lock pyproject.toml
	$(COMPILE) --extra dev --build-deps-for editable -c requirements.lock \
		-o requirements-dev.lock pyproject.toml
	$(PYTHON) .ci/check_lock.py --stamp

check-lock:
	$(PYTHON) .ci/check_lock.py

demo: $(STAMP)
	$(PY) -m her2ops.cli.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_curation.py
	$(PY) benchmarks/bench_pss.py
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_study.py
	$(PY) benchmarks/bench_scoring.py

clean-demo:
	rm -rf her2ops-data/demo
