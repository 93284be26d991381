# Two commands are the whole set-up on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run   - create .venv, build the package with its compiled fast path, serve configs/default.toml
#   make test  - the same plus test tools, then ruff, mypy --strict and the suite under both implementations

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/default.toml
# Debian packages the build and the tests need (installed only when missing).
DEB_RUN  := gcc libssl-dev
DEB_TEST := $(DEB_RUN) chromium chromium-driver prometheus janus iproute2 coturn nodejs firefox-esr redis-server systemd
# Node clients of the integration tests (werift, puppeteer-core), pinned by their lockfile.
NODE_DIR   := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.ci-stamp
PYTEST_ARGS ?=
# Forwarding workers for `make run` (server.workers): every usable core by default;
# `make run WORKERS=1` is the single process. An SFU_SERVER_WORKERS in the environment wins.
WORKERS ?= auto

SOURCES := pyproject.toml setup.py $(wildcard sfu/_fastpath/*.pyx sfu/_fastpath/*.pxd bench/*.pyx)

.PHONY: run test lint typecheck pytest pytest-unit pytest-unit-compiled pytest-unit-python pytest-integration pytest-compiled pytest-python bench fuzz clean deb-run deb-test

run: $(VENV)/.run-stamp
	SFU_SERVER_WORKERS="$${SFU_SERVER_WORKERS:-$(WORKERS)}" $(PY) -m sfu serve --config $(CONFIG)

test: $(VENV)/.test-stamp lint typecheck pytest

deb-run:
	@DEB_PACKAGES="$(DEB_RUN)" sh .ci/ensure-debs.sh
deb-test:
	@DEB_PACKAGES="$(DEB_TEST)" sh .ci/ensure-debs.sh

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.run-stamp: $(VENV)/bin/python $(SOURCES) | deb-run
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.test-stamp: $(VENV)/bin/python $(SOURCES) | deb-test
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(VENV)/.run-stamp $@

# Debian's nodejs comes without npm (NodeSource's includes it): add Debian's npm only then.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json | deb-test
	@command -v npm >/dev/null 2>&1 || DEB_PACKAGES=npm sh .ci/ensure-debs.sh
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: $(VENV)/.test-stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.test-stamp
	$(VENV)/bin/mypy

# The whole suite twice: compiled kernels (and a test that fails if they did not load),
# then the pure-Python references. `make test` runs the socket-free unit tests of both
# implementations side by side (one process per core: they share nothing), then the
# integration tests of each in turn (browsers and servers need the machine to themselves).
# `make pytest-compiled` / `make pytest-python` run one implementation's whole suite.
UNIT_DIRS := tests/unit tests/fuzz
pytest: pytest-unit pytest-integration
pytest-unit: $(VENV)/.test-stamp $(NODE_STAMP)
	@$(MAKE) --no-print-directory -j2 --output-sync=target pytest-unit-compiled pytest-unit-python
pytest-unit-compiled:
	SFU_EXPECT_COMPILED=1 $(VENV)/bin/pytest -p no:cacheprovider $(UNIT_DIRS) $(PYTEST_ARGS)
pytest-unit-python:
	SFU_NO_EXTENSIONS=1 $(VENV)/bin/pytest -p no:cacheprovider $(UNIT_DIRS) $(PYTEST_ARGS)
pytest-integration: $(VENV)/.test-stamp $(NODE_STAMP) | pytest-unit
	SFU_EXPECT_COMPILED=1 $(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)
	SFU_NO_EXTENSIONS=1 $(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)
pytest-compiled: $(VENV)/.test-stamp $(NODE_STAMP)
	SFU_EXPECT_COMPILED=1 $(VENV)/bin/pytest $(PYTEST_ARGS)
pytest-python: $(VENV)/.test-stamp $(NODE_STAMP)
	SFU_NO_EXTENSIONS=1 $(VENV)/bin/pytest $(PYTEST_ARGS)

# Coverage-guided fuzzing (atheris) of the RTP parsers and the forwarder, longer than the
# suite's bounded run: what it finds that covers new code is added to tests/fuzz/corpus/.
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.test-stamp
	for target in parse forward; do \
		$(PY) tests/fuzz/fuzz_rtp.py $$target tests/fuzz/corpus/$$target \
			-max_total_time=$(FUZZ_SECONDS) -artifact_prefix=tests/fuzz/ || exit 1; \
	done

bench: $(VENV)/.test-stamp
	$(VENV)/bin/pytest bench --benchmark-enable --benchmark-only $(PYTEST_ARGS)

clean:
	rm -rf build $(VENV) $(NODE_DIR)/node_modules sfu/_fastpath/*.c sfu/_fastpath/*.so *.egg-info .pytest_cache .mypy_cache .ruff_cache
