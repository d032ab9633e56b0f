# regproxy: `make run` runs it, `make test` tests it (both install what they need).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_PACKAGES := docker-registry podman skopeo apache2-utils:htpasswd openssl \
                 python3-venv:python3-venv

.PHONY: run test venv lint typecheck clean

$(STAMP): pyproject.toml
	scripts/install-deps.sh python3-venv:python3-venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

run: $(STAMP)
	scripts/install-deps.sh openssl
	$(PY) scripts/run.py

lint: $(STAMP)
	$(PY) -m ruff check proxy tests scripts
	$(PY) -m ruff format --check proxy tests scripts

typecheck: $(STAMP)
	$(PY) -m mypy

test:
	scripts/install-deps.sh $(TEST_PACKAGES)
	$(MAKE) --no-print-directory lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
