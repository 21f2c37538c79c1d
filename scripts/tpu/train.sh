#!/usr/bin/env bash
# Runs one config on every worker of a TPU VM at once: the same command on each host, one JAX
# process per host, joined by jax.distributed.initialize() (--distributed; Cloud TPU tells each
# process the coordinator, the process count and its own index).
#
#   scripts/tpu/train.sh --name NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/RUN
#                        [--config.key=value ...] [--foreground] [--retries N] [--project PROJECT]
#                        [--dry-run]
#   scripts/tpu/train.sh --name NAME --zone ZONE --stop [--dry-run]
#
#   --config        a config of this checkout, as for dl10_jax.main: configs/gpt.py, configs/gpt.py:smoke
#   --workdir       a gs:// directory that every host reads and writes (checkpoints, metrics,
#                   TensorBoard, config.json); rerunning with the same one resumes
#   --config.k=v    overrides, passed on as they are, e.g. --config.mesh.fsdp=4 --config.batch_size=512
#   --foreground    stay attached: every worker's output here, interleaved (^C ends gcloud only;
#                   end the run with --stop); default: in the background with nohup, each worker
#                   writing ~/dl10_train.log (scripts/tpu/logs.sh streams it)
#   --retries N     rerun a preempted run (SIGTERM: it saves a checkpoint and exits 75) up to N
#                   times on each worker, resuming where it stopped; default 10
#   --stop          end the dl10_jax run on every worker (a TPU is held by one process at a time):
#                   it saves a checkpoint at the next step and is not retried
#   --dry-run       print the gcloud command instead of running it
#
# Before starting, each worker checks that it has the pinned jax (setup.sh installs it) and that no
# other run holds its TPU. Every worker must run the same command: a host left out, or started with
# other flags, leaves the others waiting in jax.distributed.initialize() or the first collective.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

parse_args '--name --zone --project --config --workdir --config.* --foreground --retries --stop --dry-run' "$@"
require NAME ZONE
gcloud_flags
running='^[^ ]*python[^ ]* -m dl10_jax[.]main'  # The trainer, not the shell that runs this.

if $STOP; then
  ssh_workers all "touch $REMOTE_STOP; pkill -f \"$running\" && echo \"\$(hostname): stopped\" || echo \"\$(hostname): nothing running\""
  exit 0
fi

require CONFIG WORKDIR
[[ -f $ROOT/${CONFIG%%:*} ]] ||
  die "config file '${CONFIG%%:*}' is not in this checkout; pass one such as configs/gpt.py"
[[ $WORKDIR == gs://?* ]] ||
  die "--workdir must be a gs:// directory that every worker shares (got '$WORKDIR')"
[[ $RETRIES =~ ^[0-9]+$ ]] || die "--retries must be a number of retries, 0 or more (got '$RETRIES')"
jax=$(jax_version)

main=("../$REMOTE_VENV/bin/python" -m dl10_jax.main --config "$CONFIG" --workdir "$WORKDIR"
  --distributed ${OVERRIDES[@]+"${OVERRIDES[@]}"})
main_quoted=()
for word in "${main[@]}"; do main_quoted+=("$(quote "$word")"); done
checks="cd $REMOTE_CODE || exit 1
../$REMOTE_VENV/bin/pip freeze | grep -qx jax==$jax || { echo \"\$(hostname): no jax==$jax; run scripts/tpu/setup.sh\" >&2; exit 1; }
! pgrep -f \"$running\" >/dev/null || { echo \"\$(hostname): a dl10_jax run holds the TPU; end it with train.sh --stop\" >&2; exit 1; }"
checks=${checks//$'\n'/; }
# The run, rerun while it exits preempted (checkpoint saved) and neither --stop nor the cap says no.
retry="rm -f ../$REMOTE_STOP; tries=0
while :; do ${main_quoted[*]}; code=\$?
[ \$code -eq $PREEMPTED_EXIT_CODE ] && [ \$tries -lt $RETRIES ] && [ ! -e ../$REMOTE_STOP ] || exit \$code
tries=\$((tries + 1)); echo \"\$(hostname): preempted (exit $PREEMPTED_EXIT_CODE), resuming: retry \$tries of $RETRIES\"
done"
retry="bash -c $(quote "${retry//$'\n'/; }")"

if $FOREGROUND; then
  ssh_workers all "$checks; $retry 2>&1 | tee ../$REMOTE_LOG"
else
  ssh_workers all "$checks; nohup $retry > ../$REMOTE_LOG 2>&1 < /dev/null & echo \"\$(hostname): started, log ~/$REMOTE_LOG\""
fi
