#!/usr/bin/env bash
# Creates a Cloud TPU VM, one host or a pod slice of several (its workers are numbered 0, 1, ...).
#
#   scripts/tpu/create.sh --name NAME --zone ZONE --accelerator-type TYPE [--version VERSION]
#                         [--project PROJECT] [--queued] [--spot] [--dry-run] [-- GCLOUD_FLAGS...]
#
#   --accelerator-type  v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v5p-16, v6e-8, ...
#   --version           the runtime; default from the type: v4 tpu-ubuntu2204-base,
#                       v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   --queued            request it as a queued resource (node id = NAME): the way to get large
#                       or spot slices; it waits in a queue, so poll
#                       `gcloud compute tpus queued-resources describe NAME --zone ZONE`
#                       until its state is ACTIVE before setup.sh. Delete it with delete.sh --queued.
#   --spot              a Spot TPU: cheaper, may be preempted at any time
#   -- GCLOUD_FLAGS     passed on to gcloud, e.g. -- --reserved --network=NET
#   --dry-run           print the gcloud command instead of running it
#
# NAME, ZONE and PROJECT may come from TPU_NAME, TPU_ZONE and TPU_PROJECT instead.
# The workers' service account must be able to write the gs:// bucket of the runs' workdirs.
# Next: scripts/tpu/setup.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

parse_args '--name --zone --project --accelerator-type --version --queued --spot --dry-run --' "$@"
require NAME ZONE ACCELERATOR_TYPE
VERSION=${VERSION:-$(default_version "$ACCELERATOR_TYPE")}
gcloud_flags
options=("--accelerator-type=$ACCELERATOR_TYPE")
if $QUEUED; then
  options+=("--runtime-version=$VERSION" "--node-id=$NAME")
else
  options+=("--version=$VERSION")
fi
if $SPOT; then options+=(--spot); fi

if $QUEUED; then
  run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_FLAGS[@]}" "${options[@]}" \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
  $DRY_RUN || echo "queued; when 'gcloud compute tpus queued-resources describe $NAME" \
    "--zone=$ZONE' says ACTIVE, run scripts/tpu/setup.sh" >&2
else
  run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" "${options[@]}" \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
fi
