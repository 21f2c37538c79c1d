# Two commands do everything on a fresh machine: `make run` and `make test`.
# Everything runs in the project's virtual environment $(VENV), made by `make setup` with the newest
# Python >= 3.12 found (PYTHON=... picks one), and with tcmalloc where it is installed.
VENV ?= .venv
CONFIG ?= configs/gpt.py
WORKDIR ?= runs/$(basename $(notdir $(CONFIG)))
# Expanded when a recipe runs, after `setup` has installed it: XLA:CPU is ~1.3x faster with it.
TCMALLOC = $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib*/libtcmalloc_minimal.so.4))
RUN = $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC) )$(VENV)/bin/python

.PHONY: setup setup-dev run test test-fast bench clean

# The virtual environment with the pinned requirements (again only when they change), then the
# system packages: the offline Fashion-MNIST data and tcmalloc, where apt is available. Training
# needs requirements.txt; the tests and benchmarks also requirements-dev.txt (PyTorch, Optuna).
setup: $(VENV)/.runtime-done
	@bash scripts/setup_system.sh
setup-dev: $(VENV)/.dev-done
	@bash scripts/setup_system.sh
$(VENV)/.runtime-done: requirements.txt scripts/setup_env.sh
	@VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup_env.sh requirements.txt
	@touch $@
$(VENV)/.dev-done: $(VENV)/.runtime-done requirements-dev.txt requirements-sweep.txt
	@VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup_env.sh requirements-dev.txt
	@touch $@

run: setup
	$(RUN) -m dl10_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: setup-dev
	$(RUN) -m pytest -n 2 --dist worksteal -q tests

# Under 2 minutes on 2 cores: every family's model and objective tests, without the tests marked
# `@pytest.mark.slow` (real processes, sweeps, SIGKILL and resume, smoke runs through main).
# `make test` runs everything.
test-fast: setup-dev
	$(RUN) -m pytest -n 2 --dist worksteal -q -m "not slow" tests

bench: setup-dev
	$(RUN) scripts/benchmark.py --config $(CONFIG) --torch

clean:
	rm -rf $(VENV)/.runtime-done $(VENV)/.dev-done runs .pytest_cache
