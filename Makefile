# regproxy: `make run` runs it, `make test` tests it (both install what they need).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The OCI conformance program (v1.1.1), for `make conformance` and the rolling-restart test:
# next to the checkout, or where this machine keeps it, wherever the checkout was cloned to.
OCI_CONFORMANCE_BIN ?= $(firstword $(wildcard $(CURDIR)/../shared/conformance/conformance.test \
                                            /work/shared/conformance/conformance.test))
export OCI_CONFORMANCE_BIN
TEST_PACKAGES := docker-registry podman skopeo buildah docker.io:dockerd apache2-utils:htpasswd openssl slapd:slapd ldap-utils:ldapadd \
                 docker-compose redis-server:redis-server redis-sentinel:redis-sentinel haproxy:haproxy \
                 prometheus:promtool apache2:apache2 \
                 python3-venv:python3-venv

# pytest-xdist: processes running whole test files (a module's tests may share one server, and
# tests/e2e/test_replicas.py's run in order). One per CPU for the unit tier, which computes; two
# per CPU for the whole suite, whose end-to-end and subprocess tests mostly wait on the programs
# they start. Files go out in the order tests/conftest.py collects them, long e2e files first
# (xdist's default order, most tests first, sent the one-test e2e files out last).
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
XDIST := -n auto --dist loadfile
WORKERS ?= $(shell echo $$(( 2 * $$(nproc) )))

.PHONY: run test check venv lint typecheck clean bench fuzz soak conformance

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
	$(PY) -m ruff check proxy tests scripts compose bench devtools
	$(PY) -m ruff format --check proxy tests scripts compose bench devtools

typecheck: $(STAMP)
	$(PY) -m mypy

test:
	PATH="$$PATH:/usr/sbin:/sbin" scripts/install-deps.sh $(TEST_PACKAGES)
	$(MAKE) --no-print-directory lint typecheck
	$(PYTEST) -n $(WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The inner loop while editing: lint, type check and the pure unit tests (under a minute), the
# properties at 100 examples each (`make test` draws 300, `make fuzz` 20,000).
check: lint typecheck
	HYPOTHESIS_PROFILE=check $(PYTEST) $(XDIST) tests/unit $(PYTEST_ARGS)

# regproxy side by side with the registry, nginx and Apache, storms included, then the scale
# curves (bench/README.md). BENCH_ARGS=--quick for a run of about two minutes (SCALE_ARGS takes
# the scale curves' own flags). nginx and apache2 install to /usr/sbin, not always on PATH.
SCALE_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench: $(STAMP)
	PATH="$$PATH:/usr/sbin:/sbin" scripts/install-deps.sh nginx apache2 apache2-utils:htpasswd \
		docker-registry skopeo wrk curl openssl redis-server haproxy slapd:slapd ldap-utils:ldapadd
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q matplotlib
	test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q py-spy   # for bench.run --profile
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.scale $(SCALE_ARGS)

# The OCI distribution-spec conformance suite (v1.1.1) against a fresh registry directly, through
# regproxy with the default policy and through regproxy with a per-user namespace ACL; fails when
# a test that passes directly fails through the proxy. Needs the suite's binary:
# OCI_CONFORMANCE_BIN or ../shared/conformance/conformance.test. CONFORMANCE_ARGS="--keep".
conformance: $(STAMP)
	scripts/install-deps.sh docker-registry
	$(PY) -m scripts.conformance $(CONFORMANCE_ARGS)

# Concurrent pushes and pulls as several users through the real proxy, every digest checked,
# errors, RSS and open fds reported (bench/results/soak.json). SOAK_ARGS="--minutes 10".
soak: $(STAMP)
	PATH="$$PATH:/usr/sbin:/sbin" scripts/install-deps.sh docker-registry skopeo apache2-utils:htpasswd
	$(PY) -m scripts.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Property-based fuzzing of the pure code (every parser, the request classifier, the header
# reading, policy, throttle, catalog, events), far longer than in `make test`
# (HYPOTHESIS_PROFILE=long: 20,000 examples per property; many minutes).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(PYTEST) $(XDIST) tests/unit
