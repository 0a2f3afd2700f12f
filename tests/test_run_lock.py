"""One trainer per workdir: a live holder refuses a second trainer, a dead one's lock is taken
over (its pid gone on this host; its heartbeat old on another), locally and in a bucket."""

import json
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from semclip_jax import config as config_lib
from semclip_jax import run_lock, storage, train

REPO = pathlib.Path(__file__).resolve().parents[1]

_HOLD = textwrap.dedent("""
    import sys, time
    from semclip_jax.run_lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(300)
""")


def _holder(workdir: str) -> subprocess.Popen:
  process = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "held", process.stderr.read()[-2000:]
  return process


def test_a_live_trainer_refuses_a_second_and_its_lock_is_taken_over_once_it_is_killed(
    tmp_path, caplog):
  workdir = str(tmp_path / "run")
  process = _holder(workdir)
  try:
    with pytest.raises(run_lock.WorkdirLockedError,
                       match=rf"run is in use by another trainer \(pid {process.pid} on "):
      run_lock.RunLock(workdir).acquire()
    # The trainer refuses before building anything (nothing compiles, config.json unwritten).
    config = config_lib.load_config("shapes:runlocal", {"progress_bar": False})
    start = time.perf_counter()
    with pytest.raises(run_lock.WorkdirLockedError, match=f"delete {workdir}/.lock"):
      train.train_and_evaluate(config, workdir)
    assert time.perf_counter() - start < 5
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  with caplog.at_level("WARNING", logger="semclip_jax.run_lock"):
    lock = run_lock.RunLock(workdir).acquire()
  assert f"taking over a stale lock (pid {process.pid}" in caplog.text
  assert f"pid {process.pid} is not running" in caplog.text
  held = json.loads((tmp_path / "run" / ".lock").read_text())
  assert held["pid"] != process.pid and "heartbeat" in held
  lock.release()
  assert not (tmp_path / "run" / ".lock").exists()


def _write_holder(path: str, **fields) -> None:
  record = {"host": "another-host", "pid": 12345, "started": time.time() - 7200,
            "command": "python -m semclip_jax.main --workdir=...", **fields}
  with storage.open(path, "w") as f:
    f.write(json.dumps(record))


def test_in_a_bucket_another_hosts_lock_holds_while_its_heartbeat_is_fresh(gcs_bucket, caplog):
  workdir = f"{gcs_bucket}/runs/shared"
  path = storage.join(workdir, run_lock.LOCK_FILE)
  _write_holder(path, heartbeat=time.time() - 30)
  with pytest.raises(run_lock.WorkdirLockedError, match="pid 12345 on another-host"):
    run_lock.RunLock(workdir).acquire()
  _write_holder(path, heartbeat=time.time() - run_lock.STALE_AFTER_S - 60)
  with caplog.at_level("WARNING", logger="semclip_jax.run_lock"):
    with run_lock.RunLock(workdir):
      assert json.loads(storage.read_text(path))["host"] != "another-host"
  assert "its last heartbeat is" in caplog.text
  assert not storage.exists(path)
  # An unreadable lock (its holder died writing it) is stale too.
  _write_holder(path)
  with storage.open(path, "w") as f:
    f.write("{\"host\": ")
  with run_lock.RunLock(workdir):
    pass


def test_the_heartbeat_never_rewrites_a_lock_that_is_no_longer_its_own(tmp_path, monkeypatch,
                                                                        caplog):
  """The heartbeat rewrites the lock only while it is still this run's: a lock taken over by
  another trainer (after a long stall) keeps its new holder, and a workdir deleted under a run is
  not created again by the next heartbeat."""
  import shutil  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.02)
  lock = run_lock.RunLock(str(tmp_path / "taken")).acquire()
  first = json.loads((tmp_path / "taken" / ".lock").read_text())["heartbeat"]
  deadline = time.monotonic() + 10
  while json.loads((tmp_path / "taken" / ".lock").read_text())["heartbeat"] == first:
    assert time.monotonic() < deadline, "no heartbeat"
    time.sleep(0.01)
  other = {"host": "elsewhere", "pid": 1, "started": 1.0, "heartbeat": time.time()}
  with caplog.at_level("WARNING", logger="semclip_jax.run_lock"):
    (tmp_path / "taken" / ".lock").write_text(json.dumps(other))
    time.sleep(0.3)
    lock.release()
  assert json.loads((tmp_path / "taken" / ".lock").read_text()) == other
  assert any("no longer this run's (held by pid 1 on elsewhere)" in r.getMessage()
             for r in caplog.records)

  lock = run_lock.RunLock(str(tmp_path / "deleted")).acquire()
  shutil.rmtree(tmp_path / "deleted")
  time.sleep(0.3)
  lock.release()
  assert not (tmp_path / "deleted").exists()
