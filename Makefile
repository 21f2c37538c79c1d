# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
CONFIG ?= configs/cnn.py
WORKDIR ?= runs/$(basename $(notdir $(CONFIG)))
STAMP := .setup-done
# glibc returns every buffer over 32 MB to the OS and page-faults it back in on the next step;
# keeping freed memory in the heap makes CPU training ~10% faster (experiments/benchmarks.md).
MALLOC_TUNING := GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295

.PHONY: setup run test bench clean

# Installs pinned requirements into the active Python, and the offline Fashion-MNIST data
# (Debian package) when apt is available. Idempotent: skipped when nothing changed.
setup: $(STAMP)
$(STAMP): requirements.txt requirements-dev.txt scripts/setup.sh
	bash scripts/setup.sh $(PYTHON)
	@touch $(STAMP)

run: setup
	$(MALLOC_TUNING) $(PYTHON) -m dl10_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: setup
	$(PYTHON) -m pytest -n 2 -q tests

bench: setup
	$(PYTHON) -m pip install -q -r requirements-bench.txt
	$(PYTHON) scripts/benchmark.py --config $(CONFIG) --torch
	$(MALLOC_TUNING) $(PYTHON) scripts/benchmark.py --config $(CONFIG) --torch

clean:
	rm -rf $(STAMP) runs .pytest_cache
