#!/usr/bin/env bash
# Deletes a TPU VM, without a confirmation prompt: its billing stops; the runs' gs:// workdirs stay.
#
#   scripts/tpu/delete.sh --name NAME --zone ZONE [--queued] [--project PROJECT] [--dry-run]
#
#   --queued    it was created with create.sh --queued: delete the queued resource and, with
#               --force, its TPU VM (deleting the VM alone leaves the request in the queue)
#   --dry-run   print the gcloud command instead of running it
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

parse_args '--name --zone --project --queued --dry-run' "$@"
require NAME ZONE
gcloud_flags
if $QUEUED; then
  run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
fi
