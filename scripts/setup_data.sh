#!/usr/bin/env bash
# The offline default data (see Makefile `setup`): Fashion-MNIST from Debian's dataset-fashion-mnist.
set -euo pipefail
data=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ -f "$data" ]; then
  exit 0
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  echo "Fashion-MNIST: installed the Debian package dataset-fashion-mnist"
else
  echo "Fashion-MNIST: not installed and apt-get (as root) is unavailable here." >&2
  echo "  Install the Debian/Ubuntu package dataset-fashion-mnist, or point DL10_DATA_DIR at a" >&2
  echo "  directory holding train-images-idx3-ubyte.gz and the three other MNIST-format files." >&2
fi
