#!/usr/bin/env bash
# launch/tpu_pod.sh: train semclip_jax on a Cloud TPU VM slice (one host or a multi-host pod slice).
#
# What it does, in order. Every step can be repeated, so rerunning the same command resumes the
# run from its last checkpoint in --workdir:
#   1. Creates the TPU VM slice unless one with that name exists, or reuses the existing one.
#      With --spot or --preemptible it asks for that capacity. A PREEMPTED or TERMINATED slice is
#      deleted and created again, and a STOPPED one is started.
#   2. Copies the code to every worker: a tarball of a local checkout through
#      `gcloud compute tpus tpu-vm scp --worker=all`, or a shallow git fetch of a repository URL.
#   3. Installs it on every worker: a Python venv, `pip install -e .`, then jax[tpu]==$JAX_VERSION
#      from the libtpu releases index.
#   4. Runs `python -m semclip_jax.main --config=... --workdir=... --distributed=yes [overrides]`
#      on all workers at once (`gcloud compute tpus tpu-vm ssh --worker=all`). main.py then calls
#      jax.distributed.initialize(), which finds the coordinator from the TPU metadata. Each
#      worker logs to ~/semclip_logs/<run>/worker-<N>.log. Worker 0 also prints to this terminal.
#      Without --detach the run lives as long as this ssh session: for long runs use --detach,
#      which starts it with nohup and returns, then follow the log and --stop it from here.
#
# Usage:
#   launch/tpu_pod.sh [options] [--config.FIELD=VALUE ...] [-- other semclip_jax.main flags]
#   launch/tpu_pod.sh --help
#
# Examples:
#   # CC3M on a v4-32 slice (4 hosts) with spot capacity; shards and run folder live in GCS:
#   launch/tpu_pod.sh --name=semclip-v4 --zone=us-central2-b --accelerator=v4-32 --spot \
#       --workdir=gs://my-bucket/runs/cc3m_semclip \
#       --config.data.path=gs://my-bucket/cc3m/train --config.data.eval_path=gs://my-bucket/cc3m/val
#   # The CLIP baseline on the same slice, which is already set up:
#   launch/tpu_pod.sh --name=semclip-v4 --zone=us-central2-b --skip-install \
#       --workdir=gs://my-bucket/runs/cc3m_clip --config.loss.name=clip ...
#   # v5e-16 from a git URL, left running in the background; later stopped (SIGTERM: main.py
#   # saves a checkpoint, then exits) and the slice deleted:
#   launch/tpu_pod.sh --name=semclip-v5e --zone=us-west4-a --accelerator=v5litepod-16 \
#       --repo=https://github.com/you/semclip_jax.git --detach --workdir=gs://my-bucket/runs/v5e
#   launch/tpu_pod.sh --name=semclip-v5e --zone=us-west4-a --stop
#   launch/tpu_pod.sh --name=semclip-v5e --zone=us-west4-a --delete
#   # Only print the commands, running none of them (no gcloud call is made):
#   launch/tpu_pod.sh --dry-run --workdir=gs://my-bucket/runs/try
#
# Storage: every host of a slice must see the same --workdir, because orbax writes checkpoints
# from all processes. The trainer writes its workdir with plain os/open calls (config.json,
# metrics.jsonl, results.json, hf/). So by default each gs://BUCKET/PATH value given to
# --workdir or a --config.* override is mounted with Cloud Storage FUSE (gcsfuse) on every worker
# at /mnt/gcs/BUCKET, and the local path /mnt/gcs/BUCKET/PATH is what main.py gets. Use
# --no-gcsfuse to pass gs:// paths through as they are.
#
# Assumptions:
#   * The gcloud CLI is installed and authenticated (`gcloud auth login`), and a project is set
#     (`gcloud config set project ...`) or given with --project. Commands run from this machine.
#   * The project has TPU quota for --accelerator in --zone, and the Cloud TPU API is enabled.
#     Spot or preemptible capacity can be reclaimed at any time; rerun the same command to resume.
#   * The data is readable from the TPU VMs, for example in a GCS bucket in the TPU's region. The
#     VMs' service account (the default compute one unless you changed it) can read the data and
#     write the workdir bucket.
#   * The TPU image is Ubuntu with apt, sudo and internet access (pip, apt). The script installs
#     --python (default python3.11; the project needs Python >= 3.11) with apt if it is missing.
#   * --repo: a local checkout is copied with the files git tracks plus untracked, non-ignored
#     ones. A repository URL must be clonable from the VMs (public, or credentials set up there).
#   * One training run per slice at a time: the TPU chips are held by one process per host.
#
# Options (the environment variable in brackets sets the same thing; flags win):
#   --name=NAME          TPU VM name [TPU_NAME]                 default: semclip-$USER
#   --zone=ZONE          zone [ZONE]                            default: us-central2-b
#   --accelerator=TYPE   accelerator type, e.g. v4-32, v5litepod-16, v5p-32, v6e-16
#                        [ACCELERATOR_TYPE]                     default: v4-32
#   --version=VERSION    TPU runtime version [RUNTIME_VERSION]  default: from the accelerator type:
#                        v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5,
#                        v5e/v5litepod: v2-alpha-tpuv5-lite, v4 and older: tpu-ubuntu2204-base
#   --project=PROJECT    GCP project [PROJECT]                  default: gcloud's configured project
#   --spot | --preemptible
#                        capacity model for a new slice [PROVISIONING=spot|preemptible]
#   --repo=PATH_OR_URL   local checkout to copy, or git URL [REPO]   default: this checkout
#   --ref=REF            git branch, tag or commit when --repo is a URL [REPO_REF]   default: HEAD
#   --config=PATH        config file, relative to the repo [CONFIG]  default: configs/cc3m.py
#   --workdir=PATH       run folder, the same for all hosts (gs://... recommended) [WORKDIR]
#   --run-name=NAME      names the log folder ~/semclip_logs/NAME [RUN_NAME]  default: a timestamp
#   --python=EXE         Python on the VMs for the venv [REMOTE_PYTHON]  default: python3.11
#   --jax-version=V      jax[tpu] version [JAX_VERSION]         default: 0.10.2 (requirements.txt)
#   --skip-create        use an existing slice as it is, without describing or creating it
#   --skip-install       do not copy the code or install packages again
#   --detach             start training in the background (nohup) and return; logs stay on the VMs
#   --no-gcsfuse         pass gs:// paths to main.py as they are [GCSFUSE=no]
#   --stop               send SIGTERM to the run on every worker (it saves a checkpoint) and exit
#   --delete             delete the slice and exit
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
REPO=${REPO:-$(dirname "$SCRIPT_DIR")}
REPO_REF=${REPO_REF:-HEAD}
CONFIG=${CONFIG:-configs/cc3m.py}
WORKDIR=${WORKDIR:-}
RUN_NAME=${RUN_NAME:-$(date +%Y%m%d-%H%M%S)}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3.11}
JAX_VERSION=${JAX_VERSION:-0.10.2}
GCSFUSE=${GCSFUSE:-auto}
DRY_RUN=${DRY_RUN:-0}
REMOTE_DIR=semclip_jax          # on each worker, relative to $HOME
REMOTE_VENV=semclip_venv        # on each worker, relative to $HOME
REMOTE_PIDFILE=semclip_run.pid  # on each worker, relative to $HOME
GCS_MOUNT_ROOT=/mnt/gcs
LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html
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
    --repo) REPO=$2 ;;
    --ref) REPO_REF=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
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
    --preemptible) PROVISIONING=preemptible ;;
    --skip-create) SKIP_CREATE=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --detach) DETACH=1 ;;
    --no-gcsfuse) GCSFUSE=no ;;
    --stop) ACTION=stop ;;
    --delete) ACTION=delete ;;
    --name=* | --zone=* | --accelerator=* | --version=* | --project=* | --repo=* | --ref=* | \
      --config=* | --workdir=* | --run-name=* | --python=* | --jax-version=*)
      set_option "${1%%=*}" "${1#*=}" ;;
    --name | --zone | --accelerator | --version | --project | --repo | --ref | --config | \
      --workdir | --run-name | --python | --jax-version)
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
  '' | spot | preemptible) ;;
  *) die "PROVISIONING must be spot, preemptible or empty, not '$PROVISIONING'" ;;
esac

if [[ $ACTION == run ]]; then
  [[ -n $WORKDIR ]] || die "--workdir is required (a gs://bucket/path is recommended: all hosts must share it)"
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

if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud is not on PATH (https://cloud.google.com/sdk/docs/install)"
  if [[ -z $PROJECT ]]; then
    PROJECT=$(gcloud config get-value project 2>/dev/null || true)
    [[ -n $PROJECT ]] || die "no project: pass --project=... or run 'gcloud config set project ...'"
  fi
fi
GCLOUD_FLAGS=(--zone="$ZONE")
[[ -n $PROJECT ]] && GCLOUD_FLAGS+=(--project="$PROJECT")
SSH_FLAGS=(--strict-host-key-checking=no --ssh-flag=-oServerAliveInterval=60)

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

# ---- 1. the slice: create or reuse -----------------------------------------------------------
create_tpu() {
  local cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    --scopes=https://www.googleapis.com/auth/cloud-platform)
  [[ -n $PROVISIONING ]] && cmd+=("--$PROVISIONING")
  ((DRY_RUN)) || log "creating $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION${PROVISIONING:+, $PROVISIONING}) in $ZONE"
  run "${cmd[@]}"
}

ensure_tpu() {
  local describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
    --format='value(state,acceleratorType)')
  if ((DRY_RUN)); then
    echo "# create the slice unless it exists (READY: reused; STOPPED: started; PREEMPTED: recreated)"
    run "${describe[@]}"
    create_tpu
    return
  fi
  local waited=0 state type info
  while true; do
    info=$("${describe[@]}" 2>/dev/null || true)
    read -r state type <<<"$info" || true
    case ${state:-} in
      '')
        create_tpu
        return ;;
      READY)
        if [[ -n ${type:-} && $type != "$ACCELERATOR_TYPE" ]]; then
          die "$TPU_NAME exists as $type, not $ACCELERATOR_TYPE: pass --accelerator=$type, another --name, or --delete it"
        fi
        log "reusing $TPU_NAME ($type, READY)"
        return ;;
      PREEMPTED | TERMINATED)
        log "$TPU_NAME is $state: deleting and creating it again"
        gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
        create_tpu
        return ;;
      STOPPED)
        log "$TPU_NAME is STOPPED: starting it"
        gcloud compute tpus tpu-vm start "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
        return ;;
      CREATING | STARTING | RESTARTING | REPAIRING | STOPPING)
        ((waited < 3600)) || die "$TPU_NAME still $state after an hour"
        log "$TPU_NAME is $state; waiting"
        sleep 30
        waited=$((waited + 30)) ;;
      *)
        die "$TPU_NAME is in state $state; fix or --delete it first" ;;
    esac
  done
}

# ---- 2. the code on every worker --------------------------------------------------------------
ship_code() {
  if [[ -d $REPO ]]; then
    local tarball="${TMPDIR:-/tmp}/semclip_jax-$TPU_NAME.tar.gz"
    if ((DRY_RUN)); then
      echo "# pack $REPO (git-tracked plus untracked, non-ignored files) into $tarball"
    else
      log "packing $REPO into $tarball"
      if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$REPO" ls-files -z --cached --others --exclude-standard |
          while IFS= read -r -d '' f; do [[ -e $REPO/$f ]] && printf '%s\0' "$f"; done |
          tar -C "$REPO" --null -T - -czf "$tarball"
      else
        tar -C "$REPO" --exclude=.git --exclude='.venv*' --exclude='./workdir*' -czf "$tarball" .
      fi
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
# the gcsfuse mount path, and remembers BUCKET; with --no-gcsfuse REPLY is ARG unchanged.
map_gcs_path() {
  local arg=$1 prefix='' value=$1
  if [[ $arg == --*=* ]]; then
    prefix="${arg%%=*}="
    value=${arg#*=}
  fi
  if [[ $GCSFUSE != no && $value =~ ^gs://([^/]+)(/.*)?$ ]]; then
    local bucket=${BASH_REMATCH[1]} known
    value="$GCS_MOUNT_ROOT/$bucket${BASH_REMATCH[2]}"
    for known in "${BUCKETS[@]}"; do [[ $known == "$bucket" ]] && bucket=''; done
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

train() {
  local args=() arg workdir
  map_gcs_path "$WORKDIR"
  workdir=$REPLY
  for arg in "${PASSTHROUGH[@]}"; do
    map_gcs_path "$arg"
    args+=("$REPLY")
  done
  local main_cmd logs pidfile
  main_cmd="\"\$HOME/$REMOTE_VENV/bin/python\" -m semclip_jax.main $(quote "--config=$CONFIG" "--workdir=$workdir" --distributed=yes ${args[@]+"${args[@]}"})"
  logs="\$HOME/semclip_logs/$(quote "$RUN_NAME")"
  pidfile="\$HOME/$REMOTE_PIDFILE"
  local start
  if ((DETACH)); then
    start="setsid nohup $main_cmd >\"\$log\" 2>&1 </dev/null &
echo \$! >\"$pidfile\"
echo \"worker \$worker: started pid \$!, log \$log\""
  else
    start="if [ \"\$worker\" = 0 ]; then
  $main_cmd > >(tee \"\$log\") 2>&1 &
else
  $main_cmd >\"\$log\" 2>&1 &
fi
pid=\$!
echo \$pid >\"$pidfile\"
status=0
wait \$pid || status=\$?
echo \"worker \$worker: exit status \$status, log \$log\"
exit \$status"
  fi
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
$start"
  if ((DETACH)) || ((DRY_RUN)); then
    echo "# follow worker 0:  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f ~/semclip_logs/$RUN_NAME/worker-0.log'"
    echo "# stop (checkpoint, then exit):  $0 --name=$TPU_NAME --zone=$ZONE --stop"
  fi
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
    ((DRY_RUN)) || log "deleting $TPU_NAME"
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet ;;
  stop)
    stop_run ;;
  run)
    ((SKIP_CREATE)) || ensure_tpu
    if ((!SKIP_INSTALL)); then
      ship_code
      install_project
    fi
    train ;;
esac
