#!/usr/bin/env bash
# Round 3: every family as configured (cpu_devices included) against its PyTorch twin, three
# alternated rounds, then GPT mini against torch.compile. Alone on the machine.
cd "$(dirname "$0")/../.."
export LD_PRELOAD=$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4)
echo "$(date -u +%H:%M:%S) start at $(git rev-parse --short HEAD)"
.venv/bin/python scripts/bench_families.py --torch --rounds 3 --steps 8 --warmup 2 --repeats 3 \
  --out experiments/benchmarks/round3.jsonl
echo "$(date -u +%H:%M:%S) families done"
.venv/bin/python scripts/benchmark.py --config configs/gpt.py:mini --torch --torch_compile \
  --steps 10 --warmup 3 --repeats 3 --out= --record=experiments/benchmarks/round3_gpt_mini_compile.jsonl
echo "$(date -u +%H:%M:%S) done"
