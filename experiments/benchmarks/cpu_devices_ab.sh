#!/usr/bin/env bash
# Alternated processes: each config of $CONFIGS with cpu_devices 0 and 2, $ROUNDS rounds (2); $TORCH=--torch
# times the PyTorch twin in each process. Appends to $REC (the record beside this file).
cd "$(dirname "$0")/../.."
export LD_PRELOAD=$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4)
REC=${REC:-experiments/benchmarks/cpu_devices_2026-12-07.jsonl}
for round in $(seq "${ROUNDS:-2}"); do
  for cfg in $CONFIGS; do
    for n in 0 2; do
      echo "$(date -u +%H:%M:%S) round $round $cfg cpu_devices=$n"
      .venv/bin/python scripts/benchmark.py --config $cfg --config.cpu_devices=$n $TORCH \
        --steps 8 --warmup 2 --repeats 3 --out '' --record $REC 2>&1 | grep -E "^jax|^torch|rror"
    done
  done
done
echo "$(date -u +%H:%M:%S) done"
