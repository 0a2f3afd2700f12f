#!/usr/bin/env bash
# launch/gpu_slurm.sh: train semclip_jax on a SLURM GPU cluster, one process per GPU (default) or
# one per node, requeueing itself until the run is finished.
#
# What it does: it creates the Python venv $VENV if it is missing or incomplete
# (`pip install -e $REPO`, then jax[cuda12]==$JAX_VERSION), on the host or inside the container
# (CONTAINER_IMAGE, below). Then it starts
# `python -m semclip_jax.main --config=$CONFIG --workdir=$WORKDIR --distributed=yes "$@"` with
# `srun`. main.py calls jax.distributed.initialize() with no arguments, and JAX reads everything
# it needs from SLURM: the coordinator (the first node of the step, on a port derived from the
# job id), the number of processes (SLURM_NTASKS) and this process's rank (SLURM_PROCID). This
# script sets none of those. Rerunning the same command with the same WORKDIR resumes from the
# last checkpoint, and the job requeues itself to do that (below).
#
# Usage (the #SBATCH lines below are defaults; sbatch flags override them. Set the partition,
# account and QoS of your cluster on the command line):
#   sbatch [sbatch flags] launch/gpu_slurm.sh [--config.FIELD=VALUE ...] [other main.py flags]
#   bash launch/gpu_slurm.sh --help
#
# Examples:
#   # 2 nodes x 8 GPUs, CC3M shards on the shared filesystem, 24 h slices requeued until done:
#   CONFIG=configs/cc3m.py WORKDIR=/shared/runs/cc3m_semclip \
#     sbatch --partition=gpu --nodes=2 --time=24:00:00 launch/gpu_slurm.sh \
#     --config.data.path=/shared/cc3m/train --config.data.eval_path=/shared/cc3m/val
#   # The same in a container (pyxis/enroot), with the data's filesystem mounted in it:
#   CONTAINER_IMAGE=nvcr.io#nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 PYTHON=python3.12 \
#     CONTAINER_MOUNTS=/shared:/shared WORKDIR=/shared/runs/cc3m_semclip \
#     sbatch --partition=gpu --nodes=2 launch/gpu_slurm.sh --config.data.path=/shared/cc3m/train ...
#   # A 4-GPU node, the CLIP baseline:
#   WORKDIR=/shared/runs/cc3m_clip sbatch --partition=gpu --gpus-per-node=4 --ntasks-per-node=4 \
#     launch/gpu_slurm.sh --config.loss.name=clip ...
#   # One process per node that drives all of the node's GPUs (the alternative layout):
#   PROCS_PER=node sbatch --partition=gpu --nodes=2 --ntasks-per-node=1 --cpus-per-task=64 \
#     launch/gpu_slurm.sh ...
#   # Print the commands without running them, here or in an allocation:
#   DRY_RUN=1 bash launch/gpu_slurm.sh --config.loss.name=clip
#
# Time limits and requeueing (#SBATCH --requeue, --signal=B:TERM@300, --open-mode=append):
#   SLURM sends SIGTERM to the batch shell (this script) 300 s before the time limit. The script
#   forwards it to the training tasks with `scancel --signal=TERM $SLURM_JOB_ID` (which signals
#   the job's steps, not the batch shell), main.py saves a checkpoint and exits 0 before
#   total_steps, and srun returns. Why "B:" and a forwarder rather than --signal=TERM@300, which
#   signals the tasks directly: this way the script knows the time limit came (it decides with
#   that when the workdir is a URL it cannot read), and a TERM that reaches the batch shell any
#   other way (a preemption's grace period, `scancel --batch --signal=TERM`) is forwarded too
#   instead of killing the shell. It must not forward with `kill` to srun: srun answers SIGTERM
#   by SIGKILLing its tasks, so no checkpoint would be saved. Raise the 300 s
#   (`sbatch --signal=B:TERM@600`) if saving a checkpoint takes longer.
#   When srun has returned, the script decides:
#     * finished: WORKDIR/results.json exists (the trainer writes it at the end of a run with
#       evaluations), or, for a config without evaluations, WORKDIR/checkpoints holds a step
#       folder at the total_steps of WORKDIR/config.json. For a URL WORKDIR (gs://...), which
#       this shell cannot read: srun exited 0 and no SIGTERM came. The job then ends with srun's
#       status.
#     * unfinished: srun exited 0 (the trainer stopped at a checkpoint on SIGTERM) or a SIGTERM
#       came: `scontrol requeue $SLURM_JOB_ID` puts the same job (same id, same command) back in
#       the queue, and its next start resumes from the checkpoint. At most MAX_REQUEUES times,
#       counted by SLURM_RESTART_COUNT; then the job fails (exit 1): resubmit to go on.
#     * failed: any other non-zero status is the training's own failure, which a requeue would
#       repeat: the job ends with that status. (Node failures are requeued by SLURM itself,
#       thanks to --requeue.) Runs with --mode other than train are never requeued.
#   To stop a job for good, `scancel JOBID`; it resumes from its last periodic checkpoint when
#   submitted again.
#
# Process layouts (PROCS_PER):
#   gpu  (default) One task per GPU: --ntasks-per-node must equal the GPUs per node. Under SLURM,
#        JAX gives each process the single local GPU numbered SLURM_LOCALID, counted among the
#        GPUs that process can see. So srun runs with --gpu-bind=none and every task sees all of
#        its node's GPUs. If your site binds one GPU per task anyway (CUDA_VISIBLE_DEVICES holds
#        a single id), the task wrapper sets JAX_LOCAL_DEVICE_IDS=0 instead.
#   node One task per node that drives all of its GPUs: srun --ntasks-per-node=1, and
#        JAX_LOCAL_DEVICE_IDS=0,...,G-1, because JAX would otherwise give a SLURM process only
#        GPU SLURM_LOCALID=0. There are fewer processes (input pipelines, host memory), and it is
#        the layout to try if NCCL or your site dislikes 8 processes per node.
#
# Containers (CONTAINER_IMAGE, with the pyxis SPANK plugin and enroot): srun then runs every task
# with --container-image=$CONTAINER_IMAGE, --container-mounts=<REPO, VENV's folder and WORKDIR,
# each at its own path>,$CONTAINER_MOUNTS and --container-workdir=$REPO. The image provides the
# OS and Python (>= 3.11, with its venv module: set PYTHON to its interpreter, default python3);
# enroot adds the NVIDIA driver. The venv is still built by this script, but inside the image
# (one srun task) and on the shared filesystem, at VENV=$REPO/.venv-container by default: so the
# same pinned packages as without a container (requirements.txt, jax[cuda12] wheels that bring
# their own CUDA) and no image to build; nothing is installed on the host. A venv belongs to the
# image it was built in: use another VENV per image.
#
# Environment exported to the tasks before srun (a value you set yourself wins):
#   XLA_FLAGS    --xla_gpu_enable_latency_hiding_scheduler=true: XLA schedules collectives early
#                so that the gradient all-reduce overlaps with compute (the one XLA flag NVIDIA's
#                JAX images set). Your own XLA_FLAGS are kept, and a flag in them replaces the
#                default of the same name; XLA_DEFAULTS=0 drops the default.
#   NCCL_DEBUG   WARN: NCCL prints why a collective failed (by default it prints nothing, and XLA
#                only reports "unhandled system error"). Nothing else of NCCL's is set: network
#                settings (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, ...) belong to your site, and what it
#                exports (e.g. from a module) passes through; NVLS is left at NCCL's default.
#   PYTHONUNBUFFERED=1
#
# Environment variables (defaults in brackets):
#   CONFIG          config file, relative to REPO [configs/cc3m.py]
#   WORKDIR         run folder on a filesystem every node shares [$REPO/workdir/<config name>]
#   REPO            the semclip_jax checkout, on a shared filesystem [$SLURM_SUBMIT_DIR, or $PWD]
#   VENV            venv on a shared filesystem [$REPO/.venv-cuda; $REPO/.venv-container with
#                   CONTAINER_IMAGE]; kept apart from a CPU .venv
#   PYTHON          interpreter that creates the venv, >= 3.11 [python3.11; python3 in a container]
#   JAX_VERSION     [0.10.2, as in requirements.txt]
#   JAX_CUDA_EXTRA  cuda12 (CUDA 12 wheels from pip, driver >= 525) or cuda13 [cuda12]
#   PROCS_PER       gpu | node [gpu]
#   GPUS_PER_NODE   [from SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE, else nvidia-smi]
#   LOG_DIR         when set, each task logs to $LOG_DIR/<job>-<jobid>-task<N>.log; otherwise all
#                   tasks log to the job's output file, each line prefixed with its task number
#   MAX_REQUEUES    requeues at most, counted by SLURM_RESTART_COUNT; 0 turns requeueing off [10]
#   CONTAINER_IMAGE pyxis image (e.g. nvcr.io#nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04, or a
#                   squashfs file); empty: no container []
#   CONTAINER_MOUNTS more pyxis mounts, SRC[:DST[:FLAGS]],... (data folders) []
#   XLA_DEFAULTS    0: do not add the default XLA flag [1]
#   DRY_RUN=1       print the commands instead of running them (a first argument --dry-run does
#                   the same; --help prints this text)
#
# Assumptions:
#   * SLURM with GPUs scheduled as GRES (--gpus-per-node), and NVIDIA drivers recent enough for
#     the CUDA wheels JAX installs from pip (CUDA 12: driver >= 525.60.13). Nothing else from
#     CUDA is needed: no module load, and LD_LIBRARY_PATH should not point at another CUDA.
#   * REPO, VENV, WORKDIR and the data are on a filesystem that every node mounts at the same
#     path. Orbax writes checkpoints from every process into WORKDIR.
#   * The node that runs the batch script can reach PyPI the first time, when it builds the venv.
#     On offline clusters, build VENV once on a login node with the same commands (DRY_RUN=1
#     prints them).
#   * The nodes can reach each other over TCP on the coordinator port (in 61440-65535) and over
#     NCCL's transports.
#   * The cluster lets jobs requeue (--requeue) and `scontrol requeue` their own job, and scancel
#     is on the compute nodes' PATH. The output file is appended to (--open-mode=append), so it
#     holds every start of the job.
#   * --exclusive: the job has its nodes to itself, so no other job shares the GPUs' NVLink,
#     PCIe or network bandwidth with NCCL, or their memory.
#
#SBATCH --job-name=semclip
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

DRY_RUN=${DRY_RUN:-0}
case ${1:-} in
  -h | --help)
    # The header comment block of this file, without the leading "# " (#SBATCH lines as they are).
    sed -n '2,/^$/{/^#SBATCH/!s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit 0 ;;
  --dry-run)
    DRY_RUN=1
    shift ;;
esac
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-}
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
CONFIG=${CONFIG:-configs/cc3m.py}
config_name=$(basename "${CONFIG%%:*}" .py)
WORKDIR=${WORKDIR:-$REPO/workdir/$config_name}
if [[ -n $CONTAINER_IMAGE ]]; then
  VENV=${VENV:-$REPO/.venv-container}
  PYTHON=${PYTHON:-python3}
else
  VENV=${VENV:-$REPO/.venv-cuda}
  PYTHON=${PYTHON:-python3.11}
fi
JAX_VERSION=${JAX_VERSION:-0.10.2}
JAX_CUDA_EXTRA=${JAX_CUDA_EXTRA:-cuda12}
PROCS_PER=${PROCS_PER:-gpu}
LOG_DIR=${LOG_DIR:-}
MAX_REQUEUES=${MAX_REQUEUES:-10}
XLA_DEFAULTS=${XLA_DEFAULTS:-1}

die() {
  echo "gpu_slurm.sh: error: $*" >&2
  exit 2
}

log() {
  echo "[gpu_slurm] $*" >&2
}

# `run CMD...` executes CMD, or with DRY_RUN=1 prints it shell-quoted (and runs nothing).
run() {
  if ((DRY_RUN)); then
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
  else
    "$@"
  fi
}

if [[ -z ${SLURM_JOB_ID:-} ]] && ((!DRY_RUN)); then
  die "not inside a SLURM job: submit with 'sbatch launch/gpu_slurm.sh ...' (or run it in an salloc)"
fi
if [[ ! -f $REPO/semclip_jax/main.py ]]; then
  if ((DRY_RUN)); then log "warning: REPO=$REPO is not a semclip_jax checkout"; else die "REPO=$REPO is not a semclip_jax checkout"; fi
fi
case $PROCS_PER in
  gpu | node) ;;
  *) die "PROCS_PER must be gpu or node, not '$PROCS_PER'" ;;
esac
[[ $MAX_REQUEUES =~ ^[0-9]+$ ]] || die "MAX_REQUEUES must be a whole number, not '$MAX_REQUEUES'"

# ---- container ----------------------------------------------------------------------------------
container_flags=()
if [[ -n $CONTAINER_IMAGE ]]; then
  mounts=()
  # REPO, the venv's folder and a local WORKDIR, each at its own path (once), then the user's.
  add_mount() {
    local known
    for known in ${mounts[@]+"${mounts[@]}"}; do
      [[ $1 == "$known" || $1 == "$known"/* ]] && return 0
    done
    mounts+=("$1")
  }
  add_mount "$REPO"
  add_mount "$(dirname "$VENV")"
  if [[ $WORKDIR != *://* ]]; then
    run mkdir -p "$WORKDIR"
    add_mount "$WORKDIR"
  fi
  mount_list=''
  for m in "${mounts[@]}"; do mount_list+="${mount_list:+,}$m:$m"; done
  [[ -n $CONTAINER_MOUNTS ]] && mount_list+=",$CONTAINER_MOUNTS"
  container_flags=(--container-image="$CONTAINER_IMAGE" --container-mounts="$mount_list"
    --container-workdir="$REPO")
fi

# ---- venv ---------------------------------------------------------------------------------------
jax_spec="jax[$JAX_CUDA_EXTRA]==$JAX_VERSION"
stamp=$VENV/.semclip-installed

install_venv() {
  if [[ -n $CONTAINER_IMAGE ]]; then
    # One task inside the image builds the venv on the shared filesystem.
    # shellcheck disable=SC2016  # expands in the container, from the arguments after the script
    run srun --nodes=1 --ntasks=1 --ntasks-per-node=1 "${container_flags[@]}" bash -c 'set -euo pipefail
python=$1 venv=$2 repo=$3 jax_spec=$4 stamp=$5
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --upgrade pip
"$venv/bin/pip" install -e "$repo"
"$venv/bin/pip" install "$jax_spec"
echo "$jax_spec" >"$stamp"' semclip-install "$PYTHON" "$VENV" "$REPO" "$jax_spec" "$stamp"
    return
  fi
  [[ -x $VENV/bin/python ]] || run "$PYTHON" -m venv "$VENV"
  run "$VENV/bin/pip" install --upgrade pip
  run "$VENV/bin/pip" install -e "$REPO"
  run "$VENV/bin/pip" install "$jax_spec"
  if ((DRY_RUN)); then
    echo "echo '$jax_spec' > $stamp"
  else
    echo "$jax_spec" >"$stamp"
  fi
}

if [[ ! -f $stamp || $(cat "$stamp") != "$jax_spec" ]]; then
  ((DRY_RUN)) && echo "# $VENV is missing or incomplete: set it up${CONTAINER_IMAGE:+ inside $CONTAINER_IMAGE}"
  if ((DRY_RUN)) || ! command -v flock >/dev/null; then
    install_venv
  else
    # Several jobs may share VENV: one installs, the others wait, then see the stamp.
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    flock 9
    if [[ ! -f $stamp || $(cat "$stamp") != "$jax_spec" ]]; then
      log "setting up $VENV with $jax_spec${CONTAINER_IMAGE:+ inside $CONTAINER_IMAGE}"
      install_venv
    fi
    flock -u 9
  fi
fi

# ---- layout -------------------------------------------------------------------------------------
nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
if [[ -n ${GPUS_PER_NODE:-} ]]; then
  gpus=$GPUS_PER_NODE
elif [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
  gpus=$SLURM_GPUS_ON_NODE
elif [[ -n ${SLURM_GPUS_PER_NODE:-} ]]; then
  gpus=${SLURM_GPUS_PER_NODE##*:}  # "8" or "h100:8"
elif ((!DRY_RUN)) && command -v nvidia-smi >/dev/null; then
  gpus=$(nvidia-smi -L | grep -c '^GPU')
else
  gpus=8
fi
[[ $gpus =~ ^[0-9]+$ && $gpus -ge 1 ]] || die "cannot tell the GPUs per node ('$gpus'): set GPUS_PER_NODE"

srun_cmd=(srun --kill-on-bad-exit=1 --gpu-bind=none)
[[ -n ${SLURM_CPUS_PER_TASK:-} ]] && srun_cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
if [[ -n $LOG_DIR ]]; then
  run mkdir -p "$LOG_DIR"
  srun_cmd+=(--output="$LOG_DIR/%x-%j-task%t.log")
else
  srun_cmd+=(--label)
fi
srun_cmd+=(${container_flags[@]+"${container_flags[@]}"})

if [[ $PROCS_PER == node ]]; then
  srun_cmd+=(--nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1)
  JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))
  ((DRY_RUN)) && echo "export JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS"
  export JAX_LOCAL_DEVICE_IDS
  processes=$nodes
else
  tasks_per_node=${SLURM_NTASKS_PER_NODE:-$gpus}
  tasks_per_node=${tasks_per_node%%(*}  # "8(x2)" -> "8"
  if [[ $tasks_per_node != "$gpus" ]]; then
    log "warning: $tasks_per_node tasks per node but $gpus GPUs per node; one process per GPU wants" \
      "sbatch --ntasks-per-node=$gpus (or PROCS_PER=node)"
  fi
  processes=${SLURM_NTASKS:-$((nodes * tasks_per_node))}
fi

# ---- environment --------------------------------------------------------------------------------
# XLA_FLAGS: the defaults without those the user's own XLA_FLAGS name, then the user's.
xla_defaults=()
((XLA_DEFAULTS)) && xla_defaults=(--xla_gpu_enable_latency_hiding_scheduler=true)
read -ra user_xla <<<"${XLA_FLAGS:-}"
xla=()
for flag in ${xla_defaults[@]+"${xla_defaults[@]}"}; do
  for given in ${user_xla[@]+"${user_xla[@]}"}; do
    [[ ${given%%=*} == "${flag%%=*}" ]] && continue 2
  done
  xla+=("$flag")
done
xla+=(${user_xla[@]+"${user_xla[@]}"})
XLA_FLAGS="${xla[*]}"
NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export XLA_FLAGS NCCL_DEBUG PYTHONUNBUFFERED=1
if ((DRY_RUN)); then
  printf 'export XLA_FLAGS=%q NCCL_DEBUG=%q PYTHONUNBUFFERED=1\n' "$XLA_FLAGS" "$NCCL_DEBUG"
fi

# Runs on every task before Python. If SLURM bound this task to one GPU (CUDA_VISIBLE_DEVICES
# holds a single id), that GPU is device 0 for this process, not device SLURM_LOCALID.
# shellcheck disable=SC2016  # expands in the task, not here
task_wrapper=(bash -c 'if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ -z "${JAX_LOCAL_DEVICE_IDS:-}" ] &&
  [ "${CUDA_VISIBLE_DEVICES#*,}" = "$CUDA_VISIBLE_DEVICES" ]; then export JAX_LOCAL_DEVICE_IDS=0; fi
exec "$@"' semclip-task)

main_cmd=("$VENV/bin/python" -m semclip_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed=yes "$@")

# Requeueing applies to training runs only (--mode=eval, export, ... finish when they end).
requeue=1
for arg in "$@"; do
  [[ $arg == --mode=* && $arg != --mode=train ]] && requeue=0
done
((MAX_REQUEUES)) || requeue=0

# Whether the run in WORKDIR is finished: 0 yes, 1 no, 2 cannot tell (a URL workdir).
run_finished() {
  [[ $WORKDIR == *://* ]] && return 2
  [[ -f $WORKDIR/results.json ]] && return 0
  local total latest=-1 dir step
  total=$(sed -n 's/^  "total_steps": *\([0-9][0-9]*\).*/\1/p' "$WORKDIR/config.json" 2>/dev/null | head -n 1)
  [[ -n $total ]] || return 1
  for dir in "$WORKDIR"/checkpoints/*/; do
    step=$(basename "$dir")
    [[ $step =~ ^[0-9]+$ ]] && ((10#$step > latest)) && latest=$((10#$step))
  done
  ((latest >= total))
}

log "$processes process(es) on $nodes node(s), $gpus GPU(s) per node, PROCS_PER=$PROCS_PER;" \
  "config $CONFIG, workdir $WORKDIR${CONTAINER_IMAGE:+, image $CONTAINER_IMAGE}"
if ((DRY_RUN)); then
  echo "cd $(printf '%q' "$REPO")"
  run "${srun_cmd[@]}" "${task_wrapper[@]}" "${main_cmd[@]}"
  if ((requeue)); then
    echo "# on SIGTERM (time limit): forward it to the tasks, not to srun:"
    run scancel --signal=TERM "${SLURM_JOB_ID:-JOBID}"
    echo "# when srun ends, unless $WORKDIR/results.json exists (or a checkpoint at total_steps):"
    run scontrol requeue "${SLURM_JOB_ID:-JOBID}"
    echo "# (at most MAX_REQUEUES=$MAX_REQUEUES times, counted by SLURM_RESTART_COUNT)"
  fi
  exit 0
fi
cd "$REPO"

# srun runs in the background so that the TERM trap can run while it does (bash runs traps only
# between commands); the trap forwards the signal to the job's steps, where the trainers are.
got_term=0
forward_term() {
  got_term=1
  log "SIGTERM (time limit or preemption): forwarding it to the training tasks"
  scancel --signal=TERM "$SLURM_JOB_ID" || log "warning: scancel --signal=TERM $SLURM_JOB_ID failed"
}
trap forward_term TERM
"${srun_cmd[@]}" "${task_wrapper[@]}" "${main_cmd[@]}" &
srun_pid=$!
while true; do
  status=0
  wait "$srun_pid" || status=$?
  # A status above 128 with srun still running: the trap interrupted wait, so wait again.
  ((status > 128)) && kill -0 "$srun_pid" 2>/dev/null && continue
  break
done
trap - TERM

verdict=0
run_finished || verdict=$?
if ((verdict == 0)) || ((verdict == 2 && status == 0 && !got_term)); then
  log "finished (srun status $status): not requeueing"
  exit "$status"
fi
if ((status != 0 && !got_term)); then
  log "the training failed (srun status $status): not requeueing"
  exit "$status"
fi
if ((!requeue)); then
  log "stopped before the end (srun status $status); requeueing is off: submit again to resume"
  exit "$status"
fi
restarts=${SLURM_RESTART_COUNT:-0}
if ((restarts >= MAX_REQUEUES)); then
  log "not finished after $restarts requeues (MAX_REQUEUES=$MAX_REQUEUES): submit again to resume"
  exit 1
fi
signalled=''
((got_term)) && signalled=', after SIGTERM'
log "not finished (srun status $status$signalled): requeueing job $SLURM_JOB_ID" \
  "($((restarts + 1)) of $MAX_REQUEUES); it resumes from the last checkpoint"
if ! scontrol requeue "$SLURM_JOB_ID"; then
  log "error: scontrol requeue $SLURM_JOB_ID failed: submit the same command again to resume"
  exit 1
fi
