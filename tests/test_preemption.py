"""Stopping for SIGTERM/SIGINT: one process (a Python flag), several (JAX's preemption sync point,
every process at the same step), and the trainer's preemption save and bitwise resume with two
real `jax.distributed` processes on localhost."""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Iterator

import numpy as np
import pytest
import safetensors.numpy

from semclip_jax import checkpointing, preemption
from semclip_jax.metrics_writer import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPES = REPO / "configs" / "shapes.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _process_env(port: int, process: int, processes: int = 2) -> dict[str, str]:
  """The environment of simulated process `process`: one CPU device each (the session's 8 would
  make 16 devices) and the coordinator on localhost."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags += ["--xla_force_host_platform_device_count=1"]
  return {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu",
          "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
          "JAX_PROCESS_ID": str(process)}


# ---- one process ---------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_one_process_stops_at_the_next_step_after_a_signal(signum):
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.StopRequest(start_step=3) as stop:
    assert stop.mode == "local"
    assert not stop.reached(3) and not stop.reached(4)
    os.kill(os.getpid(), signum)  # the Python handler runs before the next bytecode
    assert stop.reached(5) and stop.reached(6)  # and stays stopped
    assert stop.signal == signum and stop.signal_name == signal.Signals(signum).name
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_without_a_signal_nothing_stops_and_install_restore_pair():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  stop = preemption.StopRequest().install()
  try:
    handlers = [signal.getsignal(s) for s in preemption.SIGNALS]
    assert all(h == stop._handle for h in handlers)  # pylint: disable=protected-access
    assert not any(stop.reached(step) for step in range(50))
    assert stop.signal is None and stop.signal_name == ""
  finally:
    stop.restore()
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


# ---- two bare jax.distributed processes ----------------------------------------------------------
# A loop of `StopRequest.reached` with no collective: process 1 runs at a third of process 0's pace,
# so they are many steps apart when the signal comes, and start at step 7 (as a resumed run would).
_LOOP = textwrap.dedent("""
    import json, os, sys, time
    import jax
    from semclip_jax import main, preemption
    main.initialize_distributed()
    start = 7
    with preemption.StopRequest(start) as stop:
      step = start
      while step < 100_000 and not stop.reached(step):
        time.sleep(0.01 * (1 + 2 * jax.process_index()))
        step += 1
        if step == start + 20:
          print("running", flush=True)
    print(json.dumps({"mode": stop.mode, "step": step, "signal": stop.signal_name}), flush=True)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_processes_stop_at_the_same_step_when_one_is_signalled(signum):
  port = _free_port()
  processes = [subprocess.Popen([sys.executable, "-c", _LOOP], cwd=REPO, env=_process_env(port, p),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for p in range(2)]
  try:
    for process in processes:
      assert process.stdout.readline().strip() == "running", process.stderr.read()[-3000:]
    processes[1].send_signal(signum)  # the slow one: the fast one must wait for it
    outputs = [process.communicate(timeout=120) for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  results = []
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
    results.append(json.loads(stdout.strip().splitlines()[-1]))
  assert [r["mode"] for r in results] == ["synced", "synced"]
  assert results[0]["step"] == results[1]["step"] > 7 + 20
  # The signalled process names its signal; the other stopped for the preemption notice.
  assert results[1]["signal"] == signal.Signals(signum).name
  assert results[0]["signal"] == "SIGTERM"


# ---- the trainer, two processes ------------------------------------------------------------------
class _Trainer:
  """One process of a two-process shapes run (`main --distributed=yes`), its stderr drained by a
  thread (a full pipe would block it) and watched for the trainer's first line."""

  def __init__(self, workdir, port: int, process: int, total_steps: int):
    command = [sys.executable, "-m", "semclip_jax.main", f"--config={SHAPES}:runlocal",
               f"--workdir={workdir}", "--distributed=yes", "--config.progress_bar=False",
               f"--config.total_steps={total_steps}", "--config.log_every_steps=1",
               # Every step is a checkpoint step, the stop step too: saved once, by the loop
               # (a second save of it would raise orbax's StepAlreadyExistsError).
               "--config.checkpoint.every_steps=1", "--config.export_hf=True",
               "--config.data.eval_split=", "--config.data.test_split="]
    self.process = subprocess.Popen(command, cwd=REPO, env=_process_env(port, process),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    self.lines: list[str] = []
    self.started = threading.Event()  # jax.distributed is initialized: its SIGTERM handler is in
    self._drain = threading.Thread(target=self._read, daemon=True)
    self._drain.start()

  def _read(self) -> None:
    for line in self.process.stderr:
      self.lines.append(line)
      if "on 2 process(es)" in line:  # train_and_evaluate's first line
        self.started.set()

  def finish(self, timeout: float = 300) -> None:
    self.process.wait(timeout=timeout)
    self._drain.join(timeout=10)
    assert self.process.returncode == 0, "".join(self.lines)[-3000:]


def _pair(workdir, total_steps: int) -> list[_Trainer]:
  port = _free_port()
  return [_Trainer(workdir, port, p, total_steps) for p in range(2)]


@contextlib.contextmanager
def _running_pair(workdir, total_steps: int) -> Iterator[list[_Trainer]]:
  """Two trainer processes, killed if the block leaves either running (a failed assertion)."""
  pair = _pair(workdir, total_steps)
  try:
    yield pair
  finally:
    for trainer in pair:
      if trainer.process.poll() is None:
        trainer.process.kill()


def _run_pair(workdir, total_steps: int) -> None:
  with _running_pair(workdir, total_steps) as pair:
    for trainer in pair:
      trainer.finish()


@pytest.mark.slow
def test_preempted_two_process_run_saves_one_step_and_resumes_bitwise(tmp_path):
  full, preempted, total = tmp_path / "full", tmp_path / "preempted", 3
  _run_pair(full, total)

  with _running_pair(preempted, total) as pair:
    for trainer in pair:
      assert trainer.started.wait(timeout=300), "".join(trainer.lines)[-3000:]
    # Each process at its own moment, both before the first step: the notice reaches JAX's sync
    # protocol before any process has called reached_preemption_sync_point, so the agreed stop is
    # the first step after the start, whatever the machine's speed.
    pair[0].process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    pair[1].process.send_signal(signal.SIGTERM)
    for trainer in pair:
      trainer.finish()
  assert not (preempted / "hf").exists()  # stopped early
  for trainer in pair:
    assert "SIGTERM: saving a checkpoint at step 1 and stopping" in "".join(trainer.lines)
  checkpoints = checkpointing.Checkpointer(str(preempted / "checkpoints"))
  try:
    # One save, by both processes at the same step (at different steps it would hang or fail).
    assert checkpoints.all_steps() == [1]
  finally:
    checkpoints.close()

  _run_pair(preempted, total)  # the rerun resumes at step 1 and runs to the end
  a = safetensors.numpy.load_file(str(full / "hf" / "model.safetensors"))
  b = safetensors.numpy.load_file(str(preempted / "hf" / "model.safetensors"))
  assert a.keys() == b.keys()
  for key in a:
    assert np.array_equal(a[key], b[key]), key
  losses = lambda w: {m["step"]: m["loss"] for m in read_metrics(w) if "loss" in m}
  assert losses(preempted) == losses(full)
  assert sorted(losses(full)) == list(range(1, total + 1))
