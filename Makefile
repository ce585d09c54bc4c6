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

# The experiments of bench/experiments/ in full (real clusters under the WAN emulator, one
# result JSON per run and a report per experiment in results/NAME/). Long: CI runs none of
# them; the committed quick forms are in docs/results/.
.PHONY: bench-modes bench-rtt-sweep bench-region-count bench-remote-writes bench-open-loop bench-sweeps

bench-modes: $(STAMP)
	$(VENV)/bin/geostore bench run-experiment bench/experiments/modes-three-continents.toml --out results/modes-three-continents
	$(VENV)/bin/geostore bench report results/modes-three-continents/*.json --out results/modes-three-continents/report

bench-rtt-sweep: $(STAMP)
	$(VENV)/bin/geostore bench run-experiment bench/experiments/rtt-sweep.toml --out results/rtt-sweep
	$(VENV)/bin/geostore bench report results/rtt-sweep/*.json --out results/rtt-sweep/report

bench-region-count: $(STAMP)
	$(VENV)/bin/geostore bench run-experiment bench/experiments/region-count.toml --out results/region-count
	$(VENV)/bin/geostore bench report results/region-count/*.json --out results/region-count/report

bench-remote-writes: $(STAMP)
	$(VENV)/bin/geostore bench run-experiment bench/experiments/remote-writes.toml --out results/remote-writes
	$(VENV)/bin/geostore bench report results/remote-writes/*.json --out results/remote-writes/report

bench-open-loop: $(STAMP)
	$(VENV)/bin/geostore bench run-experiment bench/experiments/open-loop-weather.toml --out results/open-loop-weather
	$(VENV)/bin/geostore bench report results/open-loop-weather/*.json --out results/open-loop-weather/report

bench-sweeps: bench-modes bench-rtt-sweep bench-region-count bench-remote-writes bench-open-loop

# Planned moves and region failovers on three-continents under the WAN emulator (bench/failover.py:
# pause per phase, RPO beside the replication lag at the loss). A few minutes; CI runs none of it.
.PHONY: bench-failover

bench-failover: $(STAMP)
	mkdir -p results
	$(PY) -m bench.failover --json-out results/failover.json
