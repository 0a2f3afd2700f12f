"""Launch files: both scripts parse, their dry runs print the right commands and call nothing,
and the Colab notebook is a valid nbformat-4 notebook whose training cells name existing configs.

Fast and offline: fake `gcloud` and `srun` executables on PATH record any call, and the dry-run
tests assert that none happened. The watch-and-relaunch (TPU) and requeue (SLURM) tests run the
scripts for real against scripted fakes (`_run_live`) that play a queued resource being preempted
or a training step ending, and record every call with its exact arguments.
"""

import json
import os
import pathlib
import re
import warnings
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU_POD = REPO / "launch" / "tpu_pod.sh"
GPU_SLURM = REPO / "launch" / "gpu_slurm.sh"
GPU_BENCH = REPO / "launch" / "gpu_bench.sh"
NOTEBOOK = REPO / "launch" / "colab.ipynb"
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")

# Variables the scripts read; cleared so the caller's environment cannot change what is tested.
SCRIPT_VARIABLES = (
    "TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT", "PROVISIONING", "REPO",
    "REPO_REF", "CONFIG", "WORKDIR", "RUN_NAME", "REMOTE_PYTHON", "JAX_VERSION", "GCSFUSE",
    "DRY_RUN", "VENV", "PYTHON", "JAX_CUDA_EXTRA", "PROCS_PER", "GPUS_PER_NODE", "LOG_DIR",
    "JAX_LOCAL_DEVICE_IDS", "JAX_CUDA", "PRESETS", "BATCHES", "TOWERS", "STEPS", "WARMUP", "OUT",
    "CACHE_FILES", "CACHE_WORKERS", "ALLOW_CPU", "WATCH", "MAX_RESTARTS", "POLL_SECONDS",
    "SETTLE_SECONDS", "SHARED_WORKDIR", "COMPILATION_CACHE", "LIBTPU_DEFAULTS", "CONTAINER_IMAGE",
    "CONTAINER_MOUNTS", "MAX_REQUEUES", "XLA_DEFAULTS")
# Tuning variables that tpu_pod.sh and gpu_slurm.sh merge with their defaults; the test session
# sets some of them (conftest), so they are cleared for those two scripts only.
TUNING_VARIABLES = ("XLA_FLAGS", "NCCL_DEBUG", "LIBTPU_INIT_ARGS", "JAX_COMPILATION_CACHE_DIR")


def _fake_bin(tmp_path: pathlib.Path) -> pathlib.Path:
  """A folder with `gcloud` and `srun` stand-ins that leave a marker file and fail."""
  fake = tmp_path / "fakebin"
  fake.mkdir(exist_ok=True)
  for name in ("gcloud", "srun", "sbatch"):
    exe = fake / name
    exe.write_text(f"#!/bin/sh\necho \"$0 $*\" >> '{tmp_path}/called'\nexit 1\n")
    exe.chmod(0o755)
  return fake


def _env(script: pathlib.Path, path_first, env_vars) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if k not in SCRIPT_VARIABLES and not k.startswith("SLURM_")}
  if script in (TPU_POD, GPU_SLURM):
    env = {k: v for k, v in env.items() if k not in TUNING_VARIABLES}
  env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
  env.update(env_vars)
  return env


def _run(script: pathlib.Path, args, tmp_path: pathlib.Path, **env_vars):
  env = _env(script, _fake_bin(tmp_path), env_vars)
  result = subprocess.run([BASH, str(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
  assert not (tmp_path / "called").exists(), (
      f"the dry run called {(tmp_path / 'called').read_text()}")
  return result


def _run_live(script: pathlib.Path, args, tmp_path: pathlib.Path, fakes: dict[str, str],
              **env_vars):
  """Runs `script` for real with the executables `fakes` (name -> bash body) first on PATH, and
  the failing stand-ins of `_fake_bin` behind them. Each fake first records its argv in
  tmp_path/calls; returns (the finished process, [[name, arg, ...] for every call in order]).
  FAKE_STATE in their environment is the folder tmp_path/state, for the state they keep between
  calls (a test may put an initial state there first)."""
  live = tmp_path / "livebin"
  live.mkdir()
  state = tmp_path / "state"
  state.mkdir(exist_ok=True)
  for name, body in fakes.items():
    exe = live / name
    exe.write_text(f"#!/usr/bin/env bash\n{{ printf '%s\\037' {name} \"$@\"; printf '\\036'; }}"
                   f" >> '{tmp_path}/calls'\n{body}\n")
    exe.chmod(0o755)
  env = _env(script, f"{live}{os.pathsep}{_fake_bin(tmp_path)}",
             {"FAKE_STATE": str(state), **env_vars})
  result = subprocess.run([BASH, str(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
  assert not (tmp_path / "called").exists(), f"called {(tmp_path / 'called').read_text()}"
  log = tmp_path / "calls"
  records = log.read_text().split("\036")[:-1] if log.exists() else []
  return result, [record.split("\037")[:-1] for record in records]


def _remote_script_parses(gcloud_line: str) -> bool:
  """Whether the bash script inside a printed `gcloud ... --command="bash -c ..."` line parses."""
  check = ('for a in "$@"; do case $a in --command=*) c=${a#--command=}; '
           'eval "set -- ${c#bash -c }"; bash -n -c "$1" || exit 1;; esac; done')
  result = subprocess.run([BASH, "-c", f"eval \"set -- $1\"; {check}", "_", gcloud_line],
                          capture_output=True, text=True, timeout=30, check=False)
  return result.returncode == 0


@needs_bash
@pytest.mark.parametrize("script", [TPU_POD, GPU_SLURM, GPU_BENCH], ids=lambda p: p.name)
def test_scripts_parse(script):
  subprocess.run([BASH, "-n", str(script)], check=True, timeout=30)


@needs_bash
def test_tpu_pod_help(tmp_path):
  result = _run(TPU_POD, ["--help"], tmp_path)
  assert result.returncode == 0
  assert "Assumptions" in result.stdout and "--dry-run" in result.stdout
  for part in ("queued-resources create", "--spot", "--reserved", "--watch", "--max-restarts",
               "--poll", "--compilation-cache", "LIBTPU_INIT_ARGS", "--shared-workdir"):
    assert part in result.stdout, part
  assert not re.search(r"^#", result.stdout, re.M)  # the comment marks are stripped


@needs_bash
def test_tpu_pod_dry_run_prints_gcloud_commands(tmp_path):
  result = _run(TPU_POD, ["--dry-run", "--name=test-tpu", "--zone=us-central2-b",
                          "--accelerator=v5litepod-16", "--spot", "--workdir=gs://test-bucket/runs/x",
                          "--config.loss.name=clip", "--", "--mode=train"], tmp_path)
  assert result.returncode == 0, result.stderr
  commands = [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]
  create = [c for c in commands if " queued-resources create " in c]
  assert len(create) == 1 and not any(" tpu-vm create " in c for c in commands)
  for part in ("queued-resources create test-tpu ", "--node-id=test-tpu", "--spot",
               "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite",
               "--zone=us-central2-b"):
    assert part in create[0], part
  assert any(" queued-resources describe test-tpu " in c and "state.state" in c for c in commands)
  assert any(" tpu-vm scp " in c and "--worker=all" in c for c in commands)
  ssh = [c for c in commands if " tpu-vm ssh " in c]
  assert ssh and all("--worker=all" in c for c in ssh)
  train = [c for c in ssh if "semclip_jax.main" in c]
  assert len(train) == 1
  # The default config; cc3m.py is written elsewhere, so its existence is not tested here. The
  # gs:// workdir goes to main.py as it is: no gcsfuse.
  for part in ("--config=configs/cc3m.py", "--distributed=yes", "--config.loss.name=clip",
               "--mode=train", "--workdir=gs://test-bucket/runs/x"):
    assert part in train[0], part
  assert "gcsfuse" not in train[0] and "/mnt/gcs" not in train[0]
  install = [c for c in ssh if "pip" in c and "libtpu_releases.html" in c]
  assert len(install) == 1 and "tpu" in install[0] and "==0.10.2" in install[0]
  assert all(_remote_script_parses(c) for c in ssh)
  # --spot watches by default: the dry run says how it decides.
  assert "--watch" in result.stdout and "at most 20 times" in result.stdout


@needs_bash
def test_tpu_pod_exports_compilation_cache_and_libtpu_flags(tmp_path):
  base = ["--dry-run", "--skip-create", "--skip-install", "--accelerator=v4-32"]

  def train_command(*args, **env):
    result = _run(TPU_POD, [*base, *args], tmp_path, **env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines()
             if line.startswith("gcloud ") and "semclip_jax.main" in line]
    assert len(lines) == 1 and _remote_script_parses(lines[0])
    return lines[0]

  # Defaults: the cache beside a gs:// workdir; MaxText's overlap flags.
  default = train_command("--workdir=gs://b/runs/x")
  assert "JAX_COMPILATION_CACHE_DIR=gs://b/runs/jax_cache" in default
  for flag in ("--xla_tpu_enable_latency_hiding_scheduler=true",
               "--xla_tpu_enable_async_collective_fusion=true",
               "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
               "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
               "--xla_tpu_overlap_compute_collective_tc=true", "--xla_enable_async_all_gather=true"):
    assert "LIBTPU_INIT_ARGS=" in default and flag in default, flag
  assert "JAX_COMPILATION_CACHE_DIR=gs://b/jax_cache" in train_command("--workdir=gs://b/")
  # A cache of one's own, or none; the user's libtpu flags replace the defaults they name.
  custom = train_command("--workdir=gs://b/runs/x", "--compilation-cache=gs://c/cache",
                         "--libtpu-args=--xla_enable_async_all_gather=false --xla_foo=1")
  assert "JAX_COMPILATION_CACHE_DIR=gs://c/cache" in custom
  assert "--xla_enable_async_all_gather=false" in custom and "--xla_foo=1" in custom
  assert "--xla_enable_async_all_gather=true" not in custom
  assert "--xla_tpu_enable_latency_hiding_scheduler=true" in custom
  from_env = train_command("--workdir=gs://b/runs/x", "--compilation-cache=none",
                           LIBTPU_INIT_ARGS="--xla_tpu_enable_latency_hiding_scheduler=false")
  assert "JAX_COMPILATION_CACHE_DIR" not in from_env
  assert "--xla_tpu_enable_latency_hiding_scheduler=false" in from_env
  assert "--xla_tpu_enable_latency_hiding_scheduler=true" not in from_env
  bare = train_command("--workdir=gs://b/runs/x", "--no-libtpu-defaults")
  assert "LIBTPU_INIT_ARGS" not in bare and "xla_tpu" not in bare
  # v2/v3 get only the latency hiding scheduler; a local single-host workdir gets no cache.
  v3 = train_command("--workdir=/tmp/run", "--accelerator=v3-8")
  assert "--xla_tpu_enable_latency_hiding_scheduler=true" in v3
  assert "async_collective_fusion" not in v3 and "JAX_COMPILATION_CACHE_DIR" not in v3


@needs_bash
def test_tpu_pod_refuses_a_local_workdir_on_a_multi_host_slice(tmp_path):
  for accelerator, hosts in (("v4-32", 4), ("v5litepod-16", 4), ("v5p-16", 2), ("v6e-32", 8)):
    result = _run(TPU_POD, ["--dry-run", f"--accelerator={accelerator}", "--workdir=/tmp/run"],
                  tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "not shared storage" in result.stderr and f"{hosts} hosts" in result.stderr
  # Not in real mode either, before any gcloud call.
  assert _run(TPU_POD, ["--accelerator=v4-32", "--workdir=~/run", "--project=p"],
              tmp_path).returncode == 2
  # Single-host slices, a filesystem every worker mounts, and gs:// are fine.
  for args in (["--accelerator=v4-8", "--workdir=/tmp/run"],
               ["--accelerator=v5litepod-8", "--workdir=/tmp/run"],
               ["--accelerator=v4-32", "--workdir=/mnt/nfs/run", "--shared-workdir"],
               ["--accelerator=v4-32", "--workdir=gs://b/run"]):
    result = _run(TPU_POD, ["--dry-run", "--skip-create", "--skip-install", *args], tmp_path)
    assert result.returncode == 0, (args, result.stderr)


@needs_bash
def test_tpu_pod_gcsfuse_is_opt_in(tmp_path):
  result = _run(TPU_POD, ["--dry-run", "--skip-create", "--skip-install", "--gcsfuse",
                          "--workdir=gs://b/runs/x", "--config.data.path=gs://d/train"], tmp_path)
  assert result.returncode == 0, result.stderr
  train = [line for line in result.stdout.splitlines() if "semclip_jax.main" in line
           and line.startswith("gcloud ")]
  assert len(train) == 1 and "gcsfuse" in train[0]
  for part in ("--workdir=/mnt/gcs/b/runs/x", "--config.data.path=/mnt/gcs/d/train",
               "JAX_COMPILATION_CACHE_DIR=/mnt/gcs/b/runs/jax_cache"):
    assert part in train[0], part
  assert _remote_script_parses(train[0])


# A stand-in for gcloud that plays one queued resource in FAKE_STATE/qr: create puts it in
# WAITING_FOR_RESOURCES, two describes later it is ACTIVE (its node READY); delete removes it. The
# training command (ssh ... semclip_jax.main) exits FAKE_EXIT, but its first FAKE_PREEMPTIONS
# runs leave the queued resource SUSPENDED (node PREEMPTED) and exit 0, as a trainer does after
# saving its checkpoint on the preemption notice's SIGTERM.
FAKE_GCLOUD = r"""
qr="$FAKE_STATE/qr"
state=$(cat "$qr" 2>/dev/null || echo MISSING)
case "$*" in
  *"queued-resources describe"*)
    if [ "$state" = MISSING ]; then
      echo "ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND: not found" >&2
      exit 1
    fi
    case $state in
      WAITING_FOR_RESOURCES) echo PROVISIONING >"$qr" ;;
      PROVISIONING) echo ACTIVE >"$qr" ;;
    esac
    echo "$state" ;;
  *"queued-resources create"*) echo WAITING_FOR_RESOURCES >"$qr" ;;
  *"queued-resources delete"*) echo MISSING >"$qr" ;;
  *"tpu-vm describe"*)
    case $state in
      ACTIVE) printf 'READY	%s
' "${FAKE_TYPE:-v4-32}" ;;
      SUSPENDED) printf 'PREEMPTED	%s
' "${FAKE_TYPE:-v4-32}" ;;
      *) echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND" >&2; exit 1 ;;
    esac ;;
  *"tpu-vm ssh"*semclip_jax.main*)
    runs=$(( $(cat "$FAKE_STATE/runs" 2>/dev/null || echo 0) + 1 ))
    echo "$runs" >"$FAKE_STATE/runs"
    if [ "$runs" -le "${FAKE_PREEMPTIONS:-0}" ]; then
      echo SUSPENDED >"$qr"
      exit 0
    fi
    exit "${FAKE_EXIT:-0}" ;;
esac
exit 0
"""

LIVE_TPU = ["--name=live-tpu", "--zone=us-central2-b", "--project=p", "--accelerator=v4-32",
            "--workdir=gs://b/runs/x", "--repo=https://example.com/semclip_jax.git", "--ref=abc123",
            "--run-name=r1", "--config.loss.name=clip"]


def _live_tpu(tmp_path, args, initial_state=None, **env):
  if initial_state:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "qr").write_text(initial_state + "\n")
  result, calls = _run_live(TPU_POD, [*LIVE_TPU, *args], tmp_path, {"gcloud": FAKE_GCLOUD},
                            POLL_SECONDS="0", SETTLE_SECONDS="0", **env)
  joined = [" ".join(call) for call in calls]
  return result, calls, joined


@needs_bash
def test_tpu_pod_relaunches_a_preempted_slice_with_the_same_command(tmp_path):
  # --spot watches by default. The first run ends with status 0 and a SUSPENDED slice.
  result, calls, joined = _live_tpu(tmp_path, ["--spot"], initial_state="ACTIVE",
                                    FAKE_PREEMPTIONS="1")
  assert result.returncode == 0, result.stderr
  trains = [call for call in calls if call[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
            and call[4] == "ssh" and any("semclip_jax.main" in a for a in call)]
  assert len(trains) == 2 and trains[0] == trains[1]
  deletes = [i for i, c in enumerate(joined) if " queued-resources delete live-tpu " in c]
  creates = [i for i, c in enumerate(joined) if " queued-resources create live-tpu " in c]
  assert len(deletes) == 1 and len(creates) == 1
  assert "--force" in calls[deletes[0]] and "--quiet" in calls[deletes[0]]
  for part in ("--node-id=live-tpu", "--spot", "--accelerator-type=v4-32",
               "--runtime-version=tpu-ubuntu2204-base", "--project=p"):
    assert part in calls[creates[0]], part
  second_train = [i for i, c in enumerate(joined) if "semclip_jax.main" in c and " ssh " in c][1]
  installs = [i for i, c in enumerate(joined) if " ssh " in c and "libtpu_releases.html" in c]
  fetches = [i for i, c in enumerate(joined) if " ssh " in c and "git -C" in c]
  # Deleted, requested, polled until ACTIVE, the code fetched and installed again, then rerun.
  assert deletes[0] < creates[0] < installs[1] < second_train and len(installs) == 2
  assert len(fetches) == 2 and fetches[1] < installs[1]
  polls = [c for c in joined[creates[0]:second_train] if " queued-resources describe " in c]
  assert len(polls) >= 3  # WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE
  assert "preempted" in result.stderr and "finished" in result.stderr


@needs_bash
def test_tpu_pod_gives_up_after_max_restarts(tmp_path):
  result, _, joined = _live_tpu(tmp_path, ["--spot", "--max-restarts=1"], initial_state="ACTIVE",
                                FAKE_PREEMPTIONS="99")
  assert result.returncode == 1
  assert "--max-restarts=1" in result.stderr
  assert sum("semclip_jax.main" in c and " ssh " in c for c in joined) == 2
  assert sum(" queued-resources create " in c for c in joined) == 1


@needs_bash
def test_tpu_pod_does_not_relaunch_a_failed_run(tmp_path):
  result, _, joined = _live_tpu(tmp_path, ["--watch", "--poll=0", "--settle=0"],
                                initial_state="ACTIVE", FAKE_EXIT="3")
  assert result.returncode == 3
  assert sum("semclip_jax.main" in c and " ssh " in c for c in joined) == 1
  assert not any(" queued-resources delete " in c or " queued-resources create " in c
                 for c in joined)
  assert "not relaunching" in result.stderr


@needs_bash
def test_tpu_pod_requests_a_reserved_slice_and_waits_until_active(tmp_path):
  result, calls, joined = _live_tpu(tmp_path, ["--reserved"])
  assert result.returncode == 0, result.stderr
  creates = [call for call in calls if "create" in call and "queued-resources" in call]
  assert len(creates) == 1 and "--reserved" in creates[0] and "--spot" not in creates[0]
  first_ssh = next(i for i, c in enumerate(joined) if " tpu-vm ssh " in c)
  assert sum(" queued-resources describe " in c for c in joined[:first_ssh]) >= 4
  # Without --spot there is no watching: one run, no state polls after it.
  train = next(i for i, c in enumerate(joined) if "semclip_jax.main" in c)
  assert train == len(joined) - 1


@needs_bash
def test_tpu_pod_dry_run_config_and_plain_gcs_paths(tmp_path):
  result = _run(TPU_POD, ["--dry-run", "--config", "configs/shapes.py", "--no-gcsfuse",
                          "--skip-create", "--skip-install", "--workdir=gs://b/run"], tmp_path)
  assert result.returncode == 0, result.stderr
  commands = [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]
  assert len(commands) == 1 and "--worker=all" in commands[0]
  assert "--config=configs/shapes.py" in commands[0] and "--distributed=yes" in commands[0]
  assert "--workdir=gs://b/run" in commands[0] and "gcsfuse" not in commands[0]


@needs_bash
def test_tpu_pod_needs_a_workdir_and_known_flags(tmp_path):
  assert _run(TPU_POD, ["--dry-run"], tmp_path).returncode == 2
  assert _run(TPU_POD, ["--dry-run", "--workdir=/x", "--bogus"], tmp_path).returncode == 2


SLURM_ENV = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="8", SLURM_PROCID="0", SLURM_LOCALID="0",
                 SLURM_JOB_NUM_NODES="1", SLURM_NTASKS_PER_NODE="8", SLURM_GPUS_ON_NODE="8",
                 SLURM_CPUS_PER_TASK="8", SLURM_STEP_NODELIST="gpu001")


@needs_bash
def test_gpu_slurm_dry_run_prints_srun(tmp_path):
  result = _run(GPU_SLURM, ["--config.loss.name=clip"], tmp_path, DRY_RUN="1",
                VENV=str(tmp_path / "venv"), WORKDIR=str(tmp_path / "run"),
                SLURM_SUBMIT_DIR=str(REPO), **SLURM_ENV)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  srun = [line for line in lines if line.startswith("srun ")]
  assert len(srun) == 1
  for part in ("--config=configs/cc3m.py", "--distributed=yes", "--config.loss.name=clip",
               f"--workdir={tmp_path / 'run'}", "-m semclip_jax.main", "--gpu-bind=none",
               "--cpus-per-task=8"):
    assert part in srun[0], part
  # The venv is missing: its set-up is printed, not run.
  assert any("pip install -e" in line for line in lines)
  assert any("cuda12" in line and "0.10.2" in line for line in lines)
  assert not (tmp_path / "venv").exists()
  # Nothing that would override JAX's own SLURM detection.
  assert "JAX_COORDINATOR_ADDRESS" not in result.stdout


@needs_bash
def test_gpu_slurm_one_process_per_node(tmp_path):
  result = _run(GPU_SLURM, [], tmp_path, DRY_RUN="1", PROCS_PER="node", CONFIG="configs/shapes.py",
                VENV=str(tmp_path / "venv"), REPO=str(REPO), **{**SLURM_ENV, "SLURM_JOB_NUM_NODES": "2",
                                                               "SLURM_GPUS_ON_NODE": "4"})
  assert result.returncode == 0, result.stderr
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in result.stdout
  srun = [line for line in result.stdout.splitlines() if line.startswith("srun ")]
  assert len(srun) == 1 and "--ntasks-per-node=1" in srun[0] and "--ntasks=2" in srun[0]
  assert "--config=configs/shapes.py" in srun[0] and "--distributed=yes" in srun[0]


@needs_bash
def test_gpu_slurm_refuses_to_run_outside_slurm(tmp_path):
  assert _run(GPU_SLURM, [], tmp_path).returncode == 2


@needs_bash
def test_gpu_slurm_help_and_sbatch_defaults(tmp_path):
  result = _run(GPU_SLURM, ["--help"], tmp_path)  # outside SLURM: help needs no job
  assert result.returncode == 0
  for part in ("Assumptions", "scontrol requeue", "MAX_REQUEUES", "CONTAINER_IMAGE", "XLA_FLAGS",
               "NCCL_DEBUG", "results.json", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@300",
               "#SBATCH --exclusive", "#SBATCH --open-mode=append"):
    assert part in result.stdout, part


def _slurm_live(tmp_path, srun_body, *args, **env):
  """gpu_slurm.sh run for real in a fake 8-GPU job 4242 whose venv is ready: `srun` runs
  `srun_body`, and `scontrol` and `scancel` only record their calls."""
  venv = tmp_path / "venv"
  venv.mkdir()
  (venv / ".semclip-installed").write_text("jax[cuda12]==0.10.2\n")
  variables = dict(VENV=str(venv), WORKDIR=str(tmp_path / "run"), REPO=str(REPO), **SLURM_ENV)
  variables.update(env)
  result, calls = _run_live(GPU_SLURM, list(args), tmp_path,
                            {"srun": srun_body, "scontrol": "exit 0", "scancel": "exit 0"},
                            **variables)
  return result, [call for call in calls if call[0] != "srun"], [c for c in calls if c[0] == "srun"]


@needs_bash
def test_gpu_slurm_requeues_a_run_stopped_at_a_checkpoint(tmp_path):
  # srun exits 0 but the run wrote no results.json: the trainer stopped on SIGTERM.
  result, calls, sruns = _slurm_live(tmp_path, "exit 0", "--config.loss.name=clip")
  assert result.returncode == 0, result.stderr
  assert len(sruns) == 1 and "--config.loss.name=clip" in sruns[0]
  assert calls == [["scontrol", "requeue", "4242"]]
  assert "requeueing job 4242 (1 of 10)" in result.stderr


@needs_bash
def test_gpu_slurm_forwards_term_to_the_tasks_then_requeues(tmp_path):
  # The batch shell gets SIGTERM (--signal=B:TERM@300) while srun runs: it must forward it with
  # scancel to the job's steps (srun itself would SIGKILL its tasks), wait for srun, requeue.
  srun = 'kill -TERM "$PPID"; sleep 0.3; exit 0'
  result, calls, sruns = _slurm_live(tmp_path, srun)
  assert result.returncode == 0, result.stderr
  assert len(sruns) == 1
  assert calls == [["scancel", "--signal=TERM", "4242"], ["scontrol", "requeue", "4242"]]
  assert "after SIGTERM" in result.stderr


@needs_bash
def test_gpu_slurm_does_not_requeue_a_finished_run(tmp_path):
  writes_results = 'mkdir -p "$WORKDIR" && echo "{\\"step\\": 20}" > "$WORKDIR/results.json"'
  result, calls, _ = _slurm_live(tmp_path, writes_results)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "run" / "results.json").is_file() and calls == []
  # A config without evaluations writes no results.json: a checkpoint at total_steps is the end.
  other = tmp_path / "no_evals"
  other.mkdir()
  workdir = other / "run"
  (workdir / "checkpoints" / "1500").mkdir(parents=True)
  (workdir / "checkpoints" / "1000").mkdir()
  (workdir / "config.json").write_text('{\n  "data": {\n    "total_steps": 99999\n  },\n'
                                       '  "total_steps": 1500\n}\n')
  result, calls, _ = _slurm_live(other, "exit 0", WORKDIR=str(workdir))
  assert result.returncode == 0 and calls == [], result.stderr


@needs_bash
def test_gpu_slurm_requeue_cap_failures_and_other_modes(tmp_path):
  for name, srun, args, env, status in (
      ("cap", "exit 0", [], {"SLURM_RESTART_COUNT": "3", "MAX_REQUEUES": "3"}, 1),
      ("crash", "exit 7", [], {}, 7),
      ("eval", "exit 0", ["--mode=eval"], {}, 0),
      ("off", "exit 0", [], {"MAX_REQUEUES": "0"}, 0)):
    folder = tmp_path / name
    folder.mkdir()
    result, calls, _ = _slurm_live(folder, srun, *args, **env)
    assert result.returncode == status, (name, result.stderr)
    assert calls == [], name


@needs_bash
def test_gpu_slurm_exports_xla_and_nccl_defaults_unless_set(tmp_path):
  records_env = 'printf "%s\\n" "$XLA_FLAGS" "$NCCL_DEBUG" > "$FAKE_STATE/env"; exit 0'
  default = tmp_path / "default"
  default.mkdir()
  result, _, _ = _slurm_live(default, records_env)
  assert result.returncode == 0, result.stderr
  xla, nccl = (default / "state" / "env").read_text().splitlines()
  assert xla == "--xla_gpu_enable_latency_hiding_scheduler=true" and nccl == "WARN"
  # The user's values win: their flag replaces the default of the same name, others are kept.
  user = tmp_path / "user"
  user.mkdir()
  result, _, _ = _slurm_live(user, records_env, NCCL_DEBUG="INFO",
                             XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=false "
                                       "--xla_dump_to=/tmp/dump")
  assert result.returncode == 0, result.stderr
  xla, nccl = (user / "state" / "env").read_text().splitlines()
  assert xla == "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/dump"
  assert nccl == "INFO"
  dry = _run(GPU_SLURM, [], tmp_path, DRY_RUN="1", XLA_DEFAULTS="0", XLA_FLAGS="--xla_a=1",
             VENV=str(tmp_path / "venv"), REPO=str(REPO), **SLURM_ENV)
  assert "export XLA_FLAGS=--xla_a=1 NCCL_DEBUG=WARN" in dry.stdout


@needs_bash
def test_gpu_slurm_container_runs_srun_in_the_image(tmp_path):
  image = "nvcr.io#nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
  workdir = tmp_path / "runs" / "x"
  result = _run(GPU_SLURM, ["--config.loss.name=clip"], tmp_path, DRY_RUN="1",
                CONTAINER_IMAGE=image, CONTAINER_MOUNTS="/data:/data:ro", WORKDIR=str(workdir),
                REPO=str(REPO), **SLURM_ENV)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  sruns = [line for line in lines if line.startswith("srun ")]
  assert len(sruns) == 2  # the venv, built inside the image by one task; then the training
  install, train = sruns
  mounts = f"--container-mounts={REPO}:{REPO},{workdir}:{workdir},/data:/data:ro"
  for line in sruns:
    plain = line.replace("\\", "")  # the dry run shell-quotes: "\," for ","
    assert f"--container-image={image}" in plain and mounts in plain
    assert f"--container-workdir={REPO}" in plain
  assert "--ntasks=1" in install and "pip" in install and "python3" in install
  assert f"{REPO}/.venv-container/bin/python -m semclip_jax.main" in train
  assert "--config.loss.name=clip" in train and "--gpu-bind=none" in train
  # Nothing is installed on the host: no pip or venv line outside srun.
  assert not any(("pip " in line or "-m venv" in line) and not line.startswith("srun ")
                 for line in lines if not line.startswith("#"))


def _notebook():
  with open(NOTEBOOK, encoding="utf-8") as f:
    return json.load(f)


def _source(cell) -> str:
  return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@needs_bash
def test_gpu_bench_stops_before_benchmarking_when_jax_sees_no_gpu(tmp_path):
  import sys  # pylint: disable=import-outside-toplevel

  result = _run(GPU_BENCH, [], tmp_path, PYTHON=sys.executable, OUT=str(tmp_path / "out"))
  assert result.returncode != 0
  assert "no GPU visible to jax" in result.stderr
  assert not (tmp_path / "out" / "gpu_bench.jsonl").exists()


def test_notebook_is_nbformat_4_with_empty_outputs():
  nb = _notebook()
  assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
  assert {c["cell_type"] for c in nb["cells"]} == {"markdown", "code"}
  for cell in nb["cells"]:
    assert isinstance(cell["metadata"], dict)
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_validates_with_nbformat():
  nbformat = pytest.importorskip("nbformat")
  nbformat.validate(nbformat.read(str(NOTEBOOK), as_version=4))


def test_notebook_training_cells_name_existing_configs():
  cells = [_source(c) for c in _notebook()["cells"] if c["cell_type"] == "code"]
  runs = [src for src in cells if "semclip(" in src and "def semclip" not in src]
  assert len(runs) >= 4  # shapes SemCLIP, CSV, export, push
  for src in cells:
    for config in re.findall(r"configs/[\w./-]+?\.py", src):
      assert (REPO / config).is_file(), f"the notebook names {config}, which does not exist"
    for name in re.findall(r"--config=(\w+)", src) + re.findall(r'CONFIG = "(\w+)', src):
      assert (REPO / "configs" / f"{name}.py").is_file(), name
  assert any('"loss.name": "clip"' in src and "train_and_evaluate" in src for src in cells)
  assert any("--config.data.kind=csv" in src for src in cells)
  assert any("--mode=export" in src for src in runs)
  assert any("--push_to_hub" in src for src in runs)


def test_notebook_code_cells_are_python_without_shell_lines():
  """`!` lines fork the kernel, which JAX (imported by the in-process cell) warns may deadlock:
  every command goes through the notebook's `sh`, which uses subprocess."""
  for i, cell in enumerate(_notebook()["cells"]):
    if cell["cell_type"] == "code":
      assert not re.search(r"^\s*[!%]", _source(cell), re.M), f"cell {i} has a shell line"
      compile(_source(cell), f"colab.ipynb cell {i}", "exec")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_quick_mode(tmp_path, monkeypatch, capsys):
  """Every cell but the Colab-only ones (install, Drive, the Hub token), in order, in one
  namespace as a kernel would, with QUICK on and /content replaced by a temporary folder."""
  monkeypatch.chdir(tmp_path)
  # The training subprocesses on one CPU device (the session forces 8 for its meshes).
  monkeypatch.setenv("XLA_FLAGS", os.environ["XLA_FLAGS"].replace(
      "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=1"))
  namespace = {"__name__": "__main__", "REPO_DIR": str(REPO)}
  skipped = []
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for i, cell in enumerate(_notebook()["cells"]):
      if cell["cell_type"] != "code":
        continue
      if "colab-only" in cell["metadata"].get("tags", []):
        skipped.append(i)
        continue
      source = _source(cell).replace("/content", str(tmp_path))
      if "QUICK = False" in source:
        source = source.replace("QUICK = False", "QUICK = True")
      exec(compile(source, f"colab.ipynb cell {i}", "exec"), namespace)  # pylint: disable=exec-used
  assert not [w for w in caught if "fork" in str(w.message)]
  printed = capsys.readouterr().out
  runs = tmp_path / "runs_quick"
  for name in ("shapes_semclip", "shapes_clip"):
    assert (runs / name / "results.json").is_file(), name
  clip_run, semclip_run = namespace["clip_run"], namespace["semclip_run"]
  assert clip_run.step == semclip_run.step == 12
  assert 0 <= clip_run.metrics["test/ccneg/accuracy"] <= 1
  saved = json.loads((runs / "shapes_semclip" / "results.json").read_text())
  assert semclip_run.metrics == {k: v for k, v in saved.items() if k != "step"}
  assert printed.count("prefers the") == 8  # both models on four held-out scenes
  report_md = (runs / "report" / "report.md").read_text()
  assert "shapes: clip" in report_md and "training.png" in report_md
  card = (runs / "shapes_semclip" / "hf" / "README.md").read_text()
  assert "pipeline_tag: zero-shot-image-classification" in card
  assert "cos(original, negation)" in printed
  assert len(skipped) == 6  # install, Drive mount, CSV check, CSV flags, CSV run, Hub push
