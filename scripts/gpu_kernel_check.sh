#!/usr/bin/env bash
# The kernel checks for a GPU machine, in one go: the compiled-kernel tests (`-m gpu`), then the
# attention and LSTM benchmarks at a reduced grid. Logs go to $OUT (default /tmp/gpu_kernel_check).
# Each step has its own time limit so that one hang cannot eat the others' time.
set -u
out=${OUT:-/tmp/gpu_kernel_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then  # Packages the GPU image lacks (ml-collections), carried as wheels.
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.log"
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
  "optax", optax.__version__, jax.devices())' 2>&1 | tee -a "$out/device.log"
timeout "${TEST_S:-180}" python3 -m pytest -q -m gpu -p no:cacheprovider -rA \
  tests/test_flash_attention.py tests/test_lstm_kernel.py 2>&1 | tee "$out/tests.log"
timeout "${ATTENTION_S:-200}" python3 scripts/bench_kernels.py --kernel attention \
  --seq_lens "${SEQ_LENS:-1024,4096}" --iters 10 --calls_jsonl "$out/calls.jsonl" 2>&1 | tee "$out/attention.log"
timeout "${LSTM_S:-150}" python3 scripts/bench_kernels.py --kernel lstm \
  --lstm_seq_lens "${LSTM_SEQ_LENS:-256,1024}" --iters 10 --calls_jsonl "$out/calls.jsonl" 2>&1 | tee "$out/lstm.log"
