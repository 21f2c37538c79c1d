# Two commands do everything on a fresh machine: `make run` and `make test`.
# Everything runs in the project's virtual environment $(VENV), made by `make setup` with the newest
# Python >= 3.12 found (PYTHON=... picks one), and with tcmalloc where it is installed.
VENV ?= .venv
CONFIG ?= configs/gpt.py
WORKDIR ?= runs/$(basename $(notdir $(CONFIG)))
STAMP := $(VENV)/.setup-done
# Expanded when a recipe runs, after `setup` has installed it: XLA:CPU is ~1.3x faster with it.
TCMALLOC = $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib*/libtcmalloc_minimal.so.4))
RUN = $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC) )$(VENV)/bin/python

.PHONY: setup run test bench clean

# The virtual environment with the pinned requirements-dev.txt (again only when they change), then
# the system packages: the offline Fashion-MNIST data and tcmalloc, where apt is available.
setup: $(STAMP)
	@bash scripts/setup_system.sh
$(STAMP): requirements.txt requirements-dev.txt requirements-sweep.txt scripts/setup_env.sh
	@VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup_env.sh
	@touch $(STAMP)

run: setup
	$(RUN) -m dl10_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: setup
	$(RUN) -m pytest -n 2 -q tests

bench: setup
	$(RUN) scripts/benchmark.py --config $(CONFIG) --torch

clean:
	rm -rf $(STAMP) runs .pytest_cache
