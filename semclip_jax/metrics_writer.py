"""Training and evaluation metrics: one JSONL file and TensorBoard event files (no TensorFlow)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

from semclip_jax import atomic_io

METRICS_FILE = "metrics.jsonl"
# TensorBoard groups scalars by the part before the first "/": evaluation metrics come keyed
# val/... and test/..., training metrics bare (as in metrics.jsonl) and are shown under train/.
TRAIN_PREFIX = "train/"


class MetricsWriter:
  """Appends `{"step": s, "time": unix seconds, name: value, ...}` lines to
  `workdir/metrics.jsonl` and writes the same scalars to TensorBoard events under
  `workdir/tensorboard`. Disabled on non-main processes.

  `resume_step`: the step a resumed run restarts from. Lines logged after it by the interrupted
  run are dropped (the resumed run logs those steps again, with the same values), so the file
  holds each step once; `redo_evaluations` also drops the evaluation lines of `resume_step`
  (a finished run whose final round is redone).
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None,
               redo_evaluations: bool = False):
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self.path = os.path.join(workdir, METRICS_FILE)
      if resume_step is not None:
        drop_after(self.path, resume_step, evaluations_at_step=redo_evaluations)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a", encoding="utf-8") as f:
      # NaN/Inf are written as strings: JSON has no literal for them.
      f.write(json.dumps({"step": step, "time": round(time.time(), 3),
                          **{k: v if math.isfinite(v) else str(v) for k, v in values.items()}})
              + "\n")
    for name, value in values.items():
      self._tb.add_scalar(name if "/" in name else TRAIN_PREFIX + name, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def drop_after(path: str, step: int, *, evaluations_at_step: bool = False) -> None:
  """Rewrites the JSONL file at `path` (atomically) without the lines of steps after `step`, and
  with `evaluations_at_step`, without the evaluation lines (val/..., test/... keys) of `step`
  itself: those an interrupted final round wrote and the rerun writes again. A missing file is
  left missing; a torn last line (a killed writer) is dropped."""
  if not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
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
  with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def results_table(results: Mapping[str, float], title: str = "") -> str:
  """A Markdown table of evaluation results, one row per metric."""
  lines = [f"### {title}", ""] if title else []
  lines += ["| metric | value |", "| --- | ---: |"]
  lines += [f"| {name} | {value:.4f} |" for name, value in sorted(results.items())]
  return "\n".join(lines)
