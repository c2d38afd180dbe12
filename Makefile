# The README's two commands are `make test` and `make bench`. Both install what is missing first.
#
# Two torch environments: TORCH=venv (the default) is the project's .venv with the torch 2.x pinned in
# requirements.txt; TORCH=debian is Debian's python3-torch 1.13 (/usr/bin/python3). PY=/path/to/python
# builds, tests or benchmarks against any other interpreter's torch. Each torch gets its own build
# directory, build/torch-<version>, and library, torch_rnn_ext/lib/torch-<version>/.
SHELL := /bin/bash
BUILD_TYPE ?= Release
JOBS ?= 2
VENV_PY := .venv/bin/python
DEBIAN_PY := /usr/bin/python3
TORCH ?= venv
PY_venv := $(VENV_PY)
PY_debian := $(DEBIAN_PY)
PY ?= $(PY_$(TORCH))

.PHONY: deps build build-one test test-one test-sanitize bench bench-full clean

deps:
	@scripts/install_deps.sh

# Both environments' libraries (and C++ tests).
build: deps
	@scripts/build.sh $(VENV_PY) $(BUILD_TYPE) $(JOBS)
	@scripts/build.sh $(DEBIAN_PY) $(BUILD_TYPE) $(JOBS)

# One environment's (TORCH= or PY=).
build-one: deps
	@scripts/build.sh $(PY) $(BUILD_TYPE) $(JOBS)

# The whole suite against torch 2.x, then against 1.13; fails if either leg fails.
test: build
	@rc=0; \
	scripts/test_leg.sh $(VENV_PY) || rc=1; \
	scripts/test_leg.sh $(DEBIAN_PY) || rc=1; \
	exit $$rc

# One leg (TORCH= or PY=).
test-one: build-one
	@scripts/test_leg.sh $(PY)

# The library and the C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer, and the main test
# files with it (TORCH= or PY=; the 2.x leg by default): fails on any sanitizer report.
test-sanitize: deps
	@scripts/sanitize.sh $(PY) $(JOBS)

bench: build-one
	$(PY) benchmarks/bench.py

bench-full: build-one
	$(PY) benchmarks/bench.py --full

clean:
	rm -rf build torch_rnn_ext/lib dist *.egg-info
