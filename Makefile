# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
CONFIG ?= configs/cnn.py
WORKDIR ?= runs/$(basename $(notdir $(CONFIG)))
STAMP := .setup-done

.PHONY: setup run test bench clean

# Installs pinned requirements into the active Python, and the offline Fashion-MNIST data
# (Debian package) when apt is available. Idempotent: skipped when nothing changed.
setup: $(STAMP)
$(STAMP): requirements.txt requirements-dev.txt scripts/setup.sh
	bash scripts/setup.sh $(PYTHON)
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
