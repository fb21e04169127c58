# The project's front door: every routine task is one `make` target.
PYTHON ?= python3
DEMO_ROOT ?= $(CURDIR)/demo-root

.PHONY: help install test lint typecheck unit demo bench clean

help:
	@echo "make demo       converge a sandbox root from a local mirror; print plan, result, detect, status"
	@echo "make test       lint, type-check and run the test suite (what CI runs)"
	@echo "make bench      benchmarks (no-op apply wall time; the daemon's RSS, CPU per cycle, edit latency)"
	@echo "make install    pip install the project with its dev tools"

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

lint:
	$(PYTHON) -m ruff check agentd tests bench tools
	$(PYTHON) -m ruff format --check agentd tests bench tools

typecheck:
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest -q

test: lint typecheck unit

demo:
	@$(PYTHON) -c 'import agentd' 2>/dev/null || $(PYTHON) -m pip install -q -e .
	@$(PYTHON) -c 'import wasmtime' 2>/dev/null || $(PYTHON) -m pip install -q wasmtime
	$(PYTHON) tools/demo.py --root $(DEMO_ROOT)

bench:
	$(PYTHON) bench/noop_apply.py
	$(PYTHON) bench/daemon_idle.py

clean:
	rm -rf demo-root demo-mirror build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
