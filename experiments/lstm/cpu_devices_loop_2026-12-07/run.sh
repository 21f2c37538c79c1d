#!/usr/bin/env bash
# The training loop itself (python -m dl10_jax.main) with cpu_devices 0 and 2, alternated, two
# rounds: 300 steps of configs/lstm.py each, no eval or checkpoint inside the window. Each run's
# config.json and metrics.jsonl are kept in <cpu_devices>_<round>/ beside this file.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."
export LD_PRELOAD=$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4)
for round in 1 2; do
  for n in 0 2; do
    work=$(mktemp -d)
    echo "$(date -u +%H:%M:%S) round $round cpu_devices=$n"
    .venv/bin/python -m dl10_jax.main --config configs/lstm.py --workdir "$work" \
      --config.cpu_devices=$n --config.num_train_steps=300 --config.eval_every_steps=1000 \
      --config.checkpoint_every_steps=1000 --config.log_every_steps=50 \
      --config.progress_bar=False > /dev/null 2>&1
    mkdir -p "$here/${n}_$round"
    cp "$work/config.json" "$work/metrics.jsonl" "$here/${n}_$round/"
    rm -rf "$work"
  done
done
echo "$(date -u +%H:%M:%S) done"
