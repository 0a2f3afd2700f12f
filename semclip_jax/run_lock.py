"""One trainer per workdir: `workdir/.lock`, held by the run's main process while it trains.

Two trainers on one workdir would interleave their checkpoints and metrics silently. The lock is
a small JSON file naming its holder (host, pid, start time, command line). A second trainer finds
it and stops with one line naming that holder. A lock left by a process that died without
releasing it (SIGKILL, a crash, a preempted VM) is stale and taken over with a warning:

- held on this host: stale when its pid is not running, or the machine restarted since it was
  taken (a relaunched VM may give the pid to another process);
- held on another host (a `gs://` workdir shared by machines, or NFS): the holder rewrites the
  lock's `heartbeat` every `HEARTBEAT_S` from a daemon thread, and a lock whose heartbeat is
  older than `STALE_AFTER_S` is stale. The heartbeat rewrites the lock only while it is still
  this run's: a lock another trainer took over, or one deleted with its workdir, is left alone.

Creation is exclusive on a local disk (O_EXCL). In a bucket it is a read then a write: two
trainers started within the same second on two machines could both proceed; the lock is for the
mistakes people make, not a consensus protocol.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from semclip_jax import atomic_io, storage

logger = logging.getLogger(__name__)
LOCK_FILE = ".lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 300.0  # five missed heartbeats


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir: the message names it and the remedy."""


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # running, as another user
    return True
  return True


def _boot_time() -> float:
  """This machine's boot time (unix seconds; 0 where /proc/stat is missing)."""
  try:
    with open("/proc/stat", encoding="ascii") as f:
      return float(next(line.split()[1] for line in f if line.startswith("btime ")))
  except (OSError, StopIteration, ValueError, IndexError):
    return 0.0


class RunLock:
  """`with RunLock(workdir):` holds `workdir/.lock` for the block (see the module docstring)."""

  def __init__(self, workdir: str):
    self.path = storage.join(workdir, LOCK_FILE)
    self._holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                    "command": " ".join(sys.argv)[:500]}
    self._stop = threading.Event()
    self._heartbeat: threading.Thread | None = None

  def _read(self) -> dict[str, Any] | None:
    try:
      holder = json.loads(storage.read_text(self.path))
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # half-written or unreadable: a holder that died writing it
      return {}
    return holder if isinstance(holder, dict) else {}

  def _stale(self, holder: dict[str, Any]) -> str:
    """Why `holder`'s lock is stale, or "" when its trainer may be alive."""
    if not holder:
      return "it is unreadable"
    if holder.get("host") == self._holder["host"]:
      pid = holder.get("pid")
      if not isinstance(pid, int) or pid == os.getpid() or not _pid_running(pid):
        return f"pid {pid} is not running"
      if float(holder.get("started", 0)) < _boot_time():
        return "this machine restarted since"
      return ""
    age = time.time() - float(holder.get("heartbeat", holder.get("started", 0)))
    return f"its last heartbeat is {age:.0f} s old" if age > STALE_AFTER_S else ""

  def _write(self, exclusive: bool) -> bool:
    """Writes our holder record; with `exclusive`, only if no lock exists (False if one does)."""
    record = json.dumps({**self._holder, "heartbeat": time.time()})
    if exclusive and not storage.is_remote(self.path):
      storage.makedirs(storage.dirname(self.path))
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(record)
      return True
    if exclusive and storage.exists(self.path):
      return False
    atomic_io.write_text(self.path, record)
    return True

  def acquire(self) -> "RunLock":
    while not self._write(exclusive=True):
      holder = self._read()
      if holder is None:  # released between our two looks
        continue
      why = self._stale(holder)
      if not why:
        raise WorkdirLockedError(
            f"{storage.dirname(self.path)} is in use by another trainer (pid {holder.get('pid')} "
            f"on {holder.get('host')}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}: "
            f"{holder.get('command', '?')}). Stop it first; if it is gone, delete {self.path}.")
      logger.warning("%s: taking over a stale lock (pid %s on %s: %s)", self.path,
                     holder.get("pid"), holder.get("host"), why)
      storage.remove(self.path)
    self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat")
    self._heartbeat.start()
    return self

  def _ours(self, holder: dict[str, Any] | None) -> bool:
    return bool(holder) and all(holder.get(k) == self._holder[k] for k in ("host", "pid", "started"))

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        holder = self._read()
        if not self._ours(holder):
          # Deleted (with its workdir, perhaps) or taken over after a long stall: rewriting it
          # would recreate a deleted workdir, or steal the lock of the trainer that took it.
          logger.warning("%s: the lock is no longer this run's (%s); heartbeat stopped", self.path,
                         "deleted" if holder is None else f"held by pid {holder.get('pid')} on "
                         f"{holder.get('host')}")
          return
        self._write(exclusive=False)
      except OSError as e:  # a failed heartbeat costs nothing until STALE_AFTER_S
        logger.warning("%s: heartbeat failed (%s)", self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
    if self._ours(self._read()):
      storage.remove(self.path)  # ours still (not taken over after a long stall)

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
