#!/usr/bin/env bash
# The project's Python environment (see Makefile `setup`): a virtual environment in $VENV (default
# .venv) on the newest Python >= 3.12 found here, with the pinned requirements file given
# (default requirements.txt). jax 0.12, the pinned runtime, has no release for Python 3.11.
#   scripts/setup_env.sh [requirements-dev.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}

usable() {  # A Python interpreter that runs and is 3.12 or newer.
  "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null
}

find_python() {
  local candidates=()
  [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
  candidates+=(python3.14 python3.13 python3.12)
  # pyenv installs versions that its shims hide unless selected: the newest first.
  if command -v pyenv >/dev/null; then
    while read -r python; do
      candidates+=("$python")
    done < <(printf '%s\n' "$(pyenv root)"/versions/3.*/bin/python3 | sort -rV)
  fi
  candidates+=(python3)
  for python in "${candidates[@]}"; do
    if usable "$python"; then
      echo "$python"
      return 0
    fi
  done
  return 1
}

if [ ! -x "$venv/bin/python" ] || ! usable "$venv/bin/python"; then
  if ! python=$(find_python); then
    echo "setup: dl10_jax needs Python 3.12 or newer (jax 0.12 has no release for older ones); install" \
         "python3.12 or newer with venv (e.g. apt-get install python3.12-venv), or run" \
         "make PYTHON=/path/to/python3.12" >&2
    exit 1
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  echo "setup: created $venv with $("$venv/bin/python" --version)"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "${1:-requirements.txt}"
