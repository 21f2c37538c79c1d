#!/usr/bin/env bash
# Two processes of 4 fake CPU devices each train configs/gpt.py:smoke for 6 steps, as
# tests/test_multiprocess.py does; each pair gets 90 s (the run takes ~25 s) and is killed after.
# Usage: two_processes.sh VENV... (alternated, ROUNDS rounds); prints one line per pair.
set -u
cd "$(dirname "$0")/../../.."
for round in $(seq "${ROUNDS:-3}"); do
  for venv in "$@"; do
    port=$((46000 + RANDOM % 1000)); dir=$(mktemp -d)
    start=$(date +%s)
    for i in 0 1; do
      XLA_FLAGS=--xla_force_host_platform_device_count=4 timeout -s KILL 90 "$venv/bin/python" \
        -m dl10_jax.main --config configs/gpt.py:smoke --workdir "$dir/run" \
        --coordinator_address=127.0.0.1:$port --num_processes=2 --process_id=$i \
        --config.num_train_steps=6 --config.log_every_steps=1 --config.eval_every_steps=6 \
        --config.checkpoint_every_steps=3 --config.progress_bar=False >"$dir/out$i" 2>&1 &
    done
    wait -n; rc0=$?; wait -n; rc1=$?
    jaxv=$("$venv/bin/python" -c 'import jax; print(jax.__version__)')
    echo "round $round jax $jaxv: exit codes $rc0 $rc1 after $(( $(date +%s) - start )) s;" \
      "last line: $(grep -v '^[IW][0-9]' "$dir/out0" | tail -1 | cut -c1-60)"
    rm -rf "$dir"
  done
done
