#!/usr/bin/env bash
# Streams the log of a background train.sh run (~/dl10_train.log), each line prefixed with the
# worker's host name, until ^C (which ends only the streaming, not the run).
#
#   scripts/tpu/logs.sh --name NAME --zone ZONE [--worker 0|1|...|all] [--project PROJECT] [--dry-run]
#
#   --worker    whose log: 0 (default; process 0 also writes WORKDIR/metrics.jsonl) or all
#   --dry-run   print the gcloud command instead of running it
#
# Metrics and TensorBoard files are in the run's gs:// workdir: `tensorboard --logdir gs://BUCKET/RUN`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

parse_args '--name --zone --project --worker --dry-run' "$@"
require NAME ZONE
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a worker number or all (got '$WORKER')"
gcloud_flags
ssh_workers "$WORKER" "tail -n 100 -F $REMOTE_LOG | sed -u \"s/^/\$(hostname): /\""
