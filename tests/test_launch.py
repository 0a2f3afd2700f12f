"""Launch files: both scripts parse, their dry runs print the right commands and call nothing,
and the Colab notebook is a valid nbformat-4 notebook whose training cells name existing configs.

Fast and offline: fake `gcloud` and `srun` executables on PATH record any call, and the tests
assert that none happened.
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
    "CACHE_FILES", "CACHE_WORKERS", "ALLOW_CPU")


def _fake_bin(tmp_path: pathlib.Path) -> pathlib.Path:
  """A folder with `gcloud` and `srun` stand-ins that leave a marker file and fail."""
  fake = tmp_path / "fakebin"
  fake.mkdir(exist_ok=True)
  for name in ("gcloud", "srun", "sbatch"):
    exe = fake / name
    exe.write_text(f"#!/bin/sh\necho \"$0 $*\" >> '{tmp_path}/called'\nexit 1\n")
    exe.chmod(0o755)
  return fake


def _run(script: pathlib.Path, args, tmp_path: pathlib.Path, **env_vars):
  env = {k: v for k, v in os.environ.items()
         if k not in SCRIPT_VARIABLES and not k.startswith("SLURM_")}
  env["PATH"] = f"{_fake_bin(tmp_path)}{os.pathsep}{env.get('PATH', '')}"
  env.update(env_vars)
  result = subprocess.run([BASH, str(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
  assert not (tmp_path / "called").exists(), (
      f"the dry run called {(tmp_path / 'called').read_text()}")
  return result


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


@needs_bash
def test_tpu_pod_dry_run_prints_gcloud_commands(tmp_path):
  result = _run(TPU_POD, ["--dry-run", "--name=test-tpu", "--zone=us-central2-b",
                          "--accelerator=v5litepod-16", "--spot", "--workdir=gs://test-bucket/runs/x",
                          "--config.loss.name=clip", "--", "--mode=train"], tmp_path)
  assert result.returncode == 0, result.stderr
  commands = [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]
  create = [c for c in commands if " tpu-vm create " in c]
  assert create and "--spot" in create[0] and "--accelerator-type=v5litepod-16" in create[0]
  assert "--version=v2-alpha-tpuv5-lite" in create[0]
  assert any(" tpu-vm scp " in c and "--worker=all" in c for c in commands)
  ssh = [c for c in commands if " tpu-vm ssh " in c]
  assert ssh and all("--worker=all" in c for c in ssh)
  train = [c for c in ssh if "semclip_jax.main" in c]
  assert len(train) == 1
  # The default config; cc3m.py is written elsewhere, so its existence is not tested here.
  for part in ("--config=configs/cc3m.py", "--distributed=yes", "--config.loss.name=clip",
               "--mode=train", "--workdir=/mnt/gcs/test-bucket/runs/x"):
    assert part in train[0], part
  install = [c for c in ssh if "pip" in c and "libtpu_releases.html" in c]
  assert len(install) == 1 and "tpu" in install[0] and "==0.10.2" in install[0]
  assert all(_remote_script_parses(c) for c in ssh)


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
  # The training subprocesses on one CPU device (the session forces 8 for its meshes), compiled
  # without the slow LLVM passes: this checks that the notebook runs, not its numbers.
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                     "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
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
