#!/usr/bin/env bash
# What the project needs from the operating system (see Makefile `setup`), from Debian's packages
# where apt is available: the offline Fashion-MNIST data and tcmalloc, the allocator XLA:CPU runs
# ~1.3x faster with (dl10_jax/runtime.py). Each missing piece without apt gets one line saying how.
set -euo pipefail
root=${SETUP_SYSTEM_ROOT:-}  # Where / is, for the tests.
packages=()
[ -f "$root/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz" ] ||
  packages+=(dataset-fashion-mnist)
compgen -G "$root/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4" >/dev/null ||
  compgen -G "$root/usr/lib*/libtcmalloc_minimal.so.4" >/dev/null || packages+=(libtcmalloc-minimal4)
[ ${#packages[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  echo "setup: installed the Debian packages ${packages[*]}"
  exit 0
fi
for package in "${packages[@]}"; do
  case $package in
    dataset-fashion-mnist)
      echo "setup: Fashion-MNIST is not installed and apt-get (as root) is unavailable: install the" \
           "Debian/Ubuntu package dataset-fashion-mnist, or point DL10_DATA_DIR at a directory holding" \
           "train-images-idx3-ubyte.gz and the three other MNIST-format files" >&2 ;;
    libtcmalloc-minimal4)
      echo "setup: tcmalloc is not installed and apt-get (as root) is unavailable: install" \
           "libtcmalloc-minimal4 (Debian/Ubuntu) or gperftools-libs (Fedora) for ~1.3x faster CPU" \
           "training; everything runs without it" >&2 ;;
  esac
done
