#!/usr/bin/env bash
# Ships this checkout to every worker of a TPU VM and installs it there, the same on each host.
#
#   scripts/tpu/setup.sh --name NAME --zone ZONE [--project PROJECT] [--python PYTHON] [--dry-run]
#
# 1. Here: `git archive HEAD` of this checkout into a tarball (committed files only: commit or
#    stash your edits first; setup.sh warns when the work tree differs from HEAD).
# 2. `gcloud compute tpus tpu-vm scp` of the tarball to every worker (--worker=all).
# 3. On every worker at once, over ssh: unpack it into ~/dl10_jax (replacing the old copy); make
#    the virtualenv ~/dl10_venv, once, with PYTHON (default python3.12, which jax 0.12 needs; the
#    TPU images come with Ubuntu 22.04's python3.10, so apt installs PYTHON-venv from the deadsnakes
#    PPA where Ubuntu has none); pip install -r requirements.txt plus "jax[tpu]" at
#    the version requirements.txt pins for jax (jax, jaxlib and libtpu must be the same on every
#    host: a mismatch fails or hangs at the first collective); install the Fashion-MNIST package
#    (scripts/setup_system.sh, only the image configs need it); print each host's versions.
#
# Run it again after every commit you want to train; the virtualenv is kept, so that is quick.
# --dry-run prints the commands instead of running them. Next: scripts/tpu/train.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

parse_args '--name --zone --project --python --dry-run' "$@"
require NAME ZONE
gcloud_flags
jax=$(jax_version)
tarball=${TMPDIR:-/tmp}/dl10_jax-$NAME.tar.gz

if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  echo "warning: uncommitted changes in $ROOT are not shipped (git archive HEAD)" >&2
fi

steps=(
  "rm -rf $REMOTE_CODE"
  "mkdir $REMOTE_CODE"
  "tar -xzf $REMOTE_CODE.tar.gz -C $REMOTE_CODE"
  "rm $REMOTE_CODE.tar.gz"
  "{ [ -x $REMOTE_VENV/bin/python ] || { sudo apt-get update -qq && { apt-cache show $PYTHON-venv >/dev/null 2>&1 || sudo add-apt-repository -y ppa:deadsnakes/ppa; } && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PYTHON-venv && $PYTHON -m venv $REMOTE_VENV; }; }"
  "$REMOTE_VENV/bin/pip install -q --upgrade pip"
  "$REMOTE_VENV/bin/pip install -q -r $REMOTE_CODE/requirements.txt \"jax[tpu]==$jax\""
  "{ (cd $REMOTE_CODE && sudo bash scripts/setup_system.sh) || echo \"\$(hostname): no Fashion-MNIST (only the image configs need it)\"; }"
  "echo \"\$(hostname):\" \$($REMOTE_VENV/bin/pip freeze | grep -E \"^(jax|jaxlib|libtpu)==\")"
)
remote=$(printf ' && %s' "${steps[@]}")

run git -C "$ROOT" archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$REMOTE_CODE.tar.gz" "${GCLOUD_FLAGS[@]}" \
  --worker=all
ssh_workers all "${remote# && }"
run rm -f "$tarball"
