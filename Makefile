# Every target installs what it needs into .venv first, so each is one command on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit sim bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geostore demo

lint: $(STAMP)
	$(VENV)/bin/ruff check geostore netem bench tests
	$(VENV)/bin/ruff format --check geostore netem bench tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck unit

sim: $(STAMP)
	$(VENV)/bin/geostore sim --seeds 20000
	$(VENV)/bin/geostore sim --geo --seeds 5000
	$(VENV)/bin/geostore sim --failover --seeds 1000

# The benchmarks (quick forms; each prints a table and one JSON line into results/).
bench: $(STAMP)
	mkdir -p results
	$(PY) -m bench.storage --quick --json-out results/storage.json
	$(PY) -m bench.raft_core --json-out results/raft_core.json
	$(PY) -m bench.codec --quick --json-out results/codec.json
	$(PY) -m bench.netem --quick --json-out results/netem.json
	$(PY) -m bench.geo_core --json-out results/geo_core.json
	$(PY) -m bench.region --quick --json-out results/region.json
	$(VENV)/bin/geostore bench report results/*.json --out results/report

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
