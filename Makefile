# stratacache — every target sets up what it needs on a fresh Debian/Ubuntu machine.
#   make demo    the demo (throwaway redis-server, several worker processes)
#   make test    lint, type-check, promtool on the alert rules, the docs (strict), then the
#                suite through nox: compiled L1 on every supported Python, pure L1 once, the
#                packaging checks once (docs/development.md, "What make test runs")
#   make docs    the documentation site into site/ (mkdocs build --strict)
#   make bench   the benchmarks (pytest-benchmark), then benchmarks/results/report.md with
#                charts (`make bench-quick`: the report alone, under 3 minutes)
#   make chaos   the consistency checker under faults (issue 11), standalone and cluster
#   make fuzz    every atheris fuzz target for FUZZ_TIME seconds (default 60) each
#   make sync    regenerate src/stratacache/_sync/ from src/stratacache/_async/

PYTHON ?= python3
# This machine image sets PYTHONDONTWRITEBYTECODE: then every pytest run rewrites the
# assertions of all test modules again (~20 s of collection per run) and every spawned test
# interpreter compiles what it imports from source. The caches go to __pycache__
# (gitignored).
unexport PYTHONDONTWRITEBYTECODE
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-install
PYTEST := $(PY) -m pytest -p no:cacheprovider
NOX    := $(PY) -m nox
# pytest-xdist workers per suite run (each worker starts its own Redis servers; 0 = serial).
# Most of a serial run waits on Redis, processes and deadlines: two workers on two CPUs
# take the compiled run from 9 to 4 minutes (docs/development.md, "What make test runs")
PYTEST_WORKERS ?= 2

.PHONY: all demo test bench-quick test-compiled test-pure test-matrix lint rules docs bench chaos fuzz sync setup redis prometheus clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Editable install: builds the Cython extension into src/stratacache/ and the dev tools.
$(STAMP): $(PY) pyproject.toml setup.py $(wildcard cython_ext/*.pyx cython_ext/*.pxd)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# redis-server and redis-cli: the tests and the demo start their own throwaway servers;
# openssl makes the CA and certificates of the TLS tests (stratacache.testing).
# Debian's package would also start a system service on :6379; policy-rc.d stops that.
redis:
	@if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing redis-server and openssl with apt-get"; \
	  made_policy=0; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server openssl >/dev/null; \
	  status=$$?; \
	  if [ $$made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  exit $$status; \
	else \
	  echo "redis-server, redis-cli and openssl are needed: install Redis >= 7 built with TLS, and openssl (Debian/Ubuntu: sudo apt-get install redis-server openssl), or run as root so make can." >&2; \
	  exit 1; \
	fi

# promtool and prometheus: `make rules` checks and unit-tests deploy/prometheus/rules.yml and
# the end-to-end test runs a real server. Debian's package starts a system service on :9090
# too; policy-rc.d stops that, as for redis.
prometheus:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing prometheus (promtool) with apt-get"; \
	  made_policy=0; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  status=$$?; \
	  if [ $$made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  exit $$status; \
	else \
	  echo "promtool and prometheus are needed: install Prometheus >= 2.37 (Debian/Ubuntu: sudo apt-get install prometheus), or run as root so make can." >&2; \
	  exit 1; \
	fi

setup: $(STAMP) redis prometheus

lint: setup
	$(PY) -m ruff check src tests benchmarks scripts examples noxfile.py setup.py
	$(PY) -m mypy

# The suite in the dev .venv only (one Python): quicker than the matrix while developing.
test-compiled: setup
	@echo "=== pytest: compiled L1 (the extension must load) ==="
	STRATACACHE_REQUIRE_EXTENSIONS=1 $(PYTEST) -n $(PYTEST_WORKERS) tests

test-pure: setup
	@echo "=== pytest: pure-Python L1 (STRATACACHE_NO_EXTENSIONS=1) ==="
	STRATACACHE_NO_EXTENSIONS=1 $(PYTEST) -n $(PYTEST_WORKERS) tests

# noxfile.py: a session per supported Python (the pyproject classifiers), each with its own
# venv and compiled extension; the oldest also runs the pure suite and the packaging tests.
test-matrix: setup
	$(NOX) -- -n $(PYTEST_WORKERS) --dist loadgroup

# The documentation site; the configuration table and the API pages are generated from
# the code at build time (scripts/mkdocs_hooks.py), so a build also checks them.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

# The alert rules: syntax, then their unit tests (each alert fires and stays quiet).
rules: prometheus
	promtool check rules deploy/prometheus/rules.yml
	promtool test rules deploy/prometheus/rules_test.yml

test: lint rules docs test-matrix

demo: setup
	$(PY) examples/demo.py

# Ends with the one report: benchmarks/results/report.md and its PNG charts (report.py runs
# l1_report, cache_report, bus_report and scaling_report itself). `make bench-quick`: that
# report alone, with fewer repeats (under 3 minutes).
bench: setup
	taskset -c 1 $(PY) -m pytest -p no:cacheprovider benchmarks -o python_files='bench_*.py' --benchmark-only --benchmark-columns=min,median,mean,ops,rounds
	taskset -c 1 $(PY) benchmarks/tag_report.py
	taskset -c 1 $(PY) benchmarks/django_report.py
	taskset -c 1 $(PY) benchmarks/warm_report.py --items 30000 --rounds 5
	$(PY) benchmarks/outbox_report.py --fault pause
	$(PY) benchmarks/outbox_report.py --fault kill
	$(PY) benchmarks/report.py

bench-quick: setup
	$(PY) benchmarks/report.py --quick

# Longer runs than the suite's 9 s one (~6 minutes); not pinned: workers and Redis need both
# CPUs. Every run prints its report; the target fails if any run missed a goal.
chaos: setup
	@status=0; \
	for seed in 1 2 3; do \
	  $(PY) benchmarks/consistency_report.py --seconds 60 --seed $$seed --check || status=1; \
	done; \
	for seed in 1 2; do \
	  $(PY) benchmarks/consistency_report.py --cluster --seconds 60 --seed $$seed --check || status=1; \
	done; \
	$(PY) benchmarks/consistency_report.py --no-faults --seconds 30 --check || status=1; \
	exit $$status

# Coverage-guided fuzzing (atheris, from the dev extra) of the decoders that read untrusted
# bytes: tests/fuzz/targets.py. The committed corpus seeds each run; new inputs go to a temp
# folder and a crash is written to .fuzz/crash-* (then: keep it as tests/fuzz/corpus/<target>/
# regress-<name> and fix the decoder). `make test` replays the corpus without atheris.
FUZZ_TIME    ?= 60
FUZZ_TARGETS ?= codec codec_signed bus keys record

fuzz: $(STAMP)
	@mkdir -p .fuzz
	@for target in $(FUZZ_TARGETS); do \
	  echo "=== fuzz $$target ($(FUZZ_TIME) s) ==="; \
	  $(PY) tests/fuzz/run.py $$target -max_total_time=$(FUZZ_TIME) -artifact_prefix=.fuzz/ -print_final_stats=1 || exit 1; \
	done

sync: $(STAMP)
	$(PY) scripts/gen_sync.py

clean:
	rm -rf build dist site .nox src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
	find cython_ext -name '*.c' -delete
