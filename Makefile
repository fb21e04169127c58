# The project's front door: every routine task is one `make` target.
# PYTHON (the distribution's python3) only makes the project's virtual environment, $(VENV)
# (tools/makevenv.py: once, then instant while pyproject.toml holds); everything runs in it, so
# nothing is pip-installed outside a venv (PEP 668). PY=python3 uses an interpreter as it is.
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
VENV_READY = $(if $(filter $(VENV)/bin/python,$(PY)),venv)
DEMO_ROOT ?= $(CURDIR)/demo-root
# Packages: every architecture by default; e.g. `make deb DEB_ARCHES=amd64` for one.
DEB_ARCHES ?= amd64 arm64 armhf
RPM_ARCHES ?= x86_64 aarch64
PKGBUILD = $(PYTHON) packaging/pkgbuild.py

.PHONY: help venv install test lint typecheck unit demo bench fleet-sim origin-tls clean deb rpm wheels lock package-lint stress

help:
	@echo "make demo       converge a sandbox root from a local mirror; print plan, result, detect, status"
	@echo "make test       lint, type-check and run the test suite (what CI runs)"
	@echo "make bench      agentd against Ansible, start-up, downloads, the daemon at rest: bench/RESULTS.md (~25 min; BENCH_QUICK=1: ~5 min)"
	@echo "make stress     the long runs outside make test: kill -9 at every step, 10,000 daemon cycles, full fuzzing"
	@echo "make fleet-sim  N real daemons against one nginx origin: bench/FLEET.md (FLEET_NODES=50)"
	@echo "make origin-tls server CPU per poll: nginx over HTTP and TLS, the registry: bench/ORIGIN_TLS.md (~2 min)"
	@echo "make venv       the project's virtual environment $(VENV) (every target makes it first)"
	@echo "make deb        .deb packages for $(DEB_ARCHES) in dist/ (wheels from PyPI, cached in build/wheels)"
	@echo "make rpm        .rpm packages for $(RPM_ARCHES) in dist/"
	@echo "make package-lint  lintian on dist/*.deb, rpmlint on dist/*.rpm"
	@echo "make e2e        the packages in booted Debian hosts (root; E2E_HOSTS=\"$(E2E_HOSTS)\")"
	@echo "make e2e-wasm   the real Wasm stack: Debian 13's WasmEdge, crun and containerd (root)"
	@echo "make lock       re-pin packaging/wheels.lock.json after editing a version in it (network)"

# Says which Debian package is missing (python3-venv, gcc, python3-dev...) when one is.
venv:
	@command -v $(PYTHON) >/dev/null || { echo "make: no $(PYTHON): apt-get install python3" >&2; exit 69; }
	@$(PYTHON) tools/makevenv.py $(VENV)

install: venv

lint: $(VENV_READY)
	$(PY) -m ruff check agentd tests bench tools packaging
	$(PY) -m ruff format --check agentd tests bench tools packaging

typecheck: $(VENV_READY)
	$(PY) -m mypy

# PYTEST_ARGS: e.g. `make unit PYTEST_ARGS=tests/test_cli.py`.
PYTEST_ARGS ?=
unit: $(VENV_READY)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

# The long runs kept out of `make test` (pytest -m stress), e.g. SIGKILL at every step of an apply.
stress: $(VENV_READY)
	$(PY) -m pytest -m stress -q

demo: $(VENV_READY)
	$(PY) tools/demo.py --root $(DEMO_ROOT)

# The benchmarks run in a virtualenv of their own (ansible-core and pyinstrument from the [bench]
# extras), so agentd and Ansible run on the same plain interpreter, without whatever this machine's
# site-packages preload. bench/all.py runs each benchmark and writes bench/RESULTS.md; with
# BENCH_QUICK=1, a short run whose RESULTS.md goes to build/bench-quick/ instead.
BENCH_VENV ?= build/bench-venv
bench:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q '.[bench]'
	$(BENCH_VENV)/bin/python bench/all.py $(if $(filter 1,$(BENCH_QUICK)),--quick)

# N daemons (each its own sandbox root and machine-id) pulling from one nginx: bench/FLEET.md.
FLEET_NODES ?= 50
fleet-sim: $(VENV_READY)
	$(PY) bench/fleet_sim.py -n $(FLEET_NODES)

# One origin's CPU per unchanged poll: nginx plain and TLS (full handshake, resumed, keep-alive)
# and Debian's docker-registry, plain and TLS: bench/ORIGIN_TLS.md and bench/origin_tls.json.
origin-tls: $(VENV_READY)
	$(PY) bench/origin_tls.py

# The packages (packaging/README.md): built from the pinned wheels, nothing compiled, so this
# amd64 machine builds every architecture with Debian's dpkg-dev, debhelper and rpm.
deb:
	$(PKGBUILD) deb $(addprefix --arch ,$(DEB_ARCHES))

rpm:
	$(PKGBUILD) rpm $(addprefix --arch ,$(RPM_ARCHES))

wheels:
	$(PKGBUILD) fetch

lock:
	$(PKGBUILD) lock

package-lint:
	lintian --fail-on error,warning dist/*.deb
	rpmlint -c packaging/rpm/rpmlint.toml dist/*.rpm

# End to end (packaging/README.md, "End-to-end runs"): the packages in booted Debian hosts
# (systemd-nspawn; root). E2E_HOSTS: bookworm-amd64 (CI's), bullseye-amd64, trixie-amd64,
# bookworm-arm64 (qemu-user), bookworm-rpm. Debootstrapped trees are cached in build/e2e-cache/;
# E2E_FLAGS: --keep (keep each host's tree), --refresh (debootstrap again).
E2E_HOSTS ?= bookworm-amd64
E2E_FLAGS ?=
.PHONY: e2e
e2e: $(VENV_READY)
	$(PY) -m tests.e2e $(E2E_FLAGS) $(E2E_HOSTS)

# The real Wasm stack (packaging/README.md, "The real Wasm host"): Debian 13's WasmEdge, crun and
# containerd in a cached tree (root): agentd converges it from real bytes and meets real faults,
# the Hello Wasm pod runs through containerd's CRI, and --root over that tree gives real answers.
.PHONY: e2e-wasm
e2e-wasm: $(VENV_READY)
	$(PY) -m tests.e2e.wasm_converge
	$(PY) -m tests.e2e.cri
	$(PY) -m tests.e2e.root_tree

clean:
	rm -rf demo-root demo-mirror build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
