# shellcheck shell=bash disable=SC2034  # Its variables are read by the scripts that source it.
# Shared by the scripts in scripts/tpu/ (sourced, never run): option parsing, the --dry-run
# switch and the names used on the TPU VM workers. See README.md, "Running on Cloud TPU".
#
# Options shared by the scripts (each one's --help lists those it takes, and its own):
#   --name NAME              the TPU VM (or queued resource) name     [env TPU_NAME]
#   --zone ZONE              e.g. us-central2-b; `gcloud compute tpus accelerator-types list
#                            --zone=ZONE` lists what a zone has       [env TPU_ZONE]
#   --project PROJECT        the Google Cloud project; default: gcloud's core/project [env TPU_PROJECT]
#   --accelerator-type TYPE  v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v5p-16, v6e-8, ...
#   --version VERSION        the TPU runtime; default: from TYPE, as in the table below
#   --queued                 a queued resource (large or spot slices wait in a queue until free)
#   --dry-run                print each command, one per line, exactly as it would run; run nothing
#   -- ARGS...               (create.sh) more gcloud flags, e.g. -- --reserved --network=NET
#
# Runtime versions (--version) for JAX, from the Cloud TPU "TPU software versions" page:
#   TPU   accelerator types                        runtime version        the number counts
#   v4    v4-8 (1 host), v4-16, v4-32, ...          tpu-ubuntu2204-base    TensorCores (2 a chip)
#   v5e   v5litepod-1 ... -8 (1 host), -16, ...     v2-alpha-tpuv5-lite    chips
#   v5p   v5p-8 (1 host), v5p-16, ...               v2-alpha-tpuv5         TensorCores (2 a chip)
#   v6e   v6e-1 ... v6e-8 (1 host), v6e-16, ...     v2-alpha-tpuv6e        chips
#
# On every worker (paths relative to the worker's home directory):
#   dl10_jax/         the code: `git archive HEAD` of this checkout (setup.sh)
#   dl10_venv/        a Python 3.12 virtualenv with requirements.txt + jax[tpu] at the same pin
#   dl10_train.log    the output of the last train.sh (one log per worker)
#   dl10_train.stop   written by train.sh --stop: a preempted run is not retried

ROOT=$(CDPATH='' cd -- "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REMOTE_CODE=dl10_jax
REMOTE_VENV=dl10_venv
REMOTE_LOG=dl10_train.log
REMOTE_STOP=dl10_train.stop
PREEMPTED_EXIT_CODE=75  # dl10_jax/train/preemption.py: saved after SIGTERM, rerun to resume

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR_TYPE=
VERSION=
QUEUED=false
DRY_RUN=false
SPOT=false
FOREGROUND=false
STOP=false
WORKER=0
RETRIES=10
PYTHON=python3.12
CONFIG=
WORKDIR=
OVERRIDES=()
EXTRA_ARGS=()

die() {
  echo "error: $*" >&2
  exit 2
}

usage() {  # The calling script's header comment, without the '#'.
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"
}

# parse_args FLAGS "$@": FLAGS is the space-separated list of options the calling script takes.
# Both --flag value and --flag=value work; --config.* overrides are collected where allowed.
parse_args() {
  local allowed=" $1 --help -h " arg flag value
  shift
  while (($# > 0)); do
    arg=$1
    shift
    if [[ $arg == --config.* && $allowed == *" --config.* "* ]]; then
      OVERRIDES+=("$arg")
      continue
    fi
    if [[ $arg == -- && $allowed == *" -- "* ]]; then
      EXTRA_ARGS+=("$@")
      break
    fi
    flag=${arg%%=*}
    [[ $allowed == *" $flag "* ]] ||
      die "unknown option '$arg' for $(basename "$0"); it takes:$allowed"
    case $flag in
      -h | --help) usage; exit 0 ;;
      --queued | --dry-run | --spot | --foreground | --stop)
        [[ $arg == "$flag" ]] || die "$flag takes no value (got '$arg')"
        case $flag in
          --queued) QUEUED=true ;;
          --dry-run) DRY_RUN=true ;;
          --spot) SPOT=true ;;
          --foreground) FOREGROUND=true ;;
          --stop) STOP=true ;;
        esac
        ;;
      *)
        if [[ $arg == *=* ]]; then
          value=${arg#*=}
        else
          [[ $# -gt 0 && $1 != -* ]] || die "$flag needs a value"
          value=$1
          shift
        fi
        case $flag in
          --name) NAME=$value ;;
          --zone) ZONE=$value ;;
          --project) PROJECT=$value ;;
          --accelerator-type) ACCELERATOR_TYPE=$value ;;
          --version) VERSION=$value ;;
          --worker) WORKER=$value ;;
          --retries) RETRIES=$value ;;
          --python) PYTHON=$value ;;
          --config) CONFIG=$value ;;
          --workdir) WORKDIR=$value ;;
        esac
        ;;
    esac
  done
}

# require VAR... : one error line for the first of these variables that is empty.
require() {
  local var option
  for var in "$@"; do
    if [[ -z ${!var} ]]; then
      option=--$(tr '[:upper:]_' '[:lower:]-' <<<"$var")
      case $var in
        NAME | ZONE | PROJECT) die "$option is required (or set TPU_$var); see $(basename "$0") --help" ;;
        *) die "$option is required; see $(basename "$0") --help" ;;
      esac
    fi
  done
}

# The runtime version that the table above gives for an accelerator type.
default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime for --accelerator-type=$1; pass --version (see --help)" ;;
  esac
}

# The jax version that requirements.txt pins; the TPU workers install jax[tpu] at the same one.
jax_version() {
  local version
  version=$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' "$ROOT/requirements.txt")
  [[ -n $version ]] || die "no 'jax==X.Y.Z' line in $ROOT/requirements.txt"
  echo "$version"
}

# The flags every gcloud command here gets: --zone=Z [--project=P].
gcloud_flags() {
  GCLOUD_FLAGS=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then GCLOUD_FLAGS+=("--project=$PROJECT"); fi
}

# One word as a POSIX shell reads it back: as it is when it is safe, else in single quotes
# (--flag='value' for a flag with a value).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^--[A-Za-z0-9_.-]+= ]]; then
    printf '%s' "${BASH_REMATCH[0]}"
    quote "${1#*=}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# run CMD ARGS...: runs the command, or with --dry-run prints it (quoted, one line) instead.
run() {
  if $DRY_RUN; then
    local words=() word
    for word in "$@"; do words+=("$(quote "$word")"); done
    echo "${words[*]}"
  else
    "$@"
  fi
}

# ssh_workers WORKER COMMAND: one shell command on worker WORKER (0, 1, ... or all, all at once).
ssh_workers() {
  local worker=$1 command=$2
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" "--worker=$worker" \
    "--command=$command"
}
