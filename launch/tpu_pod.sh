#!/usr/bin/env bash
# launch/tpu_pod.sh: train semclip_jax on a Cloud TPU VM slice (one host or a multi-host pod slice),
# optionally watching it and relaunching it after a preemption.
#
# What it does, in order. Every step can be repeated, so rerunning the same command resumes the
# run from its last checkpoint in --workdir:
#   1. Gets the slice as a queued resource named --name (its one TPU VM node has the same name):
#      `gcloud compute tpus queued-resources create NAME --node-id=NAME ...` with on-demand
#      capacity (the default), --spot or --reserved, unless it exists. It then polls
#      `queued-resources describe NAME --format='value(state.state)'` every --poll seconds until
#      the request is ACTIVE (WAITING_FOR_RESOURCES and PROVISIONING can take minutes to hours,
#      depending on capacity). An ACTIVE one is reused; a SUSPENDED (preempted) or FAILED one is
#      deleted (`queued-resources delete NAME --force --quiet`, which deletes its VMs too) and
#      requested again, a FAILED one at most 3 times in a row (it usually means quota or an
#      invalid request: see `gcloud compute tpus queued-resources describe NAME`).
#      Why queued resources rather than `tpu-vm create`: a queued request waits in line for
#      capacity instead of failing at once when the zone has none, it is the only way to get
#      spot and reserved capacity for the newer TPUs, and its state says plainly when spot
#      capacity was taken back (SUSPENDED). The direct `tpu-vm create` path is gone; a slice made
#      by hand some other way can still be used with --skip-create.
#   2. Copies the code to every worker: a tarball of a local checkout through
#      `gcloud compute tpus tpu-vm scp --worker=all`, or a shallow git fetch of a repository URL.
#   3. Installs it on every worker: a Python venv, `pip install -e .`, then jax[tpu]==$JAX_VERSION
#      from the libtpu releases index.
#   4. Runs `python -m semclip_jax.main --config=... --workdir=... --distributed=yes [overrides]`
#      on all workers at once (`gcloud compute tpus tpu-vm ssh --worker=all`), with the
#      environment below. main.py then calls jax.distributed.initialize(), which finds the
#      coordinator from the TPU metadata. Each worker logs to ~/semclip_logs/<run>/worker-<N>.log
#      (appended to; lost with the VMs when a slice is recreated: the metrics stay in the
#      workdir). Worker 0 also prints to this terminal. Without --detach the run lives as long as
#      this ssh session (run this script in tmux or screen for long runs); --detach starts it with
#      nohup and returns, then follow the log and --stop it from here.
#   5. With --watch (the default with --spot): when the command of step 4 ends, decides from the
#      slice's state whether it was preempted, and if so relaunches it (below).
#
# Watching and relaunching (--watch, --max-restarts=N): the trainer saves a checkpoint and exits
# with status 0 on SIGTERM, which is also what a preemption notice sends, so the exit status alone
# cannot tell "finished" from "preempted". After the command ends, the script polls the slice
# every --poll seconds for --settle seconds (a preempted slice changes state within a minute or
# two of the notice) and decides:
#   * preempted: the queued resource is SUSPENDING, SUSPENDED, FAILED, DELETING or gone, or its
#     node is PREEMPTED, TERMINATED, STOPPED or gone, at any poll. The script requests the slice
#     again (step 1: delete, create, wait for ACTIVE), copies and installs the code again (the
#     new VMs are bare, whatever --skip-install said), and reruns the SAME command, which resumes
#     from the last checkpoint in the workdir. At most --max-restarts relaunches, then it stops
#     with status 1.
#   * finished: the command exited 0 and the slice stayed ACTIVE with its node READY for the
#     whole --settle period. The script exits 0. (A run stopped on purpose with --stop also ends
#     here: it is not relaunched; rerun the same command to resume it.)
#   * connection lost: the command exited 255 (ssh's status when the connection drops) on a slice
#     that is still healthy, e.g. after a host maintenance restart: the same command is rerun on
#     the same VMs, counted as a restart.
#   * failed: any other non-zero status on a healthy slice is the training's own failure, which a
#     rerun would repeat: the script exits with that status, relaunching nothing.
# Transient states (PROVISIONING, REPAIRING, RESTARTING, ...) are waited out, for an hour at most.
#
# Environment exported on the workers before main.py starts:
#   JAX_COMPILATION_CACHE_DIR  JAX's persistent compilation cache, so that a relaunched or later
#       run loads its compiled steps instead of compiling them again (minutes on a large slice).
#       Default with a gs:// --workdir: the folder jax_cache beside the workdir (for
#       gs://b/runs/x, gs://b/runs/jax_cache, shared by the runs under gs://b/runs: entries are
#       keyed by program, compile options, JAX version and TPU type, so sharing is safe). A local
#       workdir gets no cache unless --compilation-cache=PATH names one; --compilation-cache=none
#       turns it off. JAX reads this variable itself; no config field is involved.
#   LIBTPU_INIT_ARGS  libtpu/XLA flags. The defaults are the ones MaxText and Google's TPU
#       training recipes set, which let XLA overlap the gradient all-reduce and the parameter
#       all-gathers of data-parallel training with compute:
#         --xla_tpu_enable_latency_hiding_scheduler=true     schedule collectives early, hiding
#                                                            their latency behind compute
#         --xla_tpu_enable_async_collective_fusion=true      run fused collectives asynchronously
#         --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true   ... all-gathers too
#         --xla_tpu_enable_async_collective_fusion_multiple_steps=true    ... across steps
#         --xla_tpu_overlap_compute_collective_tc=true       overlap them with TensorCore work
#         --xla_enable_async_all_gather=true                 asynchronous all-gathers
#       On v2 and v3, which do not support the async collective fusion flags, only the first.
#       --libtpu-args='...' (or LIBTPU_INIT_ARGS in this script's environment) adds flags; one
#       that names a default flag replaces it (e.g. --xla_enable_async_all_gather=false).
#       --no-libtpu-defaults drops the defaults.
#   PYTHONUNBUFFERED=1
#
# Usage:
#   launch/tpu_pod.sh [options] [--config.FIELD=VALUE ...] [-- other semclip_jax.main flags]
#   launch/tpu_pod.sh --help
#
# Examples:
#   # CC3M on a v4-32 slice (4 hosts) with spot capacity, watched and relaunched after each
#   # preemption (--watch is the default with --spot); shards and run folder live in GCS:
#   launch/tpu_pod.sh --name=semclip-v4 --zone=us-central2-b --accelerator=v4-32 --spot \
#       --max-restarts=30 --workdir=gs://my-bucket/runs/cc3m_semclip \
#       --config.data.path=gs://my-bucket/cc3m/train --config.data.eval_path=gs://my-bucket/cc3m/val
#   # The CLIP baseline on the same slice, which is already set up:
#   launch/tpu_pod.sh --name=semclip-v4 --zone=us-central2-b --skip-install \
#       --workdir=gs://my-bucket/runs/cc3m_clip --config.loss.name=clip ...
#   # v5e-16 from reserved capacity and a git URL, left running in the background; later
#   # stopped (SIGTERM: main.py saves a checkpoint, then exits) and the slice deleted:
#   launch/tpu_pod.sh --name=semclip-v5e --zone=us-west4-a --accelerator=v5litepod-16 --reserved \
#       --repo=https://github.com/you/semclip_jax.git --detach --workdir=gs://my-bucket/runs/v5e
#   launch/tpu_pod.sh --name=semclip-v5e --zone=us-west4-a --stop
#   launch/tpu_pod.sh --name=semclip-v5e --zone=us-west4-a --delete
#   # Only print the commands, running none of them (no gcloud call is made):
#   launch/tpu_pod.sh --dry-run --workdir=gs://my-bucket/runs/try
#
# Storage: every host of a slice must see the same --workdir, because orbax writes checkpoints
# from all processes. semclip_jax reads and writes gs:// paths itself, so gs:// values of
# --workdir and of --config.* overrides go to main.py as they are. A multi-host accelerator (more
# than one VM: e.g. v4-16 and up, v5p-16 and up, v5litepod-16 and up) with a --workdir that is
# not gs://... is refused (exit 2): a path like /tmp/run or ~/run would be a different folder on
# each VM. --shared-workdir accepts a local path that is a filesystem every worker mounts (e.g.
# Filestore NFS). --gcsfuse (opt-in, for code that needs local paths) instead mounts each bucket
# named by a gs://BUCKET/PATH value with Cloud Storage FUSE on every worker at /mnt/gcs/BUCKET
# and passes /mnt/gcs/BUCKET/PATH.
#
# Assumptions:
#   * The gcloud CLI is installed and authenticated (`gcloud auth login`), and a project is set
#     (`gcloud config set project ...`) or given with --project. Commands run from this machine.
#   * The project has TPU quota for --accelerator in --zone (spot and reserved quota are
#     separate), and the Cloud TPU API is enabled. --reserved needs a reservation in the zone.
#   * The data is readable from the TPU VMs, for example in a GCS bucket in the TPU's region. The
#     VMs' service account (the default compute one unless you changed it) can read the data and
#     write the workdir bucket (and the compilation cache beside it).
#   * The TPU image is Ubuntu with apt, sudo and internet access (pip, apt). The script installs
#     --python (default python3.11; the project needs Python >= 3.11) with apt if it is missing.
#   * --repo: a local checkout is copied with the files git tracks plus untracked, non-ignored
#     ones, packed once per invocation (a relaunch ships the same code). A repository URL must
#     be clonable from the VMs; pass --ref=<commit> so that relaunches fetch the same code.
#   * One training run per slice at a time: the TPU chips are held by one process per host.
#
# Options (the environment variable in brackets sets the same thing; flags win):
#   --name=NAME          queued resource and TPU VM name [TPU_NAME]   default: semclip-$USER
#   --zone=ZONE          zone [ZONE]                            default: us-central2-b
#   --accelerator=TYPE   accelerator type, e.g. v4-32, v5litepod-16, v5p-32, v6e-16
#                        [ACCELERATOR_TYPE]                     default: v4-32
#   --version=VERSION    TPU runtime version [RUNTIME_VERSION]  default: from the accelerator type:
#                        v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5,
#                        v5e/v5litepod: v2-alpha-tpuv5-lite, v4 and older: tpu-ubuntu2204-base
#   --project=PROJECT    GCP project [PROJECT]                  default: gcloud's configured project
#   --spot | --reserved  capacity of a new slice [PROVISIONING=spot|reserved]; default: on-demand.
#                        Spot is cheapest and can be taken back at any time (hence --watch);
#                        reserved uses the project's reservation in the zone
#   --watch | --no-watch relaunch after a preemption (above) [WATCH=1|0]  default: on with --spot
#   --max-restarts=N     relaunches at most, with --watch [MAX_RESTARTS]  default: 20
#   --poll=SECONDS       pause between two state polls [POLL_SECONDS]     default: 30
#   --settle=SECONDS     how long the slice must stay healthy after the command ends to count as
#                        finished, with --watch [SETTLE_SECONDS]         default: 120
#   --repo=PATH_OR_URL   local checkout to copy, or git URL [REPO]   default: this checkout
#   --ref=REF            git branch, tag or commit when --repo is a URL [REPO_REF]   default: HEAD
#   --config=PATH        config file, relative to the repo [CONFIG]  default: configs/cc3m.py
#   --workdir=PATH       run folder, the same for all hosts (gs://... ) [WORKDIR]
#   --shared-workdir     a --workdir that is not gs://... is a filesystem every worker mounts
#                        [SHARED_WORKDIR=1]
#   --compilation-cache=PATH|none   JAX compilation cache on the workers [COMPILATION_CACHE]
#                        default: jax_cache beside a gs:// workdir, none for a local one
#   --libtpu-args=FLAGS  libtpu flags added to (and overriding) the defaults [LIBTPU_INIT_ARGS]
#   --no-libtpu-defaults export only --libtpu-args [LIBTPU_DEFAULTS=0]
#   --run-name=NAME      names the log folder ~/semclip_logs/NAME [RUN_NAME]  default: a timestamp
#   --python=EXE         Python on the VMs for the venv [REMOTE_PYTHON]  default: python3.11
#   --jax-version=V      jax[tpu] version [JAX_VERSION]         default: 0.10.2 (requirements.txt)
#   --skip-create        use an existing slice as it is, without requesting it; with --watch a
#                        preempted slice then ends the script (it cannot request it again)
#   --skip-install       do not copy the code or install packages again (on this slice)
#   --detach             start training in the background (nohup) and return; turns --watch off
#   --gcsfuse | --no-gcsfuse   mount gs:// buckets with gcsfuse and pass local paths, or pass
#                        gs:// paths as they are (the default) [GCSFUSE=yes|no]
#   --stop               send SIGTERM to the run on every worker (it saves a checkpoint) and exit
#   --delete             delete the queued resource and its slice, and exit
#   --dry-run            print the commands instead of running them [DRY_RUN=1]
#   -h, --help           show this help
#   --config.FIELD=VALUE config overrides, passed to main.py (the = form only)
#   -- ARGS...           everything after -- goes to main.py as it is (e.g. -- --mode=eval)

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

TPU_NAME=${TPU_NAME:-semclip-${USER:-tpu}}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
PROJECT=${PROJECT:-}
PROVISIONING=${PROVISIONING:-}
WATCH=${WATCH:-}
MAX_RESTARTS=${MAX_RESTARTS:-20}
POLL_SECONDS=${POLL_SECONDS:-30}
SETTLE_SECONDS=${SETTLE_SECONDS:-120}
REPO=${REPO:-$(dirname "$SCRIPT_DIR")}
REPO_REF=${REPO_REF:-HEAD}
CONFIG=${CONFIG:-configs/cc3m.py}
WORKDIR=${WORKDIR:-}
SHARED_WORKDIR=${SHARED_WORKDIR:-0}
COMPILATION_CACHE=${COMPILATION_CACHE:-}
LIBTPU_ARGS=${LIBTPU_INIT_ARGS:-}
LIBTPU_DEFAULTS=${LIBTPU_DEFAULTS:-1}
RUN_NAME=${RUN_NAME:-$(date +%Y%m%d-%H%M%S)}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3.11}
JAX_VERSION=${JAX_VERSION:-0.10.2}
GCSFUSE=${GCSFUSE:-no}
DRY_RUN=${DRY_RUN:-0}
REMOTE_DIR=semclip_jax          # on each worker, relative to $HOME
REMOTE_VENV=semclip_venv        # on each worker, relative to $HOME
REMOTE_PIDFILE=semclip_run.pid  # on each worker, relative to $HOME
GCS_MOUNT_ROOT=/mnt/gcs
LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html
FAILED_RETRIES=3   # a FAILED queued resource is requested again this many times in a row
BUSY_LIMIT=3600    # seconds a slice may stay in a transient state after a run before giving up
SKIP_CREATE=0
SKIP_INSTALL=0
DETACH=0
ACTION=run
PASSTHROUGH=()

usage() {
  # The header comment block of this file, without the leading "# ".
  sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

die() {
  echo "tpu_pod.sh: error: $*" >&2
  exit 2
}

fail() {
  echo "tpu_pod.sh: $*" >&2
  exit 1
}

log() {
  echo "[tpu_pod] $*" >&2
}

set_option() {
  case $1 in
    --name) TPU_NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --accelerator) ACCELERATOR_TYPE=$2 ;;
    --version) RUNTIME_VERSION=$2 ;;
    --project) PROJECT=$2 ;;
    --max-restarts) MAX_RESTARTS=$2 ;;
    --poll) POLL_SECONDS=$2 ;;
    --settle) SETTLE_SECONDS=$2 ;;
    --repo) REPO=$2 ;;
    --ref) REPO_REF=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --compilation-cache) COMPILATION_CACHE=$2 ;;
    --libtpu-args) LIBTPU_ARGS=$2 ;;
    --run-name) RUN_NAME=$2 ;;
    --python) REMOTE_PYTHON=$2 ;;
    --jax-version) JAX_VERSION=$2 ;;
  esac
}

while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) PROVISIONING=spot ;;
    --reserved) PROVISIONING=reserved ;;
    --preemptible) die "queued resources have no preemptible capacity: use --spot" ;;
    --watch) WATCH=1 ;;
    --no-watch) WATCH=0 ;;
    --shared-workdir) SHARED_WORKDIR=1 ;;
    --no-libtpu-defaults) LIBTPU_DEFAULTS=0 ;;
    --skip-create) SKIP_CREATE=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --detach) DETACH=1 ;;
    --gcsfuse) GCSFUSE=yes ;;
    --no-gcsfuse) GCSFUSE=no ;;
    --stop) ACTION=stop ;;
    --delete) ACTION=delete ;;
    --name=* | --zone=* | --accelerator=* | --version=* | --project=* | --max-restarts=* | \
      --poll=* | --settle=* | --repo=* | --ref=* | --config=* | --workdir=* | \
      --compilation-cache=* | --libtpu-args=* | --run-name=* | --python=* | --jax-version=*)
      set_option "${1%%=*}" "${1#*=}" ;;
    --name | --zone | --accelerator | --version | --project | --max-restarts | --poll | \
      --settle | --repo | --ref | --config | --workdir | --compilation-cache | --libtpu-args | \
      --run-name | --python | --jax-version)
      (($# >= 2)) || die "$1 needs a value"
      set_option "$1" "$2"
      shift ;;
    --config.*=*) PASSTHROUGH+=("$1") ;;
    --config.*) die "write config overrides as $1=VALUE" ;;
    --) shift; PASSTHROUGH+=("$@"); break ;;
    *) die "unknown argument '$1' (see --help; semclip_jax.main flags go after --)" ;;
  esac
  shift
done

case $PROVISIONING in
  '' | spot | reserved) ;;
  preemptible) die "queued resources have no preemptible capacity: use PROVISIONING=spot" ;;
  *) die "PROVISIONING must be spot, reserved or empty (on-demand), not '$PROVISIONING'" ;;
esac
case $GCSFUSE in
  yes | no) ;;
  *) die "GCSFUSE must be yes or no, not '$GCSFUSE'" ;;
esac
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, not '$MAX_RESTARTS'"
for value in "$POLL_SECONDS" "$SETTLE_SECONDS"; do
  [[ $value =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--poll and --settle take seconds, not '$value'"
done
# --watch: on by default with spot capacity, never with --detach (it needs the run's end).
if [[ -z $WATCH ]]; then
  WATCH=0
  [[ $PROVISIONING == spot ]] && ((!DETACH)) && WATCH=1
fi
((WATCH && DETACH)) && die "--watch needs the run in the foreground: drop --detach or pass --no-watch"

# Hosts (TPU VMs) of an accelerator type, or nothing when the type is not one of these. v2-v5p
# count TensorCores, 8 per host; v5e and v6e count chips: up to 8 on one host, 4 per host above.
hosts_of() {
  local n=${1##*-}
  [[ $n =~ ^[0-9]+$ ]] || return 0
  case $1 in
    v2-* | v3-* | v4-* | v5p-*) echo $(((n + 7) / 8)) ;;
    v5litepod-* | v5e-* | v6e-*) if ((n <= 8)); then echo 1; else echo $((n / 4)); fi ;;
  esac
}
HOSTS=$(hosts_of "$ACCELERATOR_TYPE")

if [[ $ACTION == run ]]; then
  [[ -n $WORKDIR ]] || die "--workdir is required (a gs://bucket/path: all hosts must share it)"
  if [[ $WORKDIR != gs://* ]] && ((!SHARED_WORKDIR)) && [[ -n $HOSTS && $HOSTS -gt 1 ]]; then
    die "--workdir=$WORKDIR is not shared storage, but $ACCELERATOR_TYPE has $HOSTS hosts that" \
      "must all write to it: use a gs://bucket/path (or --shared-workdir for a filesystem every worker mounts)"
  fi
  [[ -n $HOSTS ]] || log "warning: cannot tell how many hosts $ACCELERATOR_TYPE has; --workdir must be shared storage if it has several"
  if [[ -d $REPO && ! -f $REPO/${CONFIG%%:*} ]]; then
    if ((DRY_RUN)); then log "warning: $REPO/${CONFIG%%:*} does not exist"; else die "$REPO/${CONFIG%%:*} does not exist"; fi
  fi
fi

if [[ -z $RUNTIME_VERSION ]]; then
  case $ACCELERATOR_TYPE in
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    *) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
  esac
fi

# The compilation cache: jax_cache beside a gs:// workdir unless given; "none" turns it off.
if [[ -z $COMPILATION_CACHE && $WORKDIR == gs://* ]]; then
  workdir_path=${WORKDIR%/}
  if [[ $workdir_path =~ ^gs://[^/]+$ ]]; then
    COMPILATION_CACHE=$workdir_path/jax_cache
  else
    COMPILATION_CACHE=${workdir_path%/*}/jax_cache
  fi
fi
[[ $COMPILATION_CACHE == none ]] && COMPILATION_CACHE=''

# `merge_flags DEFAULTS EXTRA` prints DEFAULTS without the flags EXTRA names, then EXTRA: so a
# flag given by the user replaces the default of the same name.
merge_flags() {
  local defaults extra flag given out=()
  read -ra defaults <<<"$1"
  read -ra extra <<<"$2"
  for flag in ${defaults[@]+"${defaults[@]}"}; do
    for given in ${extra[@]+"${extra[@]}"}; do
      [[ ${given%%=*} == "${flag%%=*}" ]] && continue 2
    done
    out+=("$flag")
  done
  out+=(${extra[@]+"${extra[@]}"})
  echo "${out[*]}"
}

LIBTPU_DEFAULT_FLAGS=''
if ((LIBTPU_DEFAULTS)); then
  LIBTPU_DEFAULT_FLAGS='--xla_tpu_enable_latency_hiding_scheduler=true'
  case $ACCELERATOR_TYPE in
    v2-* | v3-*) ;;
    *) LIBTPU_DEFAULT_FLAGS+=' --xla_tpu_enable_async_collective_fusion=true'
      LIBTPU_DEFAULT_FLAGS+=' --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true'
      LIBTPU_DEFAULT_FLAGS+=' --xla_tpu_enable_async_collective_fusion_multiple_steps=true'
      LIBTPU_DEFAULT_FLAGS+=' --xla_tpu_overlap_compute_collective_tc=true'
      LIBTPU_DEFAULT_FLAGS+=' --xla_enable_async_all_gather=true' ;;
  esac
fi
LIBTPU_FLAGS=$(merge_flags "$LIBTPU_DEFAULT_FLAGS" "$LIBTPU_ARGS")

# ---- command helpers ------------------------------------------------------------------------
# `run CMD...` executes CMD, or with --dry-run prints it shell-quoted (and runs nothing).
run() {
  if ((DRY_RUN)); then
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
  else
    "$@"
  fi
}

# Shell-quotes its arguments into one line, for the scripts that run on the workers.
quote() {
  local line
  printf -v line '%q ' "$@"
  echo "${line% }"
}

pause() {
  sleep "$POLL_SECONDS"
}

if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud is not on PATH (https://cloud.google.com/sdk/docs/install)"
  if [[ -z $PROJECT ]]; then
    PROJECT=$(gcloud config get-value project 2>/dev/null || true)
    [[ -n $PROJECT ]] || die "no project: pass --project=... or run 'gcloud config set project ...'"
  fi
  GCLOUD_ERRORS=$(mktemp "${TMPDIR:-/tmp}/tpu_pod.XXXXXX")
  trap 'rm -f "$GCLOUD_ERRORS"' EXIT
fi
GCLOUD_FLAGS=(--zone="$ZONE")
[[ -n $PROJECT ]] && GCLOUD_FLAGS+=(--project="$PROJECT")
SSH_FLAGS=(--strict-host-key-checking=no --ssh-flag=-oServerAliveInterval=60)
QR=(gcloud compute tpus queued-resources)
QR_DESCRIBE=("${QR[@]}" describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --format='value(state.state)')
NODE_DESCRIBE=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
  --format='value(state,acceleratorType)')

# `on_all_workers DESCRIPTION SCRIPT` runs the bash SCRIPT on every worker of the slice at once.
on_all_workers() {
  if ((DRY_RUN)); then
    echo "# $1, on every worker:"
    # shellcheck disable=SC2001  # prefix every line, not one substitution
    sed 's/^/#   /' <<<"$2"
  else
    log "$1 (all workers)"
  fi
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all "${SSH_FLAGS[@]}" \
    --command="bash -c $(quote "$2")"
}

# ---- 1. the slice: a queued resource ------------------------------------------------------------
# `describe CMD...` runs a gcloud describe and sets REPLY to its output's last line, to MISSING
# when gcloud says there is no such resource, or to UNKNOWN on any other error.
describe() {
  local out
  if out=$("$@" 2>"$GCLOUD_ERRORS"); then
    REPLY=$(tail -n 1 <<<"$out")
    [[ -n $REPLY ]] || REPLY=UNKNOWN
  elif grep -qiE 'NOT_FOUND|not found' "$GCLOUD_ERRORS"; then
    REPLY=MISSING
  else
    log "warning: $(tail -n 1 "$GCLOUD_ERRORS")"
    REPLY=UNKNOWN
  fi
}

create_slice() {
  local cmd=("${QR[@]}" create "$TPU_NAME" --node-id="$TPU_NAME" "${GCLOUD_FLAGS[@]}"
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION"
    --scopes=https://www.googleapis.com/auth/cloud-platform)
  [[ -n $PROVISIONING ]] && cmd+=("--$PROVISIONING")
  ((DRY_RUN)) || log "requesting $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION, ${PROVISIONING:-on-demand}) in $ZONE"
  run "${cmd[@]}"
}

delete_slice() {
  ((DRY_RUN)) || log "deleting the queued resource $TPU_NAME and its slice"
  run "${QR[@]}" delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --force --quiet
}

# Requests the slice unless it is ACTIVE, and waits until it is ACTIVE with its node READY.
ensure_slice() {
  if ((DRY_RUN)); then
    echo "# the slice, as a queued resource: reused when ACTIVE, requested when missing, deleted and"
    echo "# requested again when SUSPENDED (preempted) or FAILED"
    run "${QR_DESCRIBE[@]}"
    create_slice
    echo "# wait until it is ACTIVE: state.state polled every ${POLL_SECONDS}s"
    return
  fi
  local state node type seen='' failures=0
  while true; do
    describe "${QR_DESCRIBE[@]}"
    state=$REPLY
    node=''
    if [[ $state == ACTIVE ]]; then
      describe "${NODE_DESCRIBE[@]}"
      read -r node type <<<"$REPLY" || true
    fi
    [[ "$state $node" != "$seen" ]] && log "queued resource $TPU_NAME: $state${node:+, node $node}"
    seen="$state $node"
    case $state in
      MISSING)
        create_slice ;;
      ACTIVE)
        if [[ $node == READY ]]; then
          if [[ -n ${type:-} && $type != "$ACCELERATOR_TYPE" ]]; then
            die "$TPU_NAME exists as $type, not $ACCELERATOR_TYPE: pass --accelerator=$type, another --name, or --delete it"
          fi
          return
        fi ;;
      SUSPENDED)
        delete_slice ;;
      FAILED)
        failures=$((failures + 1))
        ((failures <= FAILED_RETRIES)) ||
          fail "the request for $TPU_NAME FAILED $failures times; see: gcloud compute tpus queued-resources describe $TPU_NAME --zone=$ZONE"
        delete_slice ;;
      WAITING_FOR_RESOURCES | ACCEPTED | CREATING | PROVISIONING | SUSPENDING | DELETING | UNKNOWN) ;;
      *)
        die "queued resource $TPU_NAME is in state $state; fix or --delete it first" ;;
    esac
    pause
  done
}

# Sets HEALTH to healthy (queued resource ACTIVE, node READY), gone (preempted, failed or
# deleted: only requesting it again helps) or busy (a transient state: wait).
slice_health() {
  local state
  if ((!SKIP_CREATE)); then
    describe "${QR_DESCRIBE[@]}"
    case $REPLY in
      ACTIVE) ;;
      SUSPENDING | SUSPENDED | FAILED | DELETING | MISSING) HEALTH=gone; return ;;
      *) HEALTH=busy; return ;;
    esac
  fi
  describe "${NODE_DESCRIBE[@]}"
  read -r state _ <<<"$REPLY" || true
  case $state in
    READY) HEALTH=healthy ;;
    PREEMPTED | TERMINATED | STOPPED | STOPPING | DELETING | MISSING) HEALTH=gone ;;
    *) HEALTH=busy ;;
  esac
}

# After the command ended: polls the slice until it is gone (then HEALTH=gone at once) or has
# stayed healthy for SETTLE_SECONDS (HEALTH=healthy), waiting out transient states.
settled_health() {
  local start=$SECONDS
  while true; do
    slice_health
    [[ $HEALTH == gone ]] && return
    [[ $HEALTH == healthy ]] && ((SECONDS - start >= ${SETTLE_SECONDS%.*})) && return
    ((SECONDS - start < BUSY_LIMIT)) || fail "$TPU_NAME stayed in a transient state for over an hour after the run; look at it with: gcloud compute tpus tpu-vm describe $TPU_NAME --zone=$ZONE"
    pause
  done
}

# ---- 2. the code on every worker --------------------------------------------------------------
TARBALL=''
ship_code() {
  if [[ -d $REPO ]]; then
    local tarball="${TMPDIR:-/tmp}/semclip_jax-$TPU_NAME.tar.gz"
    if ((DRY_RUN)); then
      echo "# pack $REPO (git-tracked plus untracked, non-ignored files) into $tarball"
    elif [[ $TARBALL != "$tarball" ]]; then  # once per invocation: relaunches ship the same code
      log "packing $REPO into $tarball"
      if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$REPO" ls-files -z --cached --others --exclude-standard |
          while IFS= read -r -d '' f; do [[ -e $REPO/$f ]] && printf '%s\0' "$f"; done |
          tar -C "$REPO" --null -T - -czf "$tarball"
      else
        tar -C "$REPO" --exclude=.git --exclude='.venv*' --exclude='./workdir*' -czf "$tarball" .
      fi
      TARBALL=$tarball
    fi
    run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:semclip_jax.tar.gz" "${GCLOUD_FLAGS[@]}" \
      --worker=all --strict-host-key-checking=no
    on_all_workers "unpack the code into ~/$REMOTE_DIR" "set -euo pipefail
cd \"\$HOME\"
rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR
tar -xzf semclip_jax.tar.gz -C $REMOTE_DIR && rm -f semclip_jax.tar.gz"
  elif [[ $REPO == *://* || $REPO == git@* ]]; then
    on_all_workers "fetch $REPO at $REPO_REF into ~/$REMOTE_DIR" "set -euo pipefail
cd \"\$HOME\"
command -v git >/dev/null || { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git; }
[ -d $REMOTE_DIR/.git ] || { rm -rf $REMOTE_DIR && git init -q $REMOTE_DIR; }
git -C $REMOTE_DIR fetch -q --depth=1 $(quote "$REPO" "$REPO_REF")
git -C $REMOTE_DIR checkout -q --force FETCH_HEAD
git -C $REMOTE_DIR log -1 --format='code at %h %s'"
  else
    die "--repo=$REPO is neither a local folder nor a git URL"
  fi
}

# ---- 3. the venv on every worker ---------------------------------------------------------------
install_project() {
  local py venv jax_spec
  py=$(quote "$REMOTE_PYTHON")
  venv="\$HOME/$REMOTE_VENV"
  jax_spec=$(quote "jax[tpu]==$JAX_VERSION")
  on_all_workers "install semclip_jax and jax[tpu]==$JAX_VERSION into ~/$REMOTE_VENV" "set -euo pipefail
if ! command -v $py >/dev/null; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $py $py-venv
fi
[ -x \"$venv/bin/python\" ] || $py -m venv \"$venv\"
\"$venv/bin/pip\" install -q --upgrade pip
\"$venv/bin/pip\" install -q -e \"\$HOME/$REMOTE_DIR\"
\"$venv/bin/pip\" install -q $jax_spec -f $LIBTPU_INDEX
\"$venv/bin/python\" -c 'import jax, jaxlib; print(\"jax\", jax.__version__, \"jaxlib\", jaxlib.__version__)'"
}

# ---- 4. the run on every worker ---------------------------------------------------------------
BUCKETS=()
# Sets REPLY to ARG with a leading gs://BUCKET/PATH value (bare, or after --flag=) replaced by
# the gcsfuse mount path, and remembers BUCKET; without --gcsfuse REPLY is ARG unchanged.
map_gcs_path() {
  local arg=$1 prefix='' value=$1
  if [[ $arg == --*=* ]]; then
    prefix="${arg%%=*}="
    value=${arg#*=}
  fi
  if [[ $GCSFUSE == yes && $value =~ ^gs://([^/]+)(/.*)?$ ]]; then
    local bucket=${BASH_REMATCH[1]} known
    value="$GCS_MOUNT_ROOT/$bucket${BASH_REMATCH[2]}"
    for known in ${BUCKETS[@]+"${BUCKETS[@]}"}; do [[ $known == "$bucket" ]] && bucket=''; done
    [[ -n $bucket ]] && BUCKETS+=("$bucket")
  fi
  REPLY=$prefix$value
}

mount_buckets_script() {
  ((${#BUCKETS[@]})) || return 0
  # Literal parts are single-quoted: they expand on the worker, not here.
  # shellcheck disable=SC2016
  echo 'if ! command -v gcsfuse >/dev/null; then
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse
fi'
  echo "for bucket in $(quote "${BUCKETS[@]}"); do"
  echo "  mnt=$GCS_MOUNT_ROOT/\$bucket"
  # --rename-dir-limit: orbax finalises a checkpoint by renaming its temporary folder.
  # shellcheck disable=SC2016
  echo '  mountpoint -q "$mnt" || { sudo mkdir -p "$mnt" && sudo chown "$(id -u):$(id -g)" "$mnt" &&
    gcsfuse --implicit-dirs --rename-dir-limit=1000000 "$bucket" "$mnt"; }
done'
}

# The training command on every worker; returns its status (ssh's: 255 when the connection drops).
train() {
  local args=() arg workdir cache='' env_lines=''
  map_gcs_path "$WORKDIR"
  workdir=$REPLY
  for arg in ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}; do
    map_gcs_path "$arg"
    args+=("$REPLY")
  done
  if [[ -n $COMPILATION_CACHE ]]; then
    map_gcs_path "$COMPILATION_CACHE"
    cache=$REPLY
    env_lines+="export JAX_COMPILATION_CACHE_DIR=$(quote "$cache")"$'\n'
  fi
  [[ -n $LIBTPU_FLAGS ]] && env_lines+="export LIBTPU_INIT_ARGS=$(quote "$LIBTPU_FLAGS")"$'\n'
  local main_cmd logs pidfile
  main_cmd="\"\$HOME/$REMOTE_VENV/bin/python\" -m semclip_jax.main $(quote "--config=$CONFIG" "--workdir=$workdir" --distributed=yes ${args[@]+"${args[@]}"})"
  logs="\$HOME/semclip_logs/$(quote "$RUN_NAME")"
  pidfile="\$HOME/$REMOTE_PIDFILE"
  local start
  if ((DETACH)); then
    start="setsid nohup $main_cmd >>\"\$log\" 2>&1 </dev/null &
echo \$! >\"$pidfile\"
echo \"worker \$worker: started pid \$!, log \$log\""
  else
    start="if [ \"\$worker\" = 0 ]; then
  $main_cmd > >(tee -a \"\$log\") 2>&1 &
else
  $main_cmd >>\"\$log\" 2>&1 &
fi
pid=\$!
echo \$pid >\"$pidfile\"
status=0
wait \$pid || status=\$?
echo \"worker \$worker: exit status \$status, log \$log\"
exit \$status"
  fi
  local status=0
  on_all_workers "train ($CONFIG, $WORKDIR)" "set -euo pipefail
$(mount_buckets_script)
cd \"\$HOME/$REMOTE_DIR\"
worker=\$(curl -fs -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || hostname)
if [ -f \"$pidfile\" ] && kill -0 \"\$(cat \"$pidfile\")\" 2>/dev/null; then
  echo \"worker \$worker: a run (pid \$(cat \"$pidfile\")) still holds the TPU; use --stop first\" >&2
  exit 1
fi
mkdir -p \"$logs\"
log=\"$logs/worker-\$worker.log\"
export PYTHONUNBUFFERED=1
$env_lines$start" || status=$?
  if ((DETACH)) || ((DRY_RUN)); then
    echo "# follow worker 0:  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f ~/semclip_logs/$RUN_NAME/worker-0.log'"
    echo "# stop (checkpoint, then exit):  $0 --name=$TPU_NAME --zone=$ZONE --stop"
  fi
  return "$status"
}

# ---- 5. watch and relaunch ----------------------------------------------------------------------
watch_and_relaunch() {
  if ((DRY_RUN)); then
    train
    echo "# --watch: when the command ends, poll the slice (every ${POLL_SECONDS}s, for ${SETTLE_SECONDS}s):"
    run "${QR_DESCRIBE[@]}"
    run "${NODE_DESCRIBE[@]}"
    echo "# preempted (SUSPENDED/FAILED/gone, or node PREEMPTED/TERMINATED): delete, request, install and"
    echo "# run the same command again, at most $MAX_RESTARTS times; exit 0 on a healthy slice: finished"
    return
  fi
  local restarts=0 status
  while true; do
    status=0
    train || status=$?
    log "the command ended with status $status; checking the slice"
    settled_health
    if [[ $HEALTH == healthy ]]; then
      if ((status == 0)); then
        log "finished: the command exited 0 and $TPU_NAME stayed healthy for ${SETTLE_SECONDS}s"
        return 0
      elif ((status != 255)); then
        log "the training failed (status $status) on a healthy slice: not relaunching"
        return "$status"
      fi
    fi
    if ((restarts >= MAX_RESTARTS)); then
      fail "the run was interrupted (slice $HEALTH, status $status) after $restarts relaunches (--max-restarts=$MAX_RESTARTS): rerun the same command to resume it"
    fi
    restarts=$((restarts + 1))
    if [[ $HEALTH == gone ]]; then
      ((SKIP_CREATE)) && fail "$TPU_NAME was preempted, and --skip-create forbids requesting it again"
      log "$TPU_NAME was preempted (status $status): relaunch $restarts of $MAX_RESTARTS"
      ensure_slice
      ship_code
      install_project
    else
      log "lost the connection to $TPU_NAME (status 255) on a healthy slice: rerun $restarts of $MAX_RESTARTS"
      pause
    fi
  done
}

stop_run() {
  local pidfile="\$HOME/$REMOTE_PIDFILE"
  on_all_workers "stop the run (SIGTERM: checkpoint, then exit)" "pidfile=\"$pidfile\"
worker=\$(hostname)
if [ -f \"\$pidfile\" ] && kill -0 \"\$(cat \"\$pidfile\")\" 2>/dev/null; then
  kill -TERM \"\$(cat \"\$pidfile\")\" && echo \"\$worker: sent SIGTERM to \$(cat \"\$pidfile\")\"
else
  echo \"\$worker: no run\"
fi"
}

case $ACTION in
  delete)
    delete_slice ;;
  stop)
    stop_run ;;
  run)
    ((SKIP_CREATE)) || ensure_slice
    if ((!SKIP_INSTALL)); then
      ship_code
      install_project
    fi
    if ((WATCH)); then
      watch_and_relaunch
    else
      train
    fi ;;
esac
