# Red Mesh — developer entry points. Everything runs from .venv (created by `make install`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MPY_HEAP ?= 64k
# pytest workers: the HIL tests mostly wait on real-time protocol timers, so two run side by side
# on a 2-core machine (TEST_WORKERS=0 runs everything in one process)
TEST_WORKERS ?= 2

.PHONY: install test test-unit test-device test-hil lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

lint: install
	$(BIN)/ruff check fleet protocol firmware tests hil_tests bench
	$(BIN)/python tools/mpy_build.py build/mpy-lint
	$(BIN)/pyright -p pyrightconfig.json

bench: install
	$(BIN)/python -m bench.run

demo: install
	$(BIN)/fleet sim up --nodes 25 --gateways 2 --topology district --duration 70 --report-interval 31
	$(BIN)/fleet status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
