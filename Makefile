# The README's two commands are `make test` and `make bench`. Both install what is missing first.
SHELL := /bin/bash
BUILD_DIR ?= build
BUILD_TYPE ?= Release
PY = $(shell scripts/find_python.sh)
JOBS ?= 2

.PHONY: deps build test test-cpp test-python test-wheel bench bench-full clean

deps:
	@scripts/install_deps.sh

# Builds the op library once (CMake + Ninja) and places it inside the Python package (torch_rnn_ext/lib).
build: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DTRE_BUILD_TESTS=ON \
	  -DTRE_PYTHON_EXECUTABLE=$(PY) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  >/dev/null
	@cmake --build $(BUILD_DIR) -j $(JOBS)
	@# copy then rename: processes that have the old library mapped keep its inode and do not crash
	@mkdir -p torch_rnn_ext/lib && cp -f $(BUILD_DIR)/libtorch_rnn_ext.so torch_rnn_ext/lib/.libtorch_rnn_ext.so.tmp \
	  && mv -f torch_rnn_ext/lib/.libtorch_rnn_ext.so.tmp torch_rnn_ext/lib/libtorch_rnn_ext.so

test-cpp: build
	cd $(BUILD_DIR) && ctest --output-on-failure

test-python: build
	$(PY) -m pytest -q tests/python

test: build
	@rc=0; \
	(cd $(BUILD_DIR) && ctest --output-on-failure) || rc=1; \
	$(PY) -m pytest -q tests/python || rc=1; \
	exit $$rc

bench: build
	$(PY) benchmarks/bench.py

bench-full: build
	$(PY) benchmarks/bench.py --full

clean:
	rm -rf $(BUILD_DIR) torch_rnn_ext/lib dist *.egg-info
