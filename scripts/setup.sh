#!/usr/bin/env bash
# Installs what the project needs into the active Python environment (see Makefile `setup`).
set -euo pipefail
python=${1:-python3}
"$python" -m pip install -q -r requirements-dev.txt

data=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ -f "$data" ]; then
  echo "Fashion-MNIST: found in /usr/share/datasets/fashion-mnist"
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  echo "Fashion-MNIST: installed the Debian package dataset-fashion-mnist"
else
  echo "Fashion-MNIST: not installed and apt-get (as root) is unavailable here." >&2
  echo "  Install the Debian/Ubuntu package dataset-fashion-mnist, or point DL10_DATA_DIR at a" >&2
  echo "  directory holding train-images-idx3-ubyte.gz and the three other MNIST-format files." >&2
fi
