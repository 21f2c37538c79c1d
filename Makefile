# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
CONFIG ?= configs/gpt.py
WORKDIR ?= runs/$(basename $(notdir $(CONFIG)))
STAMP := .setup-done

.PHONY: setup run test bench clean

# Installs pinned requirements into the active Python (again only when they change), then checks
# for the offline Fashion-MNIST data and installs its Debian package where apt is available.
setup: $(STAMP)
	@bash scripts/setup_data.sh
$(STAMP): requirements.txt requirements-dev.txt requirements-sweep.txt
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	@touch $(STAMP)

run: setup
	$(PYTHON) -m dl10_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: setup
	$(PYTHON) -m pytest -n 2 -q tests

bench: setup
	$(PYTHON) -m pip install -q -r requirements-bench.txt
	$(PYTHON) scripts/benchmark.py --config $(CONFIG) --torch

clean:
	rm -rf $(STAMP) runs .pytest_cache
