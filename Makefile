# Red Mesh — developer entry points. Everything runs from .venv (created by `make install`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MPY_HEAP ?= 64k
# pytest workers: the HIL tests mostly wait on real-time protocol timers (their MicroPython nodes
# sleep), so three run side by side on a 2-core machine: the whole suite kept the CPU 32 % busy
# and took 940 s, against 1,330 s with two workers (TEST_WORKERS=0 runs everything in one process)
TEST_WORKERS ?= 3

.PHONY: install test test-unit test-device test-hil lint bench demo clean mp32

# A 32-bit MicroPython unix port (an ESP32's object layout) for the virtual rig and the device
# tests, built into build/mp32 from a MicroPython source tarball (MP32_TARBALL=...; default: the
# trimmed v1.28.0 kit beside the project). Needs gcc-multilib; without it (or the tarball) the
# rig falls back to the 64-bit PyPI interpreter with heaps scaled, and says so.
# fleet/sim/interp.py finds the build; REDMESH_MICROPYTHON=path overrides.
MP32_TARBALL ?= $(firstword $(wildcard ../shared/micropython32/micropython-*-unix-src.tar.gz) \
	$(wildcard /work/shared/micropython32/micropython-*-unix-src.tar.gz))

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install mp32
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal --durations=25

lint: install
	$(BIN)/ruff check fleet protocol firmware tests hil_tests bench
	$(BIN)/python tools/mpy_build.py build/mpy-lint
	$(BIN)/pyright -p pyrightconfig.json

bench: install
	$(BIN)/python -m bench.run

demo: install
	$(BIN)/fleet sim up --nodes 25 --gateways 2 --topology district --duration 70 --report-interval 31
	$(BIN)/fleet status

mp32:
	@tools/build_mp32.sh "$(MP32_TARBALL)" build/mp32 \
	  || echo "no 32-bit MicroPython (see above): the rig and device tests use the 64-bit interpreter"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
