#!/usr/bin/env bash
# launch/gpu_slurm.sh: train semclip_jax on a SLURM GPU cluster, one process per GPU (default) or
# one per node.
#
# What it does: it creates the Python venv $VENV if it is missing or incomplete
# (`pip install -e $REPO`, then jax[cuda12]==$JAX_VERSION). Then it starts
# `python -m semclip_jax.main --config=$CONFIG --workdir=$WORKDIR --distributed=yes "$@"` with
# `srun`. main.py calls jax.distributed.initialize() with no arguments, and JAX reads everything
# it needs from SLURM: the coordinator (the first node of the step, on a port derived from the
# job id), the number of processes (SLURM_NTASKS) and this process's rank (SLURM_PROCID). This
# script sets none of those. Rerunning the same command with the same WORKDIR resumes from the
# last checkpoint.
#
# Usage (the #SBATCH lines below are defaults; sbatch flags override them. Set the partition,
# account and QoS of your cluster on the command line):
#   sbatch [sbatch flags] launch/gpu_slurm.sh [--config.FIELD=VALUE ...] [other main.py flags]
#
# Examples:
#   # 2 nodes x 8 GPUs, CC3M shards on the shared filesystem:
#   CONFIG=configs/cc3m.py WORKDIR=/shared/runs/cc3m_semclip \
#     sbatch --partition=gpu --nodes=2 --time=48:00:00 launch/gpu_slurm.sh \
#     --config.data.path=/shared/cc3m/train --config.data.eval_path=/shared/cc3m/val
#   # A 4-GPU node, the CLIP baseline:
#   WORKDIR=/shared/runs/cc3m_clip sbatch --partition=gpu --gpus-per-node=4 --ntasks-per-node=4 \
#     launch/gpu_slurm.sh --config.loss.name=clip ...
#   # One process per node that drives all of the node's GPUs (the alternative layout):
#   PROCS_PER=node sbatch --partition=gpu --nodes=2 --ntasks-per-node=1 --cpus-per-task=64 \
#     launch/gpu_slurm.sh ...
#   # Print the commands without running them, here or in an allocation:
#   DRY_RUN=1 bash launch/gpu_slurm.sh --config.loss.name=clip
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
# Environment variables (defaults in brackets):
#   CONFIG          config file, relative to REPO [configs/cc3m.py]
#   WORKDIR         run folder on a filesystem every node shares [$REPO/workdir/<config name>]
#   REPO            the semclip_jax checkout, on a shared filesystem [$SLURM_SUBMIT_DIR, or $PWD]
#   VENV            venv on a shared filesystem [$REPO/.venv-cuda]; kept apart from a CPU .venv
#   PYTHON          interpreter that creates the venv, >= 3.11 [python3.11]
#   JAX_VERSION     [0.10.2, as in requirements.txt]
#   JAX_CUDA_EXTRA  cuda12 (CUDA 12 wheels from pip, driver >= 525) or cuda13 [cuda12]
#   PROCS_PER       gpu | node [gpu]
#   GPUS_PER_NODE   [from SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE, else nvidia-smi]
#   LOG_DIR         when set, each task logs to $LOG_DIR/<job>-<jobid>-task<N>.log; otherwise all
#                   tasks log to the job's output file, each line prefixed with its task number
#   DRY_RUN=1       print the commands instead of running them (a first argument --dry-run does
#                   the same)
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
#   * Time limit: --signal=TERM@300 makes SLURM send SIGTERM 5 minutes before the end; main.py
#     then saves a checkpoint and exits, and resubmitting the same command resumes.
#
#SBATCH --job-name=semclip
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

DRY_RUN=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
CONFIG=${CONFIG:-configs/cc3m.py}
config_name=$(basename "${CONFIG%%:*}" .py)
WORKDIR=${WORKDIR:-$REPO/workdir/$config_name}
VENV=${VENV:-$REPO/.venv-cuda}
PYTHON=${PYTHON:-python3.11}
JAX_VERSION=${JAX_VERSION:-0.10.2}
JAX_CUDA_EXTRA=${JAX_CUDA_EXTRA:-cuda12}
PROCS_PER=${PROCS_PER:-gpu}
LOG_DIR=${LOG_DIR:-}

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

# ---- venv ---------------------------------------------------------------------------------------
jax_spec="jax[$JAX_CUDA_EXTRA]==$JAX_VERSION"
stamp=$VENV/.semclip-installed

install_venv() {
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
  ((DRY_RUN)) && echo "# $VENV is missing or incomplete: set it up"
  if ((DRY_RUN)) || ! command -v flock >/dev/null; then
    install_venv
  else
    # Several jobs may share VENV: one installs, the others wait, then see the stamp.
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    flock 9
    if [[ ! -f $stamp || $(cat "$stamp") != "$jax_spec" ]]; then
      log "setting up $VENV with $jax_spec"
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

# Runs on every task before Python. If SLURM bound this task to one GPU (CUDA_VISIBLE_DEVICES
# holds a single id), that GPU is device 0 for this process, not device SLURM_LOCALID.
# shellcheck disable=SC2016  # expands in the task, not here
task_wrapper=(bash -c 'if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ -z "${JAX_LOCAL_DEVICE_IDS:-}" ] &&
  [ "${CUDA_VISIBLE_DEVICES#*,}" = "$CUDA_VISIBLE_DEVICES" ]; then export JAX_LOCAL_DEVICE_IDS=0; fi
exec "$@"' semclip-task)

main_cmd=("$VENV/bin/python" -m semclip_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed=yes "$@")

log "$processes process(es) on $nodes node(s), $gpus GPU(s) per node, PROCS_PER=$PROCS_PER;" \
  "config $CONFIG, workdir $WORKDIR"
export PYTHONUNBUFFERED=1
if ((DRY_RUN)); then
  echo "cd $(printf '%q' "$REPO")"
else
  cd "$REPO"
fi
run "${srun_cmd[@]}" "${task_wrapper[@]}" "${main_cmd[@]}"
