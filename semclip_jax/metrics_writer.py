"""Training and evaluation metrics: one JSONL file and TensorBoard event files (no TensorFlow).

In a `gs://` workdir both files are objects rewritten whole (objects cannot be appended to):
at most every `REMOTE_UPLOAD_INTERVAL_S` seconds, at every `sync` (the training loop syncs
before each checkpoint save, so a resumed run finds every line up to its checkpoint) and at
`close`.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import weakref
from typing import Any, Mapping

from semclip_jax import atomic_io, storage

METRICS_FILE = "metrics.jsonl"
# TensorBoard groups scalars by the part before the first "/": evaluation metrics come keyed
# val/... and test/..., training metrics bare (as in metrics.jsonl) and are shown under train/.
TRAIN_PREFIX = "train/"
REMOTE_UPLOAD_INTERVAL_S = 30.0


def _tensorboardx():
  """The tensorboardX package, imported without torch unless torch is loaded already.
  tensorboardX imports torch (when installed) only so that its add_* calls accept torch tensors;
  we log Python floats, and importing torch costs 2-3 s at the start of every run. While the
  import runs, `import torch` raises ImportError, which tensorboardX takes as "no torch"."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX  # pylint: disable=import-outside-toplevel
    return tensorboardX
  sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel
    import tensorboardX.record_writer  # pylint: disable=import-outside-toplevel,unused-import
  finally:
    del sys.modules["torch"]
  return tensorboardX


class MetricsWriter:
  """Appends `{"step": s, "time": unix seconds, name: value, ...}` lines to
  `workdir/metrics.jsonl` and writes the same scalars to TensorBoard events under
  `workdir/tensorboard`. Disabled on non-main processes.

  `resume_step`: the step a run restarts from (0: an attempt that died before its first
  checkpoint). Lines logged after it by the interrupted run are dropped (the resumed run logs
  those steps again, with the same values), so the file holds each step once, and TensorBoard
  hides the earlier event files' steps after it (a purge event); `redo_evaluations` also drops
  the evaluation lines of `resume_step` (a finished run whose final round is redone).
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None,
               redo_evaluations: bool = False):
    self.enabled = enabled
    self._tb = None
    if enabled:
      storage.makedirs(workdir)
      self.path = storage.join(workdir, METRICS_FILE)
      if resume_step is not None:
        drop_after(self.path, resume_step, evaluations_at_step=redo_evaluations)
      self._remote = (storage.RewrittenObject(self.path, min_interval_s=REMOTE_UPLOAD_INTERVAL_S)
                      if storage.is_remote(workdir) else None)
      _register_remote_event_files()
      # TensorBoard's counterpart of drop_after: it hides the earlier files' events of the steps
      # after `resume_step`, which this run logs again.
      self._tb = _tensorboardx().SummaryWriter(
          storage.join(workdir, "tensorboard"),
          purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({"step": step, "time": round(time.time(), 3),
                       **{k: json_number(v) for k, v in values.items()}}) + "\n"
    if self._remote is not None:
      self._remote.write(line)
      self._remote.flush()
    else:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(line)
    for name, value in values.items():
      self._tb.add_scalar(name if "/" in name else TRAIN_PREFIX + name, value, step)
    self._tb.flush()

  def sync(self) -> None:
    """Uploads what a `gs://` workdir's files have not received yet (nothing to do locally)."""
    if self.enabled and self._remote is not None:
      self._remote.flush(force=True)
      self._tb.flush()
      for events in list(_RemoteEventFile.open_files):
        events.flush(force=True)

  def close(self) -> None:
    if self._tb is not None:
      self.sync()
      self._tb.close()


class _RemoteEventFile(storage.RewrittenObject):
  """A TensorBoard event file in a bucket, for tensorboardX's record writer: written by its
  flushing thread and by ours, so under a lock."""

  open_files: "weakref.WeakSet[_RemoteEventFile]" = weakref.WeakSet()

  def __init__(self, path: str):
    super().__init__(path, binary=True, min_interval_s=REMOTE_UPLOAD_INTERVAL_S,
                     keep_existing=False)  # each writer names a new file
    self._lock = threading.Lock()
    _RemoteEventFile.open_files.add(self)

  def write(self, data) -> int:
    with self._lock:
      return super().write(data)

  def flush(self, force: bool = False) -> None:
    with self._lock:
      super().flush(force)


class _RemoteEventFiles:
  """tensorboardX's writer factory interface: `open(path)`, `directory_check(path)`."""

  def open(self, path: str) -> _RemoteEventFile:
    return _RemoteEventFile(path)

  def directory_check(self, path: str) -> None:
    del path  # prefixes need no folder


def _register_remote_event_files() -> None:
  """Routes tensorboardX's gs:// event files through `storage` (tensorboardX's own GCS writer
  would bring a second client, google-cloud-storage, with credentials of its own)."""
  record_writer = _tensorboardx().record_writer

  for kind in storage.REMOTE_SCHEMES:
    record_writer.register_writer_factory(kind, _RemoteEventFiles())


def drop_after(path: str, step: int, *, evaluations_at_step: bool = False) -> None:
  """Rewrites the JSONL file at `path` (atomically) without the lines of steps after `step`, and
  with `evaluations_at_step`, without the evaluation lines (val/..., test/... keys) of `step`
  itself: those an interrupted final round wrote and the rerun writes again. A missing file is
  left missing; a torn last line (a killed writer) is dropped."""
  if not storage.isfile(path):
    return
  lines = [line + "\n" for line in storage.read_text(path).split("\n") if line.strip()]
  kept = []
  for line in lines:
    record = _record(line)
    if record is None or record.get("step", -1) > step:
      continue
    if (evaluations_at_step and record.get("step") == step
        and any("/" in key for key in record)):
      continue
    kept.append(line)
  if len(kept) != len(lines):
    atomic_io.write_text(path, "".join(kept))


def _record(line: str) -> dict | None:
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  return record if isinstance(record, dict) else None


def read_metrics(workdir: str) -> list[dict[str, float]]:
  text = storage.read_text(storage.join(workdir, METRICS_FILE))
  return [json.loads(line) for line in text.split("\n") if line.strip()]


def json_number(value: float) -> float | str:
  """`value` for a JSON file: NaN/Inf as the strings "nan", "inf", "-inf" (JSON has no literal
  for them, and strict readers refuse Python's NaN token); `from_json_number` reads it back."""
  value = float(value)
  return value if math.isfinite(value) else str(value)


def from_json_number(value: Any) -> Any:
  """What `json_number` wrote, as a float again; anything else as it is."""
  if isinstance(value, str) and value in ("nan", "inf", "-inf"):
    return float(value)
  return value


def results_table(results: Mapping[str, float], title: str = "") -> str:
  """A Markdown table of evaluation results, one row per metric."""
  lines = [f"### {title}", ""] if title else []
  lines += ["| metric | value |", "| --- | ---: |"]
  lines += [f"| {name} | {value:.4f} |" for name, value in sorted(results.items())]
  return "\n".join(lines)
